"""Segmented particle-SDE solves that write a checkpoint after every segment and resume.

Nothing is lost when a long run is killed: the state after each segment of
``checkpoint_every`` steps goes to one .npz (written to a temporary file, then renamed),
with a fingerprint of the run. Rerunning the same call resumes from the last segment; a
file that cannot be read, or that another run wrote, raises ``ValueError``.
"""

from __future__ import annotations

import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from ._core import Trajectory, num_fixed_steps, solve_replicates

__all__ = ["solve_checkpointed"]

_FORMAT = "mfsde-checkpoint-1"


def _key_data(key) -> list:
    return np.asarray(jax.random.key_data(key)).tolist()


def _load(path: pathlib.Path, fingerprint: dict) -> dict | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
        stored = json.loads(str(data.pop("fingerprint")))
    except Exception as e:  # any unreadable file is a corrupt checkpoint
        raise ValueError(f"checkpoint {path} is corrupt or not an mfsde checkpoint ({type(e).__name__}: {e}); "
                         "remove it to start the run afresh") from None
    if stored.get("format") != _FORMAT:
        raise ValueError(f"checkpoint {path} has format {stored.get('format')!r}, expected {_FORMAT!r}")
    diff = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
    if diff:
        raise ValueError(f"checkpoint {path} was written by a different run (differs in: {', '.join(diff)}); "
                         "refusing to resume from it")
    if "particles" not in data or "next_segment" not in data:
        raise ValueError(f"checkpoint {path} is corrupt: missing fields")
    return data


def _save(path: pathlib.Path, fingerprint: dict, particles, next_segment: int, obs: dict[str, list]) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    arrays = {f"obs_{k}": np.stack(v) if v else np.zeros((0,)) for k, v in obs.items()}
    np.savez(tmp, particles=np.asarray(particles), next_segment=np.asarray(next_segment),
             fingerprint=np.asarray(json.dumps(fingerprint)), **arrays)
    os.replace(tmp, path)


def solve_checkpointed(sde, key, particles0, *, ts, batched: bool, checkpoint_every: int, checkpoint_path,
                       fingerprint: dict, t0: float, t1: float, dt0: float, progress=None, **kwargs) -> Trajectory:
    """Solve in segments of ``checkpoint_every`` fixed steps, checkpointing after each.

    Segment s runs from t0 + s·K·dt0 with Brownian key ``fold_in(key, s)``.
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be a positive number of steps, got {checkpoint_every}")
    n_steps = num_fixed_steps(t0, t1, dt0)
    if abs((t1 - t0) / dt0 - n_steps) > 1e-6:
        raise ValueError("checkpointing needs (t1 - t0) / dt0 to be a whole number of steps")
    ts = np.linspace(t0, t1, min(101, n_steps + 1)) if ts is None else np.asarray(ts, np.float64)
    ks = np.rint((ts - t0) / dt0).astype(np.int64)
    if ts.ndim != 1 or np.any(np.abs((ts - t0) / dt0 - ks) > 1e-6) or np.any(ks < 0) or np.any(ks > n_steps) \
            or np.any(np.diff(ks) <= 0):
        raise ValueError("with checkpointing, ts must be increasing times on the step grid t0 + k dt0 in [t0, t1]")
    path = pathlib.Path(checkpoint_path)
    fingerprint = dict(fingerprint, format=_FORMAT, t0=t0, t1=t1, dt0=dt0, checkpoint_every=checkpoint_every,
                       ts_steps=ks.tolist(), particles_shape=list(particles0.shape), key=_key_data(key))

    n_seg = math.ceil(n_steps / checkpoint_every)
    state = _load(path, fingerprint)
    if state is None:
        y, start, obs = particles0, 0, {}
    else:
        y = jnp.asarray(state["particles"], particles0.dtype)
        start = int(state["next_segment"])
        obs = {k[4:]: list(v) for k, v in state.items() if k.startswith("obs_")}
    show = n_steps >= 5000 if progress is None else progress
    bar = tqdm.tqdm(total=n_seg, initial=start, unit="segment", disable=not show)
    for s in range(start, n_seg):
        a, b = s * checkpoint_every, min((s + 1) * checkpoint_every, n_steps)
        wanted = ks[(ks > a) & (ks <= b)] if s else ks[ks <= b]
        seg_ks = np.union1d(wanted, [b])
        seg_key = jax.vmap(lambda k: jax.random.fold_in(k, s))(key) if batched else jax.random.fold_in(key, s)
        traj = solve_replicates(sde, seg_key, y, t0 + seg_ks * dt0, batched,
                                **dict(kwargs, t0=t0 + a * dt0, t1=t0 + b * dt0, dt0=dt0, progress=False))
        keep = np.isin(seg_ks, wanted)
        axis = 1 if batched else 0
        for name, values in traj.observables.items():
            rows = np.compress(keep, np.asarray(values), axis=axis)
            obs.setdefault(name, []).extend(np.moveaxis(rows, axis, 0))
        y = traj.particles
        _save(path, fingerprint, y, s + 1, obs)
        bar.update(1)
    bar.close()
    axis = 1 if batched else 0
    observables = {k: jnp.asarray(np.moveaxis(np.stack(v), 0, axis)) for k, v in obs.items()}
    info = (("solver", type(kwargs["solver"]).__name__), ("dt0", dt0), ("t0", t0), ("t1", t1),
            ("controller", "ConstantStepSize"), ("checkpoint_every", checkpoint_every))
    return Trajectory(ts=jnp.asarray(ts, particles0.dtype), particles=y, observables=observables,
                      num_steps=jnp.asarray(n_steps), info=info)
