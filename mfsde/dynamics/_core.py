"""The particle-SDE core shared by every mean-field dynamics: diffrax terms over (N, D).

A mean-field SDE here is dΘ = b(t, Θ) dt + g(t) dB on the whole (N, D) particle array,
with isotropic additive noise of scale g(t) (or none: an ODE). ``solve`` turns it into
diffrax terms (``MultiTerm(ODETerm, ControlTerm)`` with a lineax diagonal operator), picks
the Brownian path, saves only observables (``SaveAt(fn=...)``) plus the final state, shows
a ``TqdmProgressMeter`` on long runs and sets ``max_steps`` from t1/dt0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["ParticleSDE", "Trajectory", "solve", "solve_replicates"]

# Runs of at least this many steps show a progress bar unless progress=False.
_PROGRESS_MIN_STEPS = 5000
# Adaptive (ODE) solves may take this many times the steps t1/dt0 suggests.
_ADAPTIVE_STEP_FACTOR = 64


class Trajectory(eqx.Module):
    """A solved particle dynamics.

    ts: save times, shape (T,). particles: the final state, shape (N, D) (or (R, N, D) for
    R replicate runs). observables: name -> values at ``ts``, shape (T,) (or (R, T)).
    num_steps: solver steps taken. info: static description of the run (solver, dt0, ...).
    """

    ts: Float[Array, " t"]
    particles: Float[Array, "n d"]
    observables: dict[str, Float[Array, " t"]]
    num_steps: Array
    info: tuple[tuple[str, object], ...] = eqx.field(static=True, default=())

    def _replace(self, **changes) -> "Trajectory":
        return dataclasses.replace(self, **changes)


class ParticleSDE(eqx.Module):
    """dΘ = drift(t, Θ) dt + noise_scale(t) dB over an (N, D) particle array.

    ``drift(t, Θ, args) -> (N, D)``; ``noise_scale(t) -> scalar`` (isotropic) or a (D,)
    row of per-coordinate scales (diagonal), or ``None`` for an ODE.
    Both should be equinox Modules (or other stable callables) so that repeated solves
    reuse the compiled program.
    """

    drift: Callable
    noise_scale: Callable | None = None


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
) -> Trajectory:
    """Solve a particle SDE with diffrax, saving ``observables(t, Θ, args) -> dict`` at ``ts``.

    Fixed steps (no controller, ``ConstantStepSize``, or a ``StepTo`` grid) draw Brownian increments with
    ``UnsafeBrownianPath`` (one normal draw per step, no tree) and solve with
    ``ForwardMode``, a plain while loop without checkpoints: this is what keeps a diffrax
    step as cheap as a hand-written ``lax.scan`` Euler–Maruyama step (bench/langevin.py).
    Adaptive controllers get a ``VirtualBrownianTree`` (tolerance dt0/100) when there is
    noise. ``ts`` defaults to up to 101 equally spaced times in [t0, t1]. With noise and
    fixed steps, each save time moves to the nearest step (``_snap_to_steps``: observables
    are the chain's states, never an interpolant's) and the returned ``ts`` say where.
    """
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"need finite t0 < t1, got t0={t0}, t1={t1}")
    if not (math.isfinite(dt0) and dt0 > 0):
        raise ValueError(f"dt0 must be a positive number, got {dt0}")
    if stepsize_controller is None:
        stepsize_controller = diffrax.ConstantStepSize()
    fixed = isinstance(stepsize_controller, diffrax.ConstantStepSize)
    # StepTo: a given, non-uniform grid (e.g. refined where the drift is stiff); its steps
    # are never rejected, so the cheap Brownian path and forward-mode loop apply too.
    step_to = isinstance(stepsize_controller, diffrax.StepTo)
    n_steps = len(stepsize_controller.ts) - 1 if step_to else num_fixed_steps(t0, t1, dt0)
    if ts is None:
        ts = np.linspace(t0, t1, min(101, n_steps + 1))
    # Save times known at trace time (lists, numpy, concrete arrays) stay numpy here, even
    # under an outer jit: they decide how saving is compiled.
    if not isinstance(ts, jax.core.Tracer):
        ts = np.asarray(ts, np.float64)
        if ts.ndim == 1 and ts.size and (np.any(np.diff(ts) <= 0) or ts[0] < t0 or ts[-1] > t1):
            raise ValueError(f"ts must be increasing and within [t0, t1] = [{t0}, {t1}], got {ts}")
    if jnp.ndim(ts) != 1 or jnp.shape(ts)[0] < 1:
        raise ValueError(f"ts must be a non-empty 1-D array of times, got shape {jnp.shape(ts)}")
    if fixed and sde.noise_scale is not None and not isinstance(ts, jax.core.Tracer):
        ts = _snap_to_steps(ts, t0, t1, dt0)

    drift = diffrax.ODETerm(sde.drift)
    if sde.noise_scale is None:
        terms = drift
    else:
        shape = jax.ShapeDtypeStruct(y0.shape, y0.dtype)
        levy = _levy_area(solver)
        if fixed or step_to:
            bm = diffrax.UnsafeBrownianPath(shape=shape, key=key, levy_area=levy)
        else:
            bm = diffrax.VirtualBrownianTree(t0, t1, tol=dt0 / 100, shape=shape, key=key, levy_area=levy)
        terms = diffrax.MultiTerm(drift, diffrax.ControlTerm(_DiagonalDiffusion(sde.noise_scale), bm))

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
        saveat=saveat,
        stepsize_controller=stepsize_controller,
        adjoint=diffrax.ForwardMode() if adjoint is None else adjoint,
        max_steps=max_steps,
        progress_meter=meter,
    )
    obs, y1 = sol.ys
    if grid is not None:
        ks, every = grid
        rows = [0 if k == 0 else k // every - 1 + int(ks[0] == 0) for k in ks]
        obs = jax.tree.map(lambda a: a[jnp.asarray(rows)], obs)
    info = (("solver", type(solver).__name__), ("dt0", float(dt0)), ("t0", float(t0)), ("t1", float(t1)),
            ("controller", type(stepsize_controller).__name__))
    return Trajectory(ts=jnp.asarray(ts, y0.dtype), particles=y1[-1], observables=obs, num_steps=sol.stats["num_steps"],
                      info=info)


def solve_replicates(sde: ParticleSDE, key: PRNGKeyArray, y0: Array, ts, batched: bool, **kwargs) -> Trajectory:
    """``solve``, or with ``batched`` R replicate solves vmapped over a batch of keys (R,) and
    a shared start (N, D) or per-replicate starts (R, N, D): particles (R, N, D),
    observables (R, T), one shared ``ts``."""
    if not batched:
        return solve(sde, key, y0, ts=ts, **kwargs)
    ts_known = None if ts is None else np.asarray(ts, np.float64)
    y_axis = 0 if y0.ndim == 3 else None
    traj = jax.vmap(lambda k, y: solve(sde, k, y, ts=ts_known, **kwargs), in_axes=(0, y_axis))(key, y0)
    return traj._replace(ts=traj.ts[0], num_steps=traj.num_steps[0])
