"""The one driver every mean-field dynamics family runs through.

A family declares a ``ParticleSDE``: dΘ = b(t, Θ) dt + g(t) dB on the whole particle
state (N, D) (or (N, D + k) with noiseless extra columns such as a control cost), with
additive noise of scale g(t) (or none: an ODE), and optionally a discrete
``jump(key, t, Θ) -> Θ`` every k steps (a resampling or birth–death step; with no drift
the chain is the jumps alone, as SGD). ``drive`` owns everything else: saving observables
on the step grid, the progress bar, replicates from a batch of keys, checkpoint/resume and
the ``Trajectory``. ``solve`` turns the SDE into diffrax terms (``MultiTerm(ODETerm,
ControlTerm)`` with a lineax diagonal operator), picks the Brownian path, saves only
observables (``SaveAt(fn=...)``) plus the final state and sets ``max_steps`` from t1/dt0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
import dataclasses
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import tqdm
from jax.sharding import NamedSharding
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checkpoint
from .._keys import as_keys
from .._memory import check_run_fits
from ._sharding import Constrained, onto_solving_mesh, run_sharding, solving_context, solving_sharding, with_leading
from ._starts import start_dispersion

__all__ = ["ParticleSDE", "Trajectory", "DivergenceError", "solve", "drive"]


class DivergenceError(FloatingPointError):
    """A run's state became non-finite: ``time``, ``step`` where it first did, ``replicate``
    (which run, for a batch of keys; None for one run), ``quantity`` (what was non-finite
    first: ``"drift"``, ``"noise"``, or ``"step"`` when both were finite at the last finite
    state and the update itself overflowed, an unstable step; ``"jump"`` for a chain of
    jumps alone such as SGD), ``columns`` (the state's column groups that went non-finite,
    e.g. ``("theta",)``) and the partial ``trajectory``: the saves before ``time``, its
    ``particles`` the last finite state (of the diverged replicate)."""

    def __init__(self, message: str, time: float, step: int, trajectory: "Trajectory", replicate: int | None = None,
                 quantity: str = "step", columns: tuple[str, ...] = ()):
        super().__init__(message)
        self.time, self.step, self.trajectory, self.replicate = time, step, trajectory, replicate
        self.quantity, self.columns = quantity, columns


class _NonFinite(eqx.Module):
    # diffrax event: stop at the first step whose state is not finite (or, replaying a
    # diverged run to its last finite state, at the first step end >= stop_at)
    stop_at: float = float("inf")

    def __call__(self, t, y, args, **kwargs):
        return ~jnp.all(jnp.isfinite(y)) | (t >= self.stop_at)

# Runs of at least this many steps show a progress bar unless progress=False.
_PROGRESS_MIN_STEPS = 5000
# Adaptive (ODE) solves may take this many times the steps t1/dt0 suggests.
_ADAPTIVE_STEP_FACTOR = 64


class Trajectory(eqx.Module):
    """A solved particle dynamics.

    ts: save times, shape (T,). particles: the final state, shape (N, D) (or (R, N, D) for
    R replicate runs). observables: name -> values at ``ts``, shape (T,) (or (R, T)).
    num_steps: solver steps taken. info: static description of the run (solver, dt0, ...).
    diverged_at: the time the state first became non-finite (the run stopped there), inf
    if it never did; shape () (or (R,)). Outside jit a diverged run raises
    ``DivergenceError`` instead; under an outer jit or vmap this field is the report.
    """

    ts: Float[Array, " t"]
    particles: Float[Array, "n d"]
    observables: dict[str, Float[Array, " t"]]
    num_steps: Array
    info: tuple[tuple[str, object], ...] = eqx.field(static=True, default=())
    diverged_at: Array | float = float("inf")

    def _replace(self, **changes) -> "Trajectory":
        return dataclasses.replace(self, **changes)


class ParticleSDE(eqx.Module):
    """dΘ = drift(t, Θ) dt + noise_scale(t) dB over a particle state Θ (N, D), and every
    ``jump_every`` steps a discrete jump Θ ← jump(key, t, Θ).

    ``drift(t, Θ, args) -> (N, D)`` (``args`` is the run's start Θ_0), or ``None``: no
    diffrax term, the chain is the jumps alone (then ``jump_every`` is 1). ``noise_scale(t)
    -> scalar`` (isotropic) or a (D,) row of per-coordinate scales (diagonal), or ``None``
    for an ODE. With a jump, interval m of ``jump_every`` steps, from t_a = t0 + a·dt0
    (a = m·jump_every), first applies ``jump(fold_in(key_jump, a), t_a, Θ)`` and then the
    SDE over [t_a, t_a + jump_every·dt0]; key_jump is the run's key when there is no drift
    (so step k of SGD draws from ``fold_in(key, k)``), else the second half of its split.
    All three should be equinox Modules (or other stable callables) so that repeated
    solves reuse the compiled program.
    """

    drift: Callable | None = None
    noise_scale: Callable | None = None
    jump: Callable | None = None
    jump_every: int = eqx.field(static=True, default=1)

    def __check_init__(self):
        for name in ("drift", "noise_scale", "jump"):
            if getattr(self, name) is not None and not callable(getattr(self, name)):
                raise TypeError(f"{name} must be a function (or None), got {type(getattr(self, name)).__name__}")
        if self.drift is None and self.jump is None:
            raise ValueError("a ParticleSDE needs a drift, a jump, or both")
        if not (isinstance(self.jump_every, int) and self.jump_every >= 1):
            raise ValueError(f"jump_every must be a positive integer, got {self.jump_every!r}")


class _DiagonalDiffusion(eqx.Module):
    # noise_scale(t) is a scalar, or a (D,) row of per-coordinate scales (e.g. Σ^{1/2}).
    noise_scale: Callable

    def __call__(self, t, y, args):
        scale = jnp.asarray(self.noise_scale(t), y.dtype)
        return lx.DiagonalLinearOperator(jnp.broadcast_to(scale, y.shape))


def _levy_area(solver) -> type:
    # The cheapest Brownian information the solver accepts (ShARK etc. need Lévy area).
    minimal = getattr(solver, "minimal_levy_area", diffrax.BrownianIncrement)
    for cls in (diffrax.BrownianIncrement, diffrax.SpaceTimeLevyArea, diffrax.SpaceTimeTimeLevyArea):
        if issubclass(cls, minimal):
            return cls
    raise ValueError(f"solver {type(solver).__name__} needs Levy area {minimal}, not supported")


class _GatedObservables(eqx.Module):
    """observables(t, y) where t is within tol of a requested save time, zeros elsewhere."""

    observables: Callable
    ts: Array
    tol: float = eqx.field(static=True)

    def __call__(self, t, y, args):
        wanted = jnp.any(jnp.abs(self.ts - t) < self.tol)
        shapes = eqx.filter_eval_shape(self.observables, t, y, args)
        return jax.lax.cond(
            wanted,
            lambda: self.observables(t, y, args),
            lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
        )


def _step_size(t0: float, t1: float, dt0: float) -> tuple[float, int]:
    """(h, n): diffrax's ConstantStepSize covers [t0, t1] in n = ⌈(t1 − t0)/dt0⌉ equal steps
    of h = (t1 − t0)/n (= dt0 when dt0 divides the span), step k ending at t0 + k·h."""
    n = num_fixed_steps(t0, t1, dt0)
    return (t1 - t0) / n, n


def _grid_indices(ts: Array, t0: float, t1: float, dt0: float) -> tuple[np.ndarray, int] | None:
    """Step indices k_i = (ts_i − t0)/h and their gcd g, if every ts_i is a step's time."""
    if isinstance(ts, jax.core.Tracer):
        return None
    h, n = _step_size(t0, t1, dt0)
    k = (np.asarray(ts, np.float64) - t0) / h
    ks = np.rint(k).astype(np.int64)
    if np.any(np.abs(k - ks) > 1e-6) or np.any(ks < 0) or np.any(ks > n) or np.any(np.diff(ks) <= 0):
        return None
    nonzero = ks[ks > 0]
    every = int(np.gcd.reduce(nonzero)) if nonzero.size else 1
    return ks, every


def _snap_to_steps(ts: np.ndarray, t0: float, t1: float, dt0: float) -> np.ndarray:
    """Save times moved to the nearest step's time t0 + k·h (``_step_size``).

    diffrax evaluates an off-grid save time on the solver's interpolant between two steps.
    For an SDE that is not a state of the chain: a linear interpolant α of the way through
    a step carries a fraction α² + (1 − α)² < 1 of its noise variance, so observables that
    see the fast noise (the Stein temperature, the risk) come out biased low, by an amount
    that depends on how ts falls on the grid.
    """
    h, n = _step_size(t0, t1, dt0)
    ks = np.clip(np.rint((ts - t0) / h), 0, n).astype(np.int64)
    if np.any(np.diff(ks) <= 0):
        raise ValueError(f"ts has two save times within one step of dt0 = {dt0:g} (nearest steps {ks.tolist()}); "
                         "observables of a noisy run are taken at the chain's own states, so space ts by at least "
                         "dt0 or take a smaller dt0")
    return np.where(ks == n, t1, t0 + ks * h)


def num_fixed_steps(t0: float, t1: float, dt0: float) -> int:
    """Number of fixed steps diffrax takes over [t0, t1] with dt0: ⌈(t1 − t0)/dt0⌉."""
    return max(1, math.ceil((t1 - t0) / dt0 - 1e-9))


def _check_span(t0: float, t1: float, dt0: float) -> None:
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"need finite t0 < t1, got t0={t0}, t1={t1}")
    if not (math.isfinite(dt0) and dt0 > 0):
        raise ValueError(f"dt0 must be a positive number, got {dt0}")


