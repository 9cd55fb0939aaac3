"""One span of a run on one device: the fixed-step engine, or diffrax's adaptive solve."""

from __future__ import annotations

import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._trajectory import Run, Trajectory
from ._engine import DiagonalDiffusion, SaveGrid, levy_area, num_fixed_steps, progress_bar, run_span, step_grid
from ._saves import check_span, grid_times, is_fixed_grid, save_steps, save_times, step_times
from ._sde import FixedSDE, ParticleSDE

__all__ = ["PROGRESS_MIN_STEPS", "solve", "solve_span", "grid_run"]

# Runs of at least this many steps show a progress bar unless progress=False.
PROGRESS_MIN_STEPS = 5000


# Adaptive (ODE) solves may take this many times the steps t1/dt0 suggests.
_ADAPTIVE_STEP_FACTOR = 64


class _NonFinite(eqx.Module):
    # diffrax event of an adaptive solve: stop at the first step whose state is not finite
    def __call__(self, t, y, args, **kwargs):
        return ~jnp.all(jnp.isfinite(y))


def solve(sde: ParticleSDE, key: PRNGKeyArray, y0: Float[Array, "n d"], *, t0: float, t1: float, dt0: float,
          solver: diffrax.AbstractSolver, observables: Callable, ts: Array | None = None,
          stepsize_controller: diffrax.AbstractStepSizeController | None = None, progress: bool | None = None,
          adjoint: diffrax.AbstractAdjoint | None = None, max_steps: int | None = None, args=None) -> Trajectory:
    """One run of a particle SDE, saving ``observables(t, Θ, args) -> dict`` at ``ts``
    (``args`` default Θ_0): ``drive`` for one key, without checkpoints or a divergence
    report (``Trajectory.diverged_at`` says when a run went non-finite)."""
    check_span(float(t0), float(t1), float(dt0))
    y0 = jnp.asarray(y0)
    return solve_span(FixedSDE(sde), key, y0, y0 if args is None else args, ts, False, t0=float(t0), t1=float(t1),
                  dt0=float(dt0), solver=solver, observables=observables, stepsize_controller=stepsize_controller,
                  progress=progress, adjoint=adjoint, max_steps=max_steps)[0]


def solve_span(sde_of, key, y0, args, ts, batched, *, t0, t1, dt0, solver, observables, stepsize_controller, progress,
           adjoint, max_steps, first=0, last=None, ks=None, pad_to=None):
    """(trajectory of steps first .. last − 1 saved at step indices ``ks``, the step grid);
    an adaptive controller goes to ``_adaptive``."""
    if not is_fixed_grid(stepsize_controller):
        return _adaptive(sde_of, key, y0, args, ts, batched, t0=t0, t1=t1, dt0=dt0, solver=solver,
                         observables=observables, stepsize_controller=stepsize_controller, progress=progress,
                         adjoint=adjoint, max_steps=max_steps), None
    probe = sde_of(key[0] if batched else key)[0]
    times = grid_times(stepsize_controller)
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
    show = (last - first >= PROGRESS_MIN_STEPS) if progress is None else bool(progress)
    if show:
        with progress_bar(last, first):
            out = run_span(sde_of, solver, observables, key, y0, args, grid, saves, batched, True)
    else:
        out = run_span(sde_of, solver, observables, key, y0, args, grid, saves, batched, False)
    obs = out.observables
    if not isinstance(steps, jax.core.Tracer):
        obs = {k: v[..., : len(steps)] for k, v in obs.items()}
        ts_out = jnp.asarray(step_times(steps, t0, t1, dt0, stepsize_controller), y0.dtype)
    else:
        ts_out = grid.time(steps)
    bad = out.diverged_step
    diverged_at = jnp.where(bad >= 0, grid.time(bad + 1), jnp.inf)
    run = grid_run(probe, solver, t0, t1, dt0, "StepTo" if times is not None else "ConstantStepSize")
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
    show = n >= PROGRESS_MIN_STEPS if progress is None else progress
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


def grid_run(probe: ParticleSDE, solver, t0, t1, dt0, controller: str) -> Run:
    """The grid and solver part of a fixed-step run's ``Run``."""
    return Run(solver=None if probe.drift is None else solver, controller=controller, fixed_step=controller != "StepTo",
               t0=float(t0), t1=float(t1), dt0=float(dt0), jump_every=probe.jump_every if probe.jump is not None else None)
