"""The one driver every mean-field dynamics family runs through.

A family declares a ``ParticleSDE``: dΘ = b(t, Θ) dt + g(t) dB on the whole particle
state (N, D) (or (N, D + k) with noiseless extra columns such as a control cost), with
additive noise of scale g(t) (or none: an ODE), and optionally a discrete
``jump(key, t, Θ) -> Θ`` every k steps (a resampling or birth–death step; with no drift
the chain is the jumps alone, as SGD). ``drive`` owns everything else: the save grid,
replicates from a batch of keys, checkpoint/resume, divergence reports, sharding and the
``Trajectory``. Fixed-step runs go through the one compiled loop of ``_engine`` (values
traced, structure static: a change of β, dt0, t1 or the data reuses the program); adaptive
step-size controllers (ODEs at β = ∞) go through ``diffrax.diffeqsolve``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jaxtyping import Array, Float, PRNGKeyArray

from . import _checkpoint
from .._keys import as_keys
from .._memory import check_run_fits
from .._trajectory import Run, Trajectory
from ._engine import (SaveGrid, levy_area, num_fixed_steps, one_step, progress_bar, run_span, save_steps_of,
                      step_grid, DiagonalDiffusion)
from ._sharding import Constrained, onto_solving_mesh, run_sharding, solving_context, solving_sharding, with_leading
from ._starts import start_dispersion

__all__ = ["ParticleSDE", "Run", "Trajectory", "DivergenceError", "solve", "drive", "save_times", "num_fixed_steps"]


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
    # diffrax event of an adaptive solve: stop at the first step whose state is not finite
    def __call__(self, t, y, args, **kwargs):
        return ~jnp.all(jnp.isfinite(y))


# Runs of at least this many steps show a progress bar unless progress=False.
_PROGRESS_MIN_STEPS = 5000
# Adaptive (ODE) solves may take this many times the steps t1/dt0 suggests.
_ADAPTIVE_STEP_FACTOR = 64
# Saves of a default grid: up to this many points in [t0, t1].
DEFAULT_NUM_SAVES = 101


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


class _Fixed(eqx.Module):
    # sde_of for a family whose terms do not depend on the replicate's key
    sde: ParticleSDE

    def __call__(self, key):
        return self.sde, key


class _Onto(eqx.Module):
    # sde_of of a sharded run: drift and jump held to the per-run particle sharding
    sde_of: Callable
    sharding: NamedSharding = eqx.field(static=True)

    def __call__(self, key):
        sde, *rest = onto_solving_mesh(self.sde_of(key), self.sharding)
        s = self.sharding
        return (ParticleSDE(None if sde.drift is None else Constrained(sde.drift, s, 1), sde.noise_scale,
                            None if sde.jump is None else Constrained(sde.jump, s, 2), sde.jump_every), *rest)


def _check_span(t0: float, t1: float, dt0: float) -> None:
    if not (math.isfinite(t0) and math.isfinite(t1) and t1 > t0):
        raise ValueError(f"need finite t0 < t1, got t0={t0}, t1={t1}")
    if not (math.isfinite(dt0) and dt0 > 0):
        raise ValueError(f"dt0 must be a positive number, got {dt0}")


def _is_fixed(controller) -> bool:
    return controller is None or isinstance(controller, (diffrax.ConstantStepSize, diffrax.StepTo))


def _grid_times(controller):
    return np.asarray(controller.ts, np.float64) if isinstance(controller, diffrax.StepTo) else None


def _checked_ts(ts, t0: float, t1: float) -> np.ndarray:
    ts = np.asarray(ts, np.float64)
    if ts.ndim != 1 or not ts.size:
        raise ValueError(f"ts must be a non-empty 1-D array of times, got shape {ts.shape}")
    # times from a float32 run (e.g. another trajectory's ts) may overshoot an end by rounding
    slack = 4 * np.finfo(np.float32).eps * max(abs(t0), abs(t1), 1.0)
    ts = np.where((ts > t1) & (ts <= t1 + slack), t1, np.where((ts < t0) & (ts >= t0 - slack), t0, ts))
    if np.any(np.diff(ts) <= 0) or ts[0] < t0 or ts[-1] > t1:
        raise ValueError(f"ts must be increasing and within [t0, t1] = [{t0}, {t1}], got {ts}")
    return ts


def save_steps(ts, t0: float, t1: float, dt0: float, stepsize_controller=None, jump_every: int = 1) -> np.ndarray:
    """Step indices k of the saves of a fixed-step run (its state at t_k): ``ts`` moved to
    the nearest step (the nearest end of a jump interval of ``jump_every`` steps), or by
    default up to 101 equally spaced ones. An off-grid time is never interpolated: between
    steps an SDE's interpolant is not a state of the chain (a linear interpolant α of the
    way through a step carries a fraction α² + (1 − α)² < 1 of its noise variance)."""
    _check_span(t0, t1, dt0)
    times = _grid_times(stepsize_controller)
    n = len(times) - 1 if times is not None else num_fixed_steps(t0, t1, dt0)
    if n % jump_every:
        raise ValueError(f"the run's {n} steps are not a whole number of jump intervals of {jump_every} steps")
    m = n // jump_every
    if ts is None:
        return np.unique(np.round(np.linspace(0, m, min(DEFAULT_NUM_SAVES, m + 1))).astype(np.int64)) * jump_every
    ts = _checked_ts(ts, t0, t1)
    if times is not None:
        ks = np.abs(times[None, :] - ts[:, None]).argmin(axis=1).astype(np.int64)
    else:
        ks = save_steps_of(ts, t0, (t1 - t0) / n, n, jump_every)
    if np.any(np.diff(ks) <= 0):
        if jump_every > 1:
            raise ValueError(f"ts must be increasing, at most one save per jump interval of {jump_every} steps of "
                             f"dt0 = {dt0:g} (nearest interval ends: {ks.tolist()})")
        raise ValueError(f"ts has two save times within one step of dt0 = {dt0:g} (nearest steps {ks.tolist()}); "
                         "observables of a run are taken at the chain's own states, so space ts by at least "
                         "dt0 or take a smaller dt0")
    return ks


def _step_times(ks: np.ndarray, t0: float, t1: float, dt0: float, stepsize_controller=None) -> np.ndarray:
    times = _grid_times(stepsize_controller)
    if times is not None:
        return times[ks]
    n = num_fixed_steps(t0, t1, dt0)
    return np.where(ks >= n, t1, t0 + ks * ((t1 - t0) / n))


def save_times(ts, t0: float, t1: float, dt0: float, stepsize_controller=None, noisy: bool = True,
               jump_every: int = 1):
    """The save times a run uses (numpy): on fixed steps the times of ``save_steps``; for an
    adaptive controller ``ts`` as given (default 101 points in [t0, t1]). Traced ``ts``
    come back as they are."""
    _check_span(t0, t1, dt0)
    if isinstance(ts, jax.core.Tracer):
        return ts
    if not _is_fixed(stepsize_controller):
        if ts is None:
            return np.linspace(t0, t1, min(DEFAULT_NUM_SAVES, num_fixed_steps(t0, t1, dt0) + 1))
        return _checked_ts(ts, t0, t1)
    ks = save_steps(ts, t0, t1, dt0, stepsize_controller, jump_every)
    return _step_times(ks, t0, t1, dt0, stepsize_controller)


def solve(sde: ParticleSDE, key: PRNGKeyArray, y0: Float[Array, "n d"], *, t0: float, t1: float, dt0: float,
          solver: diffrax.AbstractSolver, observables: Callable, ts: Array | None = None,
          stepsize_controller: diffrax.AbstractStepSizeController | None = None, progress: bool | None = None,
          adjoint: diffrax.AbstractAdjoint | None = None, max_steps: int | None = None, args=None) -> Trajectory:
    """One run of a particle SDE, saving ``observables(t, Θ, args) -> dict`` at ``ts``
    (``args`` default Θ_0): ``drive`` for one key, without checkpoints or a divergence
    report (``Trajectory.diverged_at`` says when a run went non-finite)."""
    _check_span(float(t0), float(t1), float(dt0))
    y0 = jnp.asarray(y0)
    return _solve(_Fixed(sde), key, y0, y0 if args is None else args, ts, False, t0=float(t0), t1=float(t1),
                  dt0=float(dt0), solver=solver, observables=observables, stepsize_controller=stepsize_controller,
                  progress=progress, adjoint=adjoint, max_steps=max_steps)[0]


def _solve(sde_of, key, y0, args, ts, batched, *, t0, t1, dt0, solver, observables, stepsize_controller, progress,
           adjoint, max_steps, first=0, last=None, ks=None, pad_to=None):
    """(trajectory of steps first .. last − 1 saved at step indices ``ks``, the step grid);
    an adaptive controller goes to ``_adaptive``."""
    if not _is_fixed(stepsize_controller):
        return _adaptive(sde_of, key, y0, args, ts, batched, t0=t0, t1=t1, dt0=dt0, solver=solver,
                         observables=observables, stepsize_controller=stepsize_controller, progress=progress,
                         adjoint=adjoint, max_steps=max_steps), None
    probe = sde_of(key[0] if batched else key)[0]
    times = _grid_times(stepsize_controller)
    grid = step_grid(t0, t1, dt0, y0.dtype, times)
    n = len(times) - 1 if times is not None else num_fixed_steps(t0, t1, dt0)
    last = n if last is None else last
    if ks is None:
        if isinstance(ts, jax.core.Tracer):
            steps = jnp.rint((ts - t0) / grid.h).astype(jnp.int32)
        else:
            steps = save_steps(ts, t0, t1, dt0, stepsize_controller, probe.jump_every)
    else:
        steps = ks
    count = len(steps) if pad_to is None else pad_to
    if not isinstance(steps, jax.core.Tracer):
        steps = np.asarray(steps, np.int64)
        padded = np.concatenate([steps, np.full(count - len(steps), steps[-1] if len(steps) else last)])
    else:
        padded = steps
    saves = SaveGrid(jnp.asarray(first, jnp.int32), jnp.asarray(last, jnp.int32), jnp.asarray(padded, jnp.int32))
    if probe.drift is not None and solver is None:
        raise ValueError("an SDE with a drift needs a solver")
    if probe.drift is None:
        solver = None
    show = (last - first >= _PROGRESS_MIN_STEPS) if progress is None else bool(progress)
    if show:
        with progress_bar(last, first):
            out = run_span(sde_of, solver, observables, key, y0, args, grid, saves, batched, True)
    else:
        out = run_span(sde_of, solver, observables, key, y0, args, grid, saves, batched, False)
    obs = out.observables
    if not isinstance(steps, jax.core.Tracer):
        obs = {k: v[..., : len(steps)] for k, v in obs.items()}
        ts_out = jnp.asarray(_step_times(steps, t0, t1, dt0, stepsize_controller), y0.dtype)
    else:
        ts_out = grid.time(steps)
    bad = out.diverged_step
    diverged_at = jnp.where(bad >= 0, grid.time(bad + 1), jnp.inf)
    run = _grid_run(probe, solver, t0, t1, dt0, "StepTo" if times is not None else "ConstantStepSize")
    num_steps = out.step - first + (out.diverged_step >= 0)  # the step that went non-finite counts
    if batched:
        num_steps = jnp.max(num_steps)
    traj = Trajectory(ts=ts_out, particles=out.state, observables=obs, num_steps=num_steps, run=run,
                      diverged_at=diverged_at)
    return traj, (grid, solver, out.diverged_step)


@eqx.filter_jit
def _adaptive_solve(terms, solver, t0, t1, dt0, y0, args, ts, observables, controller, adjoint, max_steps, meter):
    sol = diffrax.diffeqsolve(terms, solver, t0, t1, dt0, y0, args=args,
                              saveat=diffrax.SaveAt(subs=[diffrax.SubSaveAt(ts=ts, fn=observables),
                                                          diffrax.SubSaveAt(t1=True)]),
                              stepsize_controller=controller, adjoint=adjoint, max_steps=max_steps,
                              progress_meter=meter, event=diffrax.Event(_NonFinite()))
    obs, y1 = sol.ys
    diverged_at = jnp.where(sol.event_mask & ~jnp.all(jnp.isfinite(y1[-1])), sol.ts[1][-1], jnp.inf)
    return obs, y1[-1], sol.stats["num_steps"], diverged_at


def _adaptive(sde_of, key, y0, args, ts, batched, *, t0, t1, dt0, solver, observables, stepsize_controller,
              progress, adjoint, max_steps) -> Trajectory:
    """An adaptive-step solve with diffrax (its times and tolerances traced; a
    ``VirtualBrownianTree`` at tolerance dt0/100 when there is noise)."""
    n = num_fixed_steps(t0, t1, dt0)
    ts = save_times(ts, t0, t1, dt0, stepsize_controller)
    if max_steps is None:
        max_steps = 1 << max(4, math.ceil(math.log2(_ADAPTIVE_STEP_FACTOR * n)))  # a bucket: few programs
    show = n >= _PROGRESS_MIN_STEPS if progress is None else progress
    meter = diffrax.TqdmProgressMeter(refresh_steps=max(1, n // 100)) if show else diffrax.NoProgressMeter()
    adjoint = diffrax.ForwardMode() if adjoint is None else adjoint

    def one(k, y, a):
        sde, noise_key, *own = sde_of(k)
        if sde.jump is not None:
            raise ValueError("an SDE with jumps runs on fixed steps: pass no stepsize_controller")
        terms = diffrax.ODETerm(sde.drift)
        if sde.noise_scale is not None:
            shape = jax.ShapeDtypeStruct(y.shape, y.dtype)
            bm = diffrax.VirtualBrownianTree(t0, t1, tol=dt0 / 100, shape=shape, key=noise_key,
                                             levy_area=levy_area(solver))
            terms = diffrax.MultiTerm(terms, diffrax.ControlTerm(DiagonalDiffusion(sde.noise_scale), bm))
        dtype = y.dtype
        return _adaptive_solve(terms, solver, jnp.asarray(t0, dtype), jnp.asarray(t1, dtype), jnp.asarray(dt0, dtype),
                               y, a, jnp.asarray(ts, dtype), own[0] if own else observables, stepsize_controller,
                               adjoint, max_steps, meter)

    if batched:
        obs, y1, steps, at = jax.vmap(one, in_axes=(0, 0 if y0.ndim == 3 else None, 0 if args.ndim == 3 else None))(
            key, y0, args)
        steps = jnp.max(steps)
    else:
        obs, y1, steps, at = one(key, y0, args)
    run = Run(solver=solver, controller=type(stepsize_controller).__name__, fixed_step=False, t0=float(t0),
              t1=float(t1), dt0=float(dt0))
    return Trajectory(ts=jnp.asarray(ts, y0.dtype), particles=y1, observables=obs, num_steps=steps, run=run,
                      diverged_at=at)


def drive(sde, key, y0: Float[Array, "n d"], *, t0: float, t1: float, dt0: float, solver=None,
          observables: Callable, ts=None, stepsize_controller=None, progress: bool | None = None,
          adjoint=None, max_steps: int | None = None, checkpoint_every: int | None = None,
          checkpoint_path=None, fingerprint: dict | None = None, run: Run = Run(),
          stability_hint: Callable[[Array | None], str] | None = None,
          state_columns: tuple[tuple[str, int], ...] | None = None,
          memory: Callable[[int, int], int] | None = None,
          sharding: NamedSharding | None = None) -> Trajectory:
    """Run one dynamics family: the driver that owns keys, replicates, checkpoints, saving
    and the ``Trajectory``.

    Args:
        sde: a ``ParticleSDE``, or ``sde_of(key) -> (ParticleSDE, noise key[, observables])``
            when the family's terms (and observables) depend on the replicate's key (the
            bridge's inner draws); diffrax families only.
        key: one key or a batch of R keys (typed or raw, ``as_keys``): R replicate runs,
            vmapped, from ``y0`` of shape (N, D) (shared) or (R, N, D); particles and
            observables then carry a leading replicate axis, and ``Trajectory.run`` records how the
            replicates started (``start_dispersion``). ``None`` for an ODE.
        t0, t1, dt0, solver, ts, stepsize_controller, adjoint, max_steps: as ``solve``.
        observables: ``observables(t, Θ, Θ_0) -> dict`` of scalars.
        checkpoint_every, checkpoint_path: run in segments of this many fixed steps and write
            the state after each to ``checkpoint_path`` (an .npz, replaced atomically); a
            rerun resumes from it; a file that is unreadable or was written by a different
            run (``fingerprint``, sizes, times, key) raises ``ValueError``. Every draw
            depends on the step index alone (``_engine``), so the checkpointed run, resumed
            or not, is the unsegmented run exactly.
        fingerprint: what identifies the run for checkpoints (data, β, family options).
        run: the family's part of the trajectory's ``Run`` (family, diagnostics_every,
            options, continuation); the driver fills in the grid, the solver, the starts
            and the sharding.
        stability_hint: ``(Θ_last) -> str``, what the family knows about its step's
            stability at the last finite state (``None`` when it is not known: adaptive
            steps), e.g. dt0 against the drift's largest curvature, for the divergence message.
        state_columns: ((name, width), ...) naming the state's column groups (e.g. theta
            and a control cost), for the divergence message; default one group, "theta".
        memory: ``bytes(N, R)``, the run's memory from its shapes
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
    sde_of = _Fixed(sde) if isinstance(sde, ParticleSDE) else sde
    options = dict(t0=float(t0), t1=float(t1), dt0=float(dt0), solver=solver, ts=ts,
                   stepsize_controller=stepsize_controller, progress=progress, adjoint=adjoint, max_steps=max_steps,
                   checkpoint_every=checkpoint_every, checkpoint_path=checkpoint_path, fingerprint=fingerprint,
                   run=run, stability_hint=stability_hint, state_columns=state_columns, memory=memory)
    if sharding is None:
        sharding = run_sharding(None, y0)
    if sharding is None:
        return _drive(sde_of, key, jnp.asarray(y0), observables=observables, **options)
    solving = solving_sharding(sharding)
    y0 = jnp.asarray(y0)
    key, observables = onto_solving_mesh((key, observables), solving)
    with solving_context(solving):
        traj = _drive(_Onto(sde_of, solving), key, jax.device_put(y0, with_leading(solving, y0.ndim)),
                      observables=observables, **options)
    particles = traj.particles
    return traj._replace(particles=jax.device_put(particles, with_leading(sharding, particles.ndim)),
                         run=traj.run.replace(sharding=str(sharding.spec), devices=sharding.num_devices))


