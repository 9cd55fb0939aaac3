"""The one driver every mean-field dynamics family runs through: ``drive``.

A family declares a ``ParticleSDE`` (``_sde``): dΘ = b(t, Θ) dt + g(t) dB on its state
(an (N, D) array, or a pytree of per-particle leaves carried as rows, ``_state``), with
additive noise of scale g(t) (or none: an ODE), and optionally a discrete
``jump(key, t, Θ) -> Θ`` every k steps (a resampling or birth–death step; with no drift
the chain is the jumps alone, as SGD), and its observables. ``drive`` owns the rest, each
in its own module: the entry checks of keys and replicates (here), the save grid
(``_saves``), one span of the run (``_solve``: the compiled loop of ``_engine``, values
traced and structure static, or diffrax's adaptive solve for ODEs at β = ∞),
checkpoint segments (``_segments``, files in ``_checkpoint``), the divergence report
(``_divergence_report``), sharding (``_sharding``) and the ``Trajectory``.
"""

from __future__ import annotations

from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jaxtyping import Array, Float

from .._keys import as_keys
from .._memory import check_run_fits
from .._trajectory import Run, Trajectory
from ._divergence_report import DivergenceError, Replay, raise_if_diverged
from ._engine import num_fixed_steps
from ._saves import check_span, is_fixed_grid, save_times, whole_steps
from ._sde import FixedSDE, ParticleSDE
from ._segments import segmented_run
from ._sharding import Constrained, onto_solving_mesh, run_sharding, solving_context, solving_sharding, with_leading
from ._solve import solve, solve_span
from ._starts import start_dispersion
from ._state import RowDrift, RowJump, RowLayout, RowNoise, RowObservables, is_state_tree

__all__ = ["ParticleSDE", "Run", "Trajectory", "DivergenceError", "solve", "drive", "save_times", "num_fixed_steps"]


def _in_rows(sde: ParticleSDE, layout: RowLayout) -> ParticleSDE:
    # a family's terms over its state pytree, as terms over the driver's rows
    return ParticleSDE(None if sde.drift is None else RowDrift(sde.drift, layout),
                       None if sde.noise_scale is None else RowNoise(sde.noise_scale, layout),
                       None if sde.jump is None else RowJump(sde.jump, layout), sde.jump_every)


class _RowsOf(eqx.Module):
    # sde_of of a family with a state pytree: its terms and observables over the rows
    sde_of: Callable
    layout: RowLayout

    def __call__(self, key):
        sde, noise_key, *own = self.sde_of(key)
        return (_in_rows(sde, self.layout), noise_key, *(RowObservables(o, self.layout) for o in own))


class _UnravelledHint(eqx.Module):
    # the stability hint of a family with a state pytree, given the last finite rows
    hint: Callable
    layout: RowLayout

    def __call__(self, last):
        return self.hint(None if last is None else self.layout.unravel(jnp.asarray(last)))


class _Onto(eqx.Module):
    # sde_of of a sharded run: drift and jump held to the per-run particle sharding
    sde_of: Callable
    sharding: NamedSharding = eqx.field(static=True)

    def __call__(self, key):
        sde, *rest = onto_solving_mesh(self.sde_of(key), self.sharding)
        s = self.sharding
        return (ParticleSDE(None if sde.drift is None else Constrained(sde.drift, s, 1), sde.noise_scale,
                            None if sde.jump is None else Constrained(sde.jump, s, 2), sde.jump_every), *rest)