def save_times(ts, t0: float, t1: float, dt0: float, stepsize_controller=None, noisy: bool = True):
    """The save times a solve uses: ``ts`` checked (default: up to 101 points in [t0, t1]),
    and for a noisy run on fixed steps moved to the nearest step (``_snap_to_steps``).
    Times known at trace time (lists, numpy, concrete arrays) come back as numpy, even
    under an outer jit: they decide how saving is compiled."""
    _check_span(t0, t1, dt0)
    if stepsize_controller is None:
        stepsize_controller = diffrax.ConstantStepSize()
    fixed = isinstance(stepsize_controller, diffrax.ConstantStepSize)
    if ts is None:
        step_to = isinstance(stepsize_controller, diffrax.StepTo)
        n_steps = len(stepsize_controller.ts) - 1 if step_to else num_fixed_steps(t0, t1, dt0)
        ts = np.linspace(t0, t1, min(101, n_steps + 1))
    if not isinstance(ts, jax.core.Tracer):
        ts = np.asarray(ts, np.float64)
        if ts.ndim == 1 and ts.size:
            # times from a float32 run (e.g. another trajectory's ts) may overshoot an end by rounding
            slack = 4 * np.finfo(np.float32).eps * max(abs(t0), abs(t1), 1.0)
            ts = np.where((ts > t1) & (ts <= t1 + slack), t1, np.where((ts < t0) & (ts >= t0 - slack), t0, ts))
        if ts.ndim == 1 and ts.size and (np.any(np.diff(ts) <= 0) or ts[0] < t0 or ts[-1] > t1):
            raise ValueError(f"ts must be increasing and within [t0, t1] = [{t0}, {t1}], got {ts}")
    if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < 1:
        raise ValueError(f"ts must be a non-empty 1-D array of times, got shape {jnp.shape(ts)}")
    if fixed and noisy and not isinstance(ts, jax.core.Tracer):
        ts = _snap_to_steps(ts, t0, t1, dt0)
    return ts