def _drive(sde_of, key, y0, *, t0, t1, dt0, solver, observables, ts, stepsize_controller, progress, adjoint,
           max_steps, checkpoint_every, checkpoint_path, fingerprint, run, stability_hint, state_columns,
           memory) -> Trajectory:
    """``drive`` on one device, or inside a sharded run's mesh context with the state's
    sharding already applied."""
    _check_span(t0, t1, dt0)
    if key is None:
        batched = False
    else:
        key, batched = as_keys(key)
    if batched and y0.ndim == 3 and y0.shape[0] != key.shape[0]:
        raise ValueError(f"the start has {y0.shape[0]} replicates for {key.shape[0]} keys")
    if memory is not None:
        check_run_fits(run.family or "drive", memory, y0.shape[-2], key.shape[0] if batched else 1)
    probe = sde_of(key[0] if batched else key)[0]
    jumps = probe.jump is not None or probe.drift is None
    if key is None:
        if jumps or probe.noise_scale is not None:
            raise ValueError("a run with noise or jumps draws from its key: pass a key")
        key = jax.random.key(0)  # an ODE draws nothing
    if jumps and batched:
        y0 = jnp.broadcast_to(y0, (key.shape[0], *y0.shape[-2:]))
    args = y0
    kwargs = dict(t0=t0, t1=t1, dt0=dt0, solver=solver, observables=observables,
                  stepsize_controller=stepsize_controller, progress=progress, adjoint=adjoint, max_steps=max_steps)
    if checkpoint_every is not None or checkpoint_path is not None:
        if checkpoint_every is None or checkpoint_path is None:
            raise ValueError("checkpointing needs both checkpoint_every (steps) and checkpoint_path")
        if not isinstance(stepsize_controller, (type(None), diffrax.ConstantStepSize)):
            raise ValueError("checkpointing needs fixed step sizes")
        traj = _segmented(sde_of, key, y0, args, ts, batched, int(checkpoint_every), checkpoint_path,
                          fingerprint or {}, stability_hint=stability_hint, state_columns=state_columns, **kwargs)
    else:
        if jumps and not _is_fixed(stepsize_controller):
            raise ValueError("an SDE with jumps runs on fixed steps: pass no stepsize_controller")
        if jumps:
            _whole_steps(t0, t1, dt0, "a run with jumps")
        traj, engine = _solve(sde_of, key, y0, args, ts, batched, **kwargs)
        if engine is not None:
            _raise_if_diverged(traj, _Replay(sde_of, engine[1], key, args, batched, engine[0], engine[2]), t0, dt0,
                               stability_hint, state_columns)
        else:
            _raise_if_diverged(traj, None, t0, dt0, stability_hint, state_columns)
    starts, dispersion = _start_info(y0, batched, jumps)
    return traj._replace(run=traj.run.replace(family=run.family, diagnostics_every=run.diagnostics_every,
                                              options=run.options, continuation=run.continuation, starts=starts,
                                              start_dispersion=dispersion))