def drive(sde, key, y0: Float[Array, "n d"] | object, *, t0: float, t1: float, dt0: float, solver=None,
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
        y0: the start Θ_0: an (N, D) array (or (R, N, D)), or a state pytree whose every
            leaf has the particle axis first, (N, ...) (with R keys also (R, N, ...), one
            start per replicate), e.g. a NamedTuple of positions, weights and counters.
            Then the drift, noise scale (a scalar or a pytree of per-leaf scales), jump,
            observables and stability hint take and return that pytree, the driver
            carries it as the rows of one (N, W) array (``_state.RowLayout``), and the
            trajectory's particles are the final pytree.
        t0, t1, dt0, solver, ts, stepsize_controller, adjoint, max_steps: as ``solve``.
        observables: ``observables(t, Θ, Θ_0) -> dict`` of scalars.
        checkpoint_every, checkpoint_path: run in segments of this many fixed steps and write
            the state after each to ``checkpoint_path`` (an .npz, replaced atomically); a
            rerun resumes from it; a file that is unreadable or was written by a different
            run (``fingerprint``, sizes, times, key) raises ``ValueError``. Every draw
            depends on the step index alone (``_engine``), so the checkpointed run, resumed
            or not, is the unsegmented run exactly.
        fingerprint: what identifies the run's data for checkpoints (``data_fingerprint``:
            the data, β, D); the driver adds ``run``'s family and options.
        run: the family's part of the trajectory's ``Run`` (family, diagnostics_every,
            options, continuation); the driver fills in the grid, the solver, the starts
            and the sharding.
        stability_hint: ``(Θ_last) -> str``, what the family knows about its step's
            stability at the last finite state (``None`` when it is not known: adaptive
            steps), e.g. dt0 against the drift's largest curvature, for the divergence message.
        state_columns: ((name, width), ...) naming an array state's column groups (e.g.
            theta and a control cost), for the divergence message; default one group,
            "theta"; a state pytree's are its leaves' names.
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
    if is_state_tree(y0):
        keys, batched = (None, False) if key is None else as_keys(key)
        layout = RowLayout.of(y0, keys.shape[0] if batched else None)
        y0, observables, state_columns = layout.ravel(y0), RowObservables(observables, layout), layout.columns()
        sde = _in_rows(sde, layout) if isinstance(sde, ParticleSDE) else _RowsOf(sde, layout)
        if stability_hint is not None:
            stability_hint = _UnravelledHint(stability_hint, layout)
        try:
            traj = drive(sde, key, y0, t0=t0, t1=t1, dt0=dt0, solver=solver, observables=observables, ts=ts,
                         stepsize_controller=stepsize_controller, progress=progress, adjoint=adjoint,
                         max_steps=max_steps, checkpoint_every=checkpoint_every, checkpoint_path=checkpoint_path,
                         fingerprint=fingerprint, run=run, stability_hint=stability_hint, state_columns=state_columns,
                         memory=memory, sharding=sharding)
        except DivergenceError as e:
            e.trajectory = e.trajectory._replace(particles=layout.unravel(e.trajectory.particles))
            raise
        return traj._replace(particles=layout.unravel(traj.particles))
    sde_of = FixedSDE(sde) if isinstance(sde, ParticleSDE) else sde
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
    check_span(t0, t1, dt0)
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
        traj = segmented_run(sde_of, key, y0, args, ts, batched, int(checkpoint_every), checkpoint_path,
                          dict(fingerprint or {}, **run.fingerprint()), stability_hint=stability_hint, state_columns=state_columns, **kwargs)
    else:
        if jumps and not is_fixed_grid(stepsize_controller):
            raise ValueError("an SDE with jumps runs on fixed steps: pass no stepsize_controller")
        if jumps:
            whole_steps(t0, t1, dt0, "a run with jumps")
        traj, engine = solve_span(sde_of, key, y0, args, ts, batched, **kwargs)
        if engine is not None:
            raise_if_diverged(traj, Replay(sde_of, engine[1], key, args, batched, engine[0], engine[2]), t0, dt0,
                               stability_hint, state_columns)
        else:
            raise_if_diverged(traj, None, t0, dt0, stability_hint, state_columns)
    starts, dispersion = _start_info(y0, batched, jumps)
    return traj._replace(run=traj.run.replace(family=run.family, diagnostics_every=run.diagnostics_every,
                                              options=run.options, continuation=run.continuation, starts=starts,
                                              start_dispersion=dispersion))


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