def solve(
    sde: ParticleSDE,
    key: PRNGKeyArray,
    y0: Float[Array, "n d"],
    *,
    t0: float,
    t1: float,
    dt0: float,
    solver: diffrax.AbstractSolver,
    observables: Callable,
    ts: Array | None = None,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    progress: bool | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int | None = None,
    args=None,
    stop_at: float = float("inf"),
) -> Trajectory:
    """Solve a particle SDE with diffrax, saving ``observables(t, Θ, args) -> dict`` at ``ts``.

    ``args`` goes to the drift and the observables (``drive`` passes the run's start Θ_0).
    The solve stops early at the first non-finite state (``Trajectory.diverged_at``), or
    at the first step end >= ``stop_at`` (the same steps and draws as the full solve: how a
    diverged run is replayed to its last finite state). An SDE with a ``jump`` runs as blocks of jump intervals (``_solve_jumps``).

    Fixed steps (no controller, ``ConstantStepSize``, or a ``StepTo`` grid) draw Brownian increments with
    ``UnsafeBrownianPath`` (one normal draw per step, no tree) and solve with
    ``ForwardMode``, a plain while loop without checkpoints: this is what keeps a diffrax
    step as cheap as a hand-written ``lax.scan`` Euler–Maruyama step (bench/langevin.py).
    Adaptive controllers get a ``VirtualBrownianTree`` (tolerance dt0/100) when there is
    noise. ``ts`` defaults to up to 101 equally spaced times in [t0, t1]. With noise and
    fixed steps, each save time moves to the nearest step (``_snap_to_steps``: observables
    are the chain's states, never an interpolant's) and the returned ``ts`` say where.
    """
    _check_span(t0, t1, dt0)
    if sde.jump is not None or sde.drift is None:
        return _run_jumps(lambda k: (sde, k), key, y0, args, ts, False, t0=t0, t1=t1, dt0=dt0, solver=solver,
                          observables=observables, progress=progress, stepsize_controller=stepsize_controller)
    if stepsize_controller is None:
        stepsize_controller = diffrax.ConstantStepSize()
    fixed = isinstance(stepsize_controller, diffrax.ConstantStepSize)
    # StepTo: a given, non-uniform grid (e.g. refined where the drift is stiff); its steps
    # are never rejected, so the cheap Brownian path and forward-mode loop apply too.
    step_to = isinstance(stepsize_controller, diffrax.StepTo)
    n_steps = len(stepsize_controller.ts) - 1 if step_to else num_fixed_steps(t0, t1, dt0)
    ts = save_times(ts, t0, t1, dt0, stepsize_controller, sde.noise_scale is not None)

    terms = _terms(sde.drift, sde.noise_scale, key, y0, solver, None if fixed or step_to else (t0, t1, dt0))

    if progress is None:
        progress = n_steps >= _PROGRESS_MIN_STEPS
    meter = (
        diffrax.TqdmProgressMeter(refresh_steps=max(1, n_steps // 100))
        if progress
        else diffrax.NoProgressMeter()
    )
    if max_steps is None:
        max_steps = n_steps + 1 if fixed or step_to else _ADAPTIVE_STEP_FACTOR * n_steps
    grid = _grid_indices(ts, t0, t1, dt0) if fixed else None
    if grid is None:
        saveat = diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=jnp.asarray(ts, y0.dtype), fn=observables),
                                      diffrax.SubSaveAt(t1=True)])
    else:
        # Saving at ts makes diffrax run a nested while loop in every step, which costs
        # XLA:CPU ~25% of a big step (bench/README.md). On a fixed grid, saving every g-th
        # step (a lax.cond inside the step) gives the same values at no measurable cost.
        ks, every = grid
        gated = _GatedObservables(observables, jnp.asarray(ts, y0.dtype), 0.5 * dt0)
        saveat = diffrax.SaveAt(subs=[diffrax.SubSaveAt(t0=bool(ks[0] == 0), steps=every, fn=gated),
                                      diffrax.SubSaveAt(t1=True)])
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        t0,
        t1,
        None if step_to else dt0,
        y0,
        args=args,
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        adjoint=diffrax.ForwardMode() if adjoint is None else adjoint,
        max_steps=max_steps,
        progress_meter=meter,
        event=diffrax.Event(_NonFinite(stop_at)),
    )
    obs, y1 = sol.ys
    if grid is not None:
        ks, every = grid
        rows = [0 if k == 0 else k // every - 1 + int(ks[0] == 0) for k in ks]
        obs = jax.tree.map(lambda a: a[jnp.asarray(rows)], obs)
    info = (("solver", type(solver).__name__), ("dt0", float(dt0)), ("t0", float(t0)), ("t1", float(t1)),
            ("controller", type(stepsize_controller).__name__))
    diverged_at = jnp.where(sol.event_mask & ~jnp.all(jnp.isfinite(y1[-1])), sol.ts[1][-1], jnp.inf)
    return Trajectory(ts=jnp.asarray(ts, y0.dtype), particles=y1[-1], observables=obs, num_steps=sol.stats["num_steps"],
                      info=info, diverged_at=diverged_at)


def _terms(drift, noise_scale, key, y0, solver, tree: tuple[float, float, float] | None):
    """diffrax terms of dΘ = drift dt + noise_scale dB; ``tree`` = (t0, t1, dt0) asks for a
    VirtualBrownianTree (adaptive steps), else one normal draw per step."""
    term = diffrax.ODETerm(drift)
    if noise_scale is None:
        return term
    shape = jax.ShapeDtypeStruct(y0.shape, y0.dtype)
    levy = _levy_area(solver)
    if tree is None:
        bm = diffrax.UnsafeBrownianPath(shape=shape, key=key, levy_area=levy)
    else:
        t0, t1, dt0 = tree
        bm = diffrax.VirtualBrownianTree(t0, t1, tol=dt0 / 100, shape=shape, key=key, levy_area=levy)
    return diffrax.MultiTerm(term, diffrax.ControlTerm(_DiagonalDiffusion(noise_scale), bm))


def _whole_steps(t0: float, t1: float, dt0: float, what: str) -> int:
    n = num_fixed_steps(t0, t1, dt0)
    if abs((t1 - t0) / dt0 - n) > 1e-6:
        raise ValueError(f"{what} needs (t1 - t0) / dt0 to be a whole number of steps, got {(t1 - t0) / dt0:g}")
    return n


def _jump_save_steps(ts, t0: float, dt0: float, n: int, every: int) -> np.ndarray:
    """Save step indices of a run with jumps: each time moved to the nearest boundary of a
    jump interval (a multiple of ``every`` steps), where the state is the chain's own."""
    if n % every:
        raise ValueError(f"the run's {n} steps are not a whole number of jump intervals of {every} steps")
    m = n // every
    if ts is None:
        return np.unique(np.round(np.linspace(0, m, min(101, m + 1))).astype(np.int64)) * every
    if isinstance(ts, jax.core.Tracer):
        raise ValueError("a run with jumps needs save times known at trace time (not traced)")
    ts = np.asarray(ts, np.float64)
    if ts.ndim != 1 or not ts.size:
        raise ValueError(f"ts must be a non-empty 1-D array of times, got shape {ts.shape}")
    ks = np.clip(np.rint((ts - t0) / (every * dt0)), 0, m).astype(np.int64) * every
    if np.any(np.diff(ks) <= 0):
        raise ValueError(f"ts must be increasing, at most one save per jump interval of {every} steps of "
                         f"dt0 = {dt0:g} (nearest interval ends: {ks.tolist()})")
    return ks


class _Shifted(eqx.Module):
    # f(t) of an interval solved on [0, J dt0]: the same static step grid for every interval.
    fn: Callable
    offset: Array

    def __call__(self, t, *rest):
        return self.fn(t + self.offset, *rest)


def _jump_steps(sde: ParticleSDE, solver, key, y, args, k0, num: int, t0: float, dt0: float):
    """Steps k0 .. k0 + num − 1 of a chain with jumps (``ParticleSDE``), from state y."""
    if sde.drift is None:
        def step(i, y):
            k = k0 + i
            return sde.jump(jax.random.fold_in(key, k), t0 + k * dt0, y)

        return jax.lax.fori_loop(0, num, step, y)
    every = sde.jump_every
    k_noise, k_jump = jax.random.split(key)

    def interval(m, y):
        a = k0 + m * every
        t_a = t0 + a * dt0
        if sde.jump is not None:
            y = sde.jump(jax.random.fold_in(k_jump, a), t_a, y)
        noise = None if sde.noise_scale is None else _Shifted(sde.noise_scale, t_a)
        terms = _terms(_Shifted(sde.drift, t_a), noise, jax.random.fold_in(k_noise, a), y, solver, None)
        sol = diffrax.diffeqsolve(terms, solver, 0.0, every * dt0, dt0, y, args=args, saveat=diffrax.SaveAt(t1=True),
                                  adjoint=diffrax.ForwardMode(), max_steps=every + 1)
        return sol.ys[-1]

    return jax.lax.fori_loop(0, num // every, interval, y)


@eqx.filter_jit
def _jump_block(sde, solver, observables, key, y, args, k0, num, t0, dt0, batched):
    def block(key, y, args):
        y = _jump_steps(sde, solver, key, y, args, k0, num, t0, dt0)
        return y, observables(t0 + (k0 + num) * dt0, y, args)

    return jax.vmap(block)(key, y, args) if batched else block(key, y, args)


@eqx.filter_jit
def _observe(observables, t, y, args, batched):
    return jax.vmap(lambda y, a: observables(t, y, a))(y, args) if batched else observables(t, y, args)


def _solve_jumps(sde, key, y, args, *, t0, dt0, first, last, solver, observables, save_steps, progress,
                 batched=False):
    """Steps first .. last − 1 of a chain with jumps in jitted blocks between the save steps
    in (first, last] (and at ``first`` if it is one): (final state, observables (T,) or
    (R, T)). Its draws depend on the global step index only, so any split into blocks or
    checkpoint segments gives the same chain. With ``batched``, y and args are (R, ...)."""
    wanted = [int(k) for k in save_steps if first <= k <= last]
    saves = []
    if wanted and wanted[0] == first:
        saves.append(_observe(observables, t0 + first * dt0, y, args, batched))
    bounds = sorted(set(k for k in wanted if k > first) | {last})
    k, done = first, []
    diverged_at = jnp.full(y.shape[:1] if batched else (), jnp.inf)
    traced = isinstance(y, jax.core.Tracer)
    for b in tqdm.tqdm(bounds, desc="steps", unit="save", disable=not progress):
        y_start = y
        y, obs = _jump_block(sde, solver, observables, key, y, args, jnp.asarray(k), b - k, t0, dt0, batched)
        bad = ~jnp.all(jnp.isfinite(y), axis=tuple(range(1 if batched else 0, y.ndim)))
        if not traced and bool(jnp.any(bad)):
            # the first bad step, found again from the block's start (its draws depend on the
            # step index only); the blocks between saves keep the clean runs free of checks
            step, y, bad = _first_nonfinite_step(sde, solver, observables, key, y_start, args, k, b, t0, dt0, batched)
            diverged_at = jnp.where(bad, t0 + (step + 1) * dt0, diverged_at)
            k = step + 1 - sde.jump_every
            break
        diverged_at = jnp.where(bad & jnp.isinf(diverged_at), t0 + b * dt0, diverged_at)
        if b in wanted:
            saves.append(obs)
            done.append(b)
        k = b
    obs = {name: jnp.stack([s[name] for s in saves], axis=-1) for name in saves[0]} if saves else {}
    saved = ([first] if wanted and wanted[0] == first else []) + done
    # on divergence: the saves before it, and the last finite state (before the bad interval)
    return Trajectory(ts=jnp.asarray(t0 + np.asarray(saved, np.float64) * dt0, y.dtype), particles=y, observables=obs,
                      num_steps=jnp.asarray(k - first),
                      info=(("solver", "jumps" if sde.drift is None else type(solver).__name__), ("dt0", float(dt0)),
                            ("t0", float(t0)), ("t1", float(t0 + last * dt0)), ("jump_every", sde.jump_every)),
                      diverged_at=diverged_at)


def _first_nonfinite_step(sde, solver, observables, key, y, args, k0: int, k1: int, t0, dt0, batched):
    """(the step index in [k0, k1) after which the chain's state is first non-finite, the
    state before that step's jump interval, which replicates were non-finite after it)."""
    every = sde.jump_every
    axes = tuple(range(1 if batched else 0, y.ndim))
    for k in range(k0, k1, every):
        y_next, _ = _jump_block(sde, solver, observables, key, y, args, jnp.asarray(k), every, t0, dt0, batched)
        bad = ~jnp.all(jnp.isfinite(y_next), axis=axes)
        if bool(jnp.any(bad)):
            return k + every - 1, y, bad
        y = y_next
    return k1 - 1, y, bad


def _replicates(sde_of, key, y0, args, ts, batched: bool, **kwargs) -> Trajectory:
    """``solve`` of the SDE ``sde_of(key) -> (ParticleSDE, noise key)``, or with ``batched`` R
    replicate solves vmapped over a batch of keys (R,) and a shared start (N, D) or
    per-replicate starts (R, N, D): particles (R, N, D), observables (R, T), one ``ts``."""
    def one(key, y, a, ts):
        sde, k, *obs = sde_of(key)
        return solve(sde, k, y, ts=ts, args=a, **(dict(kwargs, observables=obs[0]) if obs else kwargs))

    if not batched:
        return one(key, y0, args, ts)
    ts_known = None if ts is None else np.asarray(ts, np.float64)
    axis = 0 if y0.ndim == 3 else None

    traj = jax.vmap(lambda k, y, a: one(k, y, a, ts_known), in_axes=(0, axis, 0 if args.ndim == 3 else None))(
        key, y0, args)
    return traj._replace(ts=traj.ts[0], num_steps=traj.num_steps[0])


def drive(sde, key, y0: Float[Array, "n d"], *, t0: float, t1: float, dt0: float, solver=None,
          observables: Callable, ts=None, stepsize_controller=None, progress: bool | None = None,
          adjoint=None, max_steps: int | None = None, checkpoint_every: int | None = None,
          checkpoint_path=None, fingerprint: dict | None = None, info: tuple = (),
          stability_hint: Callable[[Array | None], str] | None = None,
          state_columns: tuple[tuple[str, int], ...] | None = None,
          memory: tuple[str, Callable[[int, int], int]] | None = None,
          sharding: NamedSharding | None = None) -> Trajectory:
    """Run one dynamics family: the driver that owns keys, replicates, checkpoints, saving
    and the ``Trajectory``.

    Args:
        sde: a ``ParticleSDE``, or ``sde_of(key) -> (ParticleSDE, noise key[, observables])``
            when the family's terms (and observables) depend on the replicate's key (the
            bridge's inner draws); diffrax families only.
        key: one key or a batch of R keys (typed or raw, ``as_keys``): R replicate runs,
            vmapped, from ``y0`` of shape (N, D) (shared) or (R, N, D); particles and
            observables then carry a leading replicate axis, and ``info`` records how the
            replicates started (``start_dispersion``). ``None`` for an ODE.
        t0, t1, dt0, solver, ts, stepsize_controller, adjoint, max_steps: as ``solve``.
        observables: ``observables(t, Θ, Θ_0) -> dict`` of scalars.
        checkpoint_every, checkpoint_path: run in segments of this many fixed steps and write
            the state after each to ``checkpoint_path`` (an .npz, replaced atomically); a
            rerun resumes from it; a file that is unreadable or was written by a different
            run (``fingerprint``, sizes, times, key) raises ``ValueError``. A diffrax
            segment s draws its noise from ``fold_in(key, s)`` (a resumed run equals the
            uninterrupted checkpointed run exactly; it is another Brownian path than the
            unsegmented run's); a chain of jumps alone draws from the global step index,
            so its checkpointed run equals the unsegmented one.
        fingerprint: what identifies the run for checkpoints (data, β, family options).
        info: the family's static description, appended to the trajectory's.
        stability_hint: ``(Θ_last) -> str``, what the family knows about its step's
            stability at the last finite state (``None`` when it is not known: adaptive
            steps), e.g. dt0 against the drift's largest curvature, for the divergence message.
        state_columns: ((name, width), ...) naming the state's column groups (e.g. theta
            and a control cost), for the divergence message; default one group, "theta".
        memory: (the family's name, ``bytes(N, R)``): the run's memory from its shapes
            (``mfsde._memory.particle_run_bytes``), checked against the device's before any
            work (``check_run_fits``: ``MemoryError`` naming the largest N and R that fit).
        sharding: the per-run (N, ·) state's ``NamedSharding`` with the particle axis split
            over devices (``run_sharding``); default the start's own, if it is split. The
            state is held to it at every drift and jump evaluation, so that XLA
            partitions each drift into local work and one all-reduce of f_ρ, and the final
            particles keep it (``mfsde.dynamics._sharding``). None on one device: nothing
            is added.

    Divergence: every run stops at the first step whose state is not finite (a diffrax
    event; for jump chains a check after each save block, and the step found again). Then
    ``DivergenceError`` says the time and step, what went non-finite first (drift, noise,
    or an unstable step, and which columns) and the stability hint at the last finite
    state, with the partial trajectory attached; a
    checkpointed run keeps its last good checkpoint. Under an outer jit or vmap, where it
    cannot raise, the trajectory's ``diverged_at`` says when.
    """
    sde_of = sde if not isinstance(sde, ParticleSDE) else (lambda k: (sde, k))
    options = dict(t0=t0, t1=t1, dt0=dt0, solver=solver, ts=ts, stepsize_controller=stepsize_controller,
                   progress=progress, adjoint=adjoint, max_steps=max_steps, checkpoint_every=checkpoint_every,
                   checkpoint_path=checkpoint_path, fingerprint=fingerprint, info=info,
                   stability_hint=stability_hint, state_columns=state_columns, memory=memory)
    if sharding is None:
        sharding = run_sharding(None, y0)
    if sharding is None:
        return _drive(sde_of, key, jnp.asarray(y0), observables=observables, **options)
    solving = solving_sharding(sharding)

    def constrained_sde_of(k):
        sde, *rest = onto_solving_mesh(sde_of(k), solving)
        return (ParticleSDE(None if sde.drift is None else Constrained(sde.drift, solving, 1), sde.noise_scale,
                            None if sde.jump is None else Constrained(sde.jump, solving, 2), sde.jump_every), *rest)

    y0 = jnp.asarray(y0)
    key, observables = onto_solving_mesh((key, observables), solving)
    with solving_context(solving):
        traj = _drive(constrained_sde_of, key, jax.device_put(y0, with_leading(solving, y0.ndim)),
                      observables=observables, **options)
    particles = traj.particles
    return traj._replace(particles=jax.device_put(particles, with_leading(sharding, particles.ndim)),
                         info=traj.info + (("sharding", str(sharding.spec)), ("devices", sharding.num_devices)))


def _drive(sde_of, key, y0, *, t0, t1, dt0, solver, observables, ts, stepsize_controller, progress, adjoint,
           max_steps, checkpoint_every, checkpoint_path, fingerprint, info, stability_hint, state_columns,
           memory) -> Trajectory:
    """``drive`` on one device, or inside a sharded run's mesh context with the state's
    sharding already applied."""
    if key is None:
        batched = False
    else:
        key, batched = as_keys(key)
    if batched and y0.ndim == 3 and y0.shape[0] != key.shape[0]:
        raise ValueError(f"the start has {y0.shape[0]} replicates for {key.shape[0]} keys")
    if memory is not None:
        check_run_fits(memory[0], memory[1], y0.shape[-2], key.shape[0] if batched else 1)
    kwargs = dict(t0=float(t0), t1=float(t1), dt0=float(dt0), solver=solver, observables=observables,
                  stepsize_controller=stepsize_controller, progress=progress, adjoint=adjoint, max_steps=max_steps)
    probe = sde_of(key[0] if batched else key)[0]
    jumps = probe.jump is not None or probe.drift is None
    if jumps and key is None:
        raise ValueError("a run with jumps draws from its key: pass a key")
    if jumps and batched:
        y0 = jnp.broadcast_to(y0, (key.shape[0], *y0.shape[-2:]))
    args = y0
    if checkpoint_every is not None or checkpoint_path is not None:
        if checkpoint_every is None or checkpoint_path is None:
            raise ValueError("checkpointing needs both checkpoint_every (steps) and checkpoint_path")
        if stepsize_controller is not None and not isinstance(stepsize_controller, diffrax.ConstantStepSize):
            raise ValueError("checkpointing needs fixed step sizes")
        traj = _segmented(sde_of, key, y0, args, ts, batched, jumps, int(checkpoint_every), checkpoint_path,
                          fingerprint or {}, stability_hint=stability_hint, state_columns=state_columns, **kwargs)
    elif jumps:
        traj = _run_jumps(sde_of, key, y0, args, ts, batched, **kwargs)
    else:
        traj = _replicates(sde_of, key, y0, args, ts, batched, **kwargs)
    traj = traj._replace(info=traj.info + tuple(info) + _start_info(y0, batched, jumps))
    if checkpoint_every is None:
        replay = _Span(sde_of, key, y0, args, batched, jumps, kwargs, float(t0))
        _raise_if_diverged(traj, replay, float(t0), float(dt0), stability_hint, state_columns)
    return traj


class _Span(NamedTuple):
    """What replays a diverged run: its terms ``sde_of``, keys, start state ``y`` and ``args``
    of the span that diverged (the run, or one checkpoint segment), that span's solve
    options, the run's t0 and the span's clock offset (a segment runs on [0, (b − a) dt0])."""

    sde_of: Callable
    key: Array
    y: Array
    args: Array
    batched: bool
    jumps: bool
    kwargs: dict
    run_t0: float
    offset: float = 0.0


class _SaveTime(eqx.Module):
    # the cheapest observable: a replay to the last finite state needs none
    def __call__(self, t, y, args):
        return {"t": t}


def _raise_if_diverged(traj: Trajectory, replay: _Span, t0: float, dt0: float, hint, columns=None,
                       kept: str = "") -> None:
    """``DivergenceError`` if the (concrete) trajectory stopped at a non-finite state.

    ``replay`` (``_Span``) finds the last finite state of the diverged replicate: a jump chain's engine stopped there; a diffrax run is solved again
    with the same steps and draws up to one step before the divergence (``stop_at``). There
    the drift and noise are evaluated to say which went non-finite first; ``hint(Θ_last)``
    says how the step compares with the drift's curvature.
    """
    at = traj.diverged_at
    if isinstance(at, jax.core.Tracer):
        return
    at = np.atleast_1d(np.asarray(at, np.float64))
    if np.all(np.isinf(at)):
        return
    r = int(np.argmin(at))
    t = float(at[r])
    step = int(round((t - t0) / dt0))
    keep = np.asarray(traj.ts) < t
    y_bad = traj.particles[r] if at.size > 1 and traj.particles.ndim == 3 else traj.particles
    sde, args, t_last, y_last, y_bad = _last_finite_state(replay, r, t - replay.offset, y_bad)
    quantity, cols, what, models_fault = _what_went_nonfinite(sde, args, t_last, y_last, y_bad, columns,
                                                              replay.offset)
    last = traj.particles if y_last is None else y_last
    partial = traj._replace(ts=traj.ts[keep], observables={k: v[..., keep] for k, v in traj.observables.items()},
                            particles=last)
    who = f" in replicate {r}" if at.size > 1 else ""
    if models_fault:
        advice = "Check the unit and the prior where the particles were (the error's .trajectory.particles)."
    elif hint is not None:
        advice = hint(y_last)
    else:
        advice = f"Take a smaller step than dt0 = {dt0:g}."
    raise DivergenceError(f"the particle state became non-finite{who} at t = {t:.6g} (step {step} of dt0 = {dt0:g}); "
                          f"the run stopped there and the error's .trajectory holds the saves before it and the last "
                          f"finite state{kept}. {what} {advice}", t, step, partial, r if at.size > 1 else None,
                          quantity, cols)


def _last_finite_state(replay: _Span, r: int, t_bad: float, y_bad):
    """(sde, args, t_last, Θ_last, Θ_bad) of replicate r, which went non-finite at t_bad
    (both times in the sde's own time)."""
    batched = replay.batched
    key = replay.key[r] if batched else replay.key
    y, args = replay.y, replay.args
    y = y[r] if batched and y.ndim == 3 else y
    args = args[r] if batched and args is not None and args.ndim == 3 else args
    kw = replay.kwargs
    sde, noise_key = replay.sde_of(key)[:2]
    t0, t1, dt0 = kw["t0"], kw["t1"], kw["dt0"]
    if replay.jumps:
        # the engine stopped at the last finite state; one jump interval from it is the bad one
        every = sde.jump_every
        k = int(round((t_bad - replay.run_t0) / dt0)) - every
        y_last = y_bad
        y_bad, _ = _jump_block(sde, kw["solver"], _SaveTime(), key, y_last, args, jnp.asarray(k), every,
                               replay.run_t0, dt0, False)
        return sde, args, replay.run_t0 + k * dt0, y_last, y_bad
    controller = kw.get("stepsize_controller")
    if controller is not None and not isinstance(controller, diffrax.ConstantStepSize):
        return sde, args, t_bad, None, y_bad  # adaptive steps: the step before is not known
    h, _ = _step_size(t0, t1, dt0)
    t_last = t_bad - h
    if t_last < t0 + 0.5 * h:
        return sde, args, t0, y, y_bad
    again = solve(sde, noise_key, y, t0=t0, t1=t1, dt0=dt0, solver=kw["solver"], observables=_SaveTime(), ts=[t0],
                  args=args, progress=False, max_steps=kw.get("max_steps"), stop_at=t_last - 0.5 * h)
    return sde, args, t_last, again.particles, y_bad


def _overflow_scale(dtype) -> float:
    # beyond √max a drift quadratic in Θ overflows: the state grew there, it did not start there
    return float(np.sqrt(np.finfo(dtype).max))


def _what_went_nonfinite(sde, args, t_last, y_last, y_bad, columns, offset: float = 0.0
                         ) -> tuple[str, tuple[str, ...], str, bool]:
    """(quantity, the column groups that went non-finite, a sentence saying so, whether the
    model rather than the step is at fault: its drift is undefined at an ordinary state).

    At the last finite state Θ_last: a non-finite drift b(t, Θ_last) is the model's
    (its unit, gradient or prior overflows or is undefined there, whatever the step); a
    non-finite noise scale is the schedule's; both finite means one step of the scheme took
    a finite state to a non-finite one, an unstable step. ``columns``: ((name, width), ...)
    naming the state's column groups (default one group, "theta"). ``t_last`` is in the
    sde's own time (a checkpoint segment's starts at 0); ``offset`` makes it the run's.
    """
    t_sde, t_last = t_last, t_last + offset
    y_bad = np.asarray(y_bad)
    n = y_bad.shape[0]
    columns = columns or (("theta", y_bad.shape[-1]),)
    bad_rows = int(np.sum(~np.all(np.isfinite(y_bad), axis=-1)))
    names, start = [], 0
    for name, width in columns:
        if not np.all(np.isfinite(y_bad[..., start:start + width])):
            names.append(name)
        start += width
    where = f"Non-finite first: {', '.join(names)} of {bad_rows} of {n} particles."
    if y_last is None:
        return "step", tuple(names), where, False
    y_last = jnp.asarray(y_last)
    size = float(jnp.max(jnp.abs(y_last)))
    if sde.drift is None:
        return "jump", tuple(names), (f"{where} A finite state at t = {t_last:.6g} (max |Θ| = {size:.3g}) went "
                                      "non-finite in one jump (the chain's update): an unstable step."), False
    drift = np.asarray(sde.drift(t_sde, y_last, args))
    bad_drift = int(np.sum(~np.all(np.isfinite(drift), axis=-1)))
    if bad_drift:
        said = (f"{where} The drift went non-finite first: at the last finite state (t = {t_last:.6g}, max |Θ| = "
                f"{size:.3g}) it is non-finite for {bad_drift} of {n} particles")
        if size > _overflow_scale(y_last.dtype):
            return "drift", tuple(names), (f"{said}, where the state had grown too large to evaluate it: "
                                           "unstable steps blew the state up until the drift overflowed."), False
        return "drift", tuple(names), (f"{said}, at a state of ordinary size: the unit, its gradient or the "
                                       "prior's log-density overflows or is undefined there, whatever the step."), True
    if sde.noise_scale is not None and not np.all(np.isfinite(np.asarray(sde.noise_scale(t_sde)))):
        return "noise", tuple(names), f"{where} The noise scale g(t) is non-finite at t = {t_last:.6g}.", False
    return "step", tuple(names), (f"{where} The drift and noise are finite at the last finite state (t = "
                                  f"{t_last:.6g}, max |Θ| = {size:.3g}, max |drift| = {np.max(np.abs(drift)):.3g}), so "
                                  "one step of the scheme took them to non-finite values: an unstable step."), False


def _run_jumps(sde_of, key, y0, args, ts, batched, *, t0, t1, dt0, solver, observables, progress,
               stepsize_controller=None, first=0, last=None, save_steps=None, adjoint=None, max_steps=None):
    """Steps first .. last − 1 (default the whole run) of a chain with jumps (``_solve_jumps``)."""
    sde = sde_of(key[0] if batched else key)[0]
    if stepsize_controller is not None and not isinstance(stepsize_controller, diffrax.ConstantStepSize):
        raise ValueError("an SDE with jumps runs on fixed steps: pass no stepsize_controller")
    n = _whole_steps(t0, t1, dt0, "a run with jumps")
    if save_steps is None:
        save_steps = _jump_save_steps(ts, t0, dt0, n, sde.jump_every)
    last = n if last is None else last
    if progress is None:
        progress = last - first >= _PROGRESS_MIN_STEPS
    return _solve_jumps(sde, key, y0, args, t0=t0, dt0=dt0, first=first, last=last, solver=solver,
                        observables=observables, save_steps=save_steps, progress=progress, batched=batched)


def _segmented(sde_of, key, y0, args, ts, batched, jumps, every, path, fingerprint, *, t0, t1, dt0, progress,
               stability_hint=None, state_columns=None, **kwargs) -> Trajectory:
    """Segments of ``every`` steps, each followed by a checkpoint; resumes from the file."""
    if every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of steps, got {every}")
    n = _whole_steps(t0, t1, dt0, "checkpointing")
    probe = sde_of(key[0] if batched else key)[0]
    if jumps:
        if every % probe.jump_every:
            raise ValueError(f"checkpoint_every must be a multiple of the {probe.jump_every} steps between jumps")
        ks = _jump_save_steps(ts, t0, dt0, n, probe.jump_every)
    else:
        ts = np.linspace(t0, t1, min(101, n + 1)) if ts is None else np.asarray(ts, np.float64)
        ks = np.rint((ts - t0) / dt0).astype(np.int64)
        if ts.ndim != 1 or np.any(np.abs((ts - t0) / dt0 - ks) > 1e-6) or np.any(ks < 0) or np.any(ks > n) \
                or np.any(np.diff(ks) <= 0):
            raise ValueError("with checkpointing, ts must be increasing times on the step grid t0 + k dt0 in [t0, t1]")
    file = _checkpoint.CheckpointFile(path, dict(fingerprint, t0=t0, t1=t1, dt0=dt0, checkpoint_every=every,
                                                 ts_steps=ks.tolist(), particles_shape=list(y0.shape),
                                                 key=_checkpoint.key_data(key)))
    n_seg = math.ceil(n / every)
    y, start, obs = y0, 0, {}
    state = file.load()
    if state is not None:
        y, start, obs = jnp.asarray(state.particles, y0.dtype), state.next_segment, state.observables
        if not isinstance(y0, jax.core.Tracer) and isinstance(y0.sharding, NamedSharding):  # split again
            y = jax.device_put(y, y0.sharding)
    show = n >= _PROGRESS_MIN_STEPS if progress is None else progress
    axis = 1 if batched else 0
    bar = tqdm.tqdm(total=n_seg, initial=start, unit="segment", disable=not show)
    for s in range(start, n_seg):
        a, b = s * every, min((s + 1) * every, n)
        wanted = ks[(ks > a) & (ks <= b)] if s else ks[ks <= b]
        if jumps:
            traj = _run_jumps(sde_of, key, y, args, None, batched, t0=t0, t1=t1, dt0=dt0, progress=False,
                              first=a, last=b, save_steps=wanted, **kwargs)
            rows = {k: np.asarray(v) for k, v in traj.observables.items()}
        else:
            seg_ks = np.union1d(wanted, [b])
            # every segment is solved on [0, (b − a) dt0] with its terms shifted by its start
            # time (a traced offset), so that all full segments share one compiled solve
            offset = jnp.asarray(t0 + a * dt0, y0.dtype)

            def seg_sde(k, s=s, offset=offset):
                sde, noise_key, *obs = sde_of(k)
                shifted = ParticleSDE(_Shifted(sde.drift, offset),
                                      None if sde.noise_scale is None else _Shifted(sde.noise_scale, offset))
                return shifted, jax.random.fold_in(noise_key, s), *(_Shifted(o, offset) for o in obs)

            seg_kwargs = dict(kwargs, t0=0.0, t1=(b - a) * dt0, dt0=dt0, progress=False,
                              observables=None if kwargs.get("observables") is None
                              else _Shifted(kwargs["observables"], offset))
            traj = _replicates(seg_sde, key, y, args, (seg_ks - a) * dt0, batched, **seg_kwargs)
            traj = traj._replace(diverged_at=traj.diverged_at + offset)
            keep = np.isin(seg_ks, wanted)
            rows = {k: np.compress(keep, np.asarray(v), axis=axis) for k, v in traj.observables.items()}
        for name, values in rows.items():
            obs.setdefault(name, []).extend(np.moveaxis(values, axis, 0))
        if not isinstance(traj.diverged_at, jax.core.Tracer) and not np.all(np.isinf(np.asarray(traj.diverged_at))):
            done = {k: jnp.asarray(np.moveaxis(np.stack(v), 0, axis)) for k, v in obs.items() if v}
            n_rows = len(next(iter(obs.values()))) if obs else 0
            so_far = traj._replace(ts=jnp.asarray(t0 + ks[:n_rows] * dt0, y0.dtype), observables=done)
            replay = _Span(sde_of, key, y, args, batched, True, dict(kwargs, t0=t0, t1=t1, dt0=dt0), t0) if jumps \
                else _Span(seg_sde, key, y, args, batched, False, seg_kwargs, t0, t0 + a * dt0)
            _raise_if_diverged(so_far, replay, t0, dt0, stability_hint, state_columns,
                               f"; the checkpoint {path} keeps the state after segment {s} (step {a})")
        y = traj.particles
        file.save(y, s + 1, obs)
        bar.update(1)
    bar.close()
    observables = {k: jnp.asarray(np.moveaxis(np.stack(v), 0, axis)) for k, v in obs.items()}
    solver = kwargs.get("solver")
    info = (("solver", "jumps" if probe.drift is None else type(solver).__name__), ("dt0", dt0), ("t0", t0),
            ("t1", t1), ("controller", "ConstantStepSize"), ("checkpoint_every", every))
    return Trajectory(ts=jnp.asarray(t0 + ks * dt0, y0.dtype), particles=y, observables=observables,
                      num_steps=jnp.asarray(n), info=info)


def _start_info(y0, batched: bool, broadcast: bool) -> tuple:
    """How the replicates started: one shared cloud, or per-replicate clouds and how
    differently they are distributed (``start_dispersion``); nothing under tracing."""
    if not batched:
        return ()
    if y0.ndim == 2:
        return (("starts", "shared"),)
    if isinstance(y0, jax.core.Tracer):
        return ()
    if broadcast and bool(jnp.all(y0 == y0[:1])):
        return (("starts", "shared"),)
    return (("starts", "per-replicate"), ("start_dispersion", start_dispersion(y0)))