def _whole_steps(t0: float, t1: float, dt0: float, what: str) -> int:
    n = num_fixed_steps(t0, t1, dt0)
    if abs((t1 - t0) / dt0 - n) > 1e-6:
        raise ValueError(f"{what} needs (t1 - t0) / dt0 to be a whole number of steps, got {(t1 - t0) / dt0:g}")
    return n


class _Replay(eqx.Module):
    """What reports a diverged fixed-step run: its terms, solver, keys, Θ_0, the grid."""

    sde_of: Callable
    solver: object
    key: Array
    args: Array
    batched: bool = eqx.field(static=True)
    grid: object
    diverged_step: Array


def _segmented(sde_of, key, y0, args, ts, batched, every, path, fingerprint, *, t0, t1, dt0, progress,
               stability_hint=None, state_columns=None, **kwargs) -> Trajectory:
    """Segments of ``every`` steps, each followed by a checkpoint; resumes from the file.

    Every segment is the same compiled span (its steps and saves are traced values), and
    the draws depend on the step index alone, so the checkpointed run is the uncut run."""
    if every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of steps, got {every}")
    n = _whole_steps(t0, t1, dt0, "checkpointing")
    probe = sde_of(key[0] if batched else key)[0]
    if every % probe.jump_every:
        raise ValueError(f"checkpoint_every must be a multiple of the {probe.jump_every} steps between jumps")
    if ts is not None and not isinstance(ts, jax.core.Tracer):
        t = np.asarray(ts, np.float64)
        k = (t - t0) / dt0
        if t.ndim != 1 or np.any(np.abs(k - np.rint(k)) > 1e-6):
            raise ValueError("with checkpointing, ts must be increasing times on the step grid t0 + k dt0 in [t0, t1]")
    ks = save_steps(ts, t0, t1, dt0, None, probe.jump_every)
    file = _checkpoint.CheckpointFile(path, dict(fingerprint, t0=t0, t1=t1, dt0=dt0, checkpoint_every=every,
                                                 ts_steps=ks.tolist(), particles_shape=list(y0.shape),
                                                 key=_checkpoint.key_data(key)))
    n_seg = math.ceil(n / every)
    bounds = [(s * every, min((s + 1) * every, n)) for s in range(n_seg)]
    wanted = [ks[(ks > a) & (ks <= b)] if s else ks[ks <= b] for s, (a, b) in enumerate(bounds)]
    pad_to = max(1, max(len(w) for w in wanted))  # one compiled span for every segment
    y, start, obs = y0, 0, {}
    state = file.load()
    if state is not None:
        y, start, obs = jnp.asarray(state.particles, y0.dtype), state.next_segment, state.observables
        if not isinstance(y0, jax.core.Tracer) and isinstance(y0.sharding, NamedSharding):  # split again
            y = jax.device_put(y, y0.sharding)
    show = n >= _PROGRESS_MIN_STEPS if progress is None else progress
    axis = 1 if batched else 0
    with progress_bar(n, bounds[start][0] if start < n_seg else n, show) as bar:
        for s in range(start, n_seg):
            a, b = bounds[s]
            traj, (grid, solver, bad) = _solve(sde_of, key, y, args, None, batched, t0=t0, t1=t1, dt0=dt0,
                                               progress=False, first=a, last=b, ks=wanted[s], pad_to=pad_to, **kwargs)
            rows = {k: np.asarray(v) for k, v in traj.observables.items()}
            for name, values in rows.items():
                obs.setdefault(name, []).extend(np.moveaxis(values, axis, 0))
            if not isinstance(traj.diverged_at, jax.core.Tracer) and not np.all(np.isinf(np.asarray(traj.diverged_at))):
                done = {k: jnp.asarray(np.moveaxis(np.stack(v), 0, axis)) for k, v in obs.items() if v}
                n_rows = len(next(iter(obs.values()))) if obs else 0
                so_far = traj._replace(ts=jnp.asarray(_step_times(ks[:n_rows], t0, t1, dt0), y0.dtype),
                                       observables=done)
                _raise_if_diverged(so_far, _Replay(sde_of, solver, key, args, batched, grid, bad), t0, dt0,
                                   stability_hint, state_columns,
                                   f"; the checkpoint {path} keeps the state after segment {s} (step {a})")
            y = traj.particles
            file.save(y, s + 1, obs)
            bar.update(b - a)
    observables = {k: jnp.asarray(np.moveaxis(np.stack(v), 0, axis)) for k, v in obs.items()}
    solver = kwargs.get("solver")
    run = _grid_run(probe, solver, t0, t1, dt0, "ConstantStepSize").replace(checkpoint_every=every)
    return Trajectory(ts=jnp.asarray(_step_times(ks, t0, t1, dt0), y0.dtype), particles=y, observables=observables,
                      num_steps=jnp.asarray(n), run=run)


