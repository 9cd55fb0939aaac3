"""A checkpointed run: segments of the same compiled span, each followed by a checkpoint."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from . import _checkpoint
from .._trajectory import Trajectory
from ._divergence_report import Replay, raise_if_diverged
from ._engine import progress_bar
from ._saves import save_steps, step_times, whole_steps
from ._solve import PROGRESS_MIN_STEPS, grid_run, solve_span

__all__ = ["segmented_run"]


def segmented_run(sde_of, key, y0, args, ts, batched, every, path, fingerprint, *, t0, t1, dt0, progress,
               stability_hint=None, state_columns=None, **kwargs) -> Trajectory:
    """Segments of ``every`` steps, each followed by a checkpoint; resumes from the file.

    Every segment is the same compiled span (its steps and saves are traced values), and
    the draws depend on the step index alone, so the checkpointed run is the uncut run."""
    if every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of steps, got {every}")
    n = whole_steps(t0, t1, dt0, "checkpointing")
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
    show = n >= PROGRESS_MIN_STEPS if progress is None else progress
    axis = 1 if batched else 0
    with progress_bar(n, bounds[start][0] if start < n_seg else n, show) as bar:
        for s in range(start, n_seg):
            a, b = bounds[s]
            traj, (grid, solver, bad) = solve_span(sde_of, key, y, args, None, batched, t0=t0, t1=t1, dt0=dt0,
                                               progress=False, first=a, last=b, ks=wanted[s], pad_to=pad_to, **kwargs)
            rows = {k: np.asarray(v) for k, v in traj.observables.items()}
            for name, values in rows.items():
                obs.setdefault(name, []).extend(np.moveaxis(values, axis, 0))
            if not isinstance(traj.diverged_at, jax.core.Tracer) and not np.all(np.isinf(np.asarray(traj.diverged_at))):
                done = {k: jnp.asarray(np.moveaxis(np.stack(v), 0, axis)) for k, v in obs.items() if v}
                n_rows = len(next(iter(obs.values()))) if obs else 0
                so_far = traj._replace(ts=jnp.asarray(step_times(ks[:n_rows], t0, t1, dt0), y0.dtype),
                                       observables=done)
                raise_if_diverged(so_far, Replay(sde_of, solver, key, args, batched, grid, bad), t0, dt0,
                                   stability_hint, state_columns,
                                   f"; the checkpoint {path} keeps the state after segment {s} (step {a})")
            y = traj.particles
            file.save(y, s + 1, obs)
            bar.update(b - a)
    observables = {k: jnp.asarray(np.moveaxis(np.stack(v), 0, axis)) for k, v in obs.items()}
    solver = kwargs.get("solver")
    run = grid_run(probe, solver, t0, t1, dt0, "ConstantStepSize").replace(checkpoint_every=every)
    return Trajectory(ts=jnp.asarray(step_times(ks, t0, t1, dt0), y0.dtype), particles=y, observables=observables,
                      num_steps=jnp.asarray(n), run=run)