def _raise_if_diverged(traj: Trajectory, replay: _Replay | None, t0: float, dt0: float, hint, columns=None,
                       kept: str = "") -> None:
    """``DivergenceError`` if the (concrete) trajectory stopped at a non-finite state.

    The engine stopped at the last finite state Θ_last (the trajectory's particles); the
    bad step is taken once more from it (``one_step``: the same draws) to see which columns
    went non-finite, and the drift and noise are evaluated at Θ_last to say which went
    non-finite first; ``hint(Θ_last)`` says how the step compares with the drift's curvature.
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
    y_last = traj.particles[r] if at.size > 1 and traj.particles.ndim == 3 else traj.particles
    partial = traj._replace(ts=traj.ts[keep], observables={k: v[..., keep] for k, v in traj.observables.items()},
                            particles=y_last)
    if replay is None:  # adaptive steps: the step before is not known
        sde, args, t_last, y_bad, y_last = None, None, t, y_last, None
        quantity, cols, what, models_fault = _what_went_nonfinite(sde, args, t_last, y_last, y_bad, columns)
    else:
        key = replay.key[r] if replay.batched else replay.key
        args = replay.args[r] if replay.batched and replay.args.ndim == 3 else replay.args
        sde = replay.sde_of(key)[0]
        grid = replay.grid
        k_bad = int(np.atleast_1d(np.asarray(replay.diverged_step))[r])
        y_bad = one_step(replay.sde_of, replay.solver, key, y_last, args, grid, jnp.asarray(k_bad, jnp.int32))
        quantity, cols, what, models_fault = _what_went_nonfinite(sde, args, float(grid.time(k_bad)), y_last, y_bad,
                                                                  columns)
    who = f" in replicate {r}" if at.size > 1 else ""
    if models_fault:
        advice = "Check the unit and the prior where the particles were (the error's .trajectory.particles)."
    elif hint is not None:
        advice = hint(None if replay is None else y_last)
    else:
        advice = f"Take a smaller step than dt0 = {dt0:g}."
    raise DivergenceError(f"the particle state became non-finite{who} at t = {t:.6g} (step {step} of dt0 = {dt0:g}); "
                          f"the run stopped there and the error's .trajectory holds the saves before it and the last "
                          f"finite state{kept}. {what} {advice}", t, step, partial, r if at.size > 1 else None,
                          quantity, cols)


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


def _start_info(y0, batched: bool, broadcast: bool) -> tuple[str | None, float | None]:
    """(starts, start_dispersion) of ``Run``: one shared cloud, or per-replicate clouds and
    how differently they are distributed; (None, None) for one run or under tracing."""
    if not batched:
        return None, None
    if y0.ndim == 2:
        return "shared", None
    if isinstance(y0, jax.core.Tracer):
        return None, None
    if broadcast and bool(jnp.all(y0 == y0[:1])):
        return "shared", None
    return "per-replicate", float(start_dispersion(y0))


def _grid_run(probe: ParticleSDE, solver, t0, t1, dt0, controller: str) -> Run:
    """The grid and solver part of a fixed-step run's ``Run``."""
    return Run(solver=None if probe.drift is None else solver, controller=controller, fixed_step=controller != "StepTo",
               t0=float(t0), t1=float(t1), dt0=float(dt0), jump_every=probe.jump_every if probe.jump is not None else None)
