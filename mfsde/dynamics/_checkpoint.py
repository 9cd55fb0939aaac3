"""Checkpoint files of segmented runs: one .npz per run, written atomically, fingerprinted.

Nothing is lost when a long run is killed: ``drive`` writes the state after each segment
(to a temporary file, then renamed), with a fingerprint of the run. Rerunning the same call
resumes from the last segment; a file that cannot be read, or that another run wrote,
raises ``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import NamedTuple

import jax
import numpy as np

__all__ = ["CheckpointFile", "data_fingerprint", "key_data"]

# 2: diffrax segments are solved on their own clock [0, (b − a) dt0] (format 1: on [t0 + a dt0, t0 + b dt0])
_FORMAT = "mfsde-checkpoint-3"  # 3: noise drawn by step index (the one engine)


def key_data(key) -> list:
    """The key's raw words as a list (``None`` for none), for the fingerprint."""
    return None if key is None else np.asarray(jax.random.key_data(key)).tolist()


def data_fingerprint(fe) -> dict:
    """What identifies a free energy in a fingerprint: its data's digest, β, D and sites."""
    return dict(data_sha256=array_digest(fe.x, fe.y), beta=repr(float(fe.beta)), dim=fe.dim, sites=list(fe.unit.site_names))


def array_digest(*arrays) -> str:
    """sha256 of the arrays' bytes, in order (the data, a fixed point's output, a pool of draws)."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(np.ascontiguousarray(np.asarray(a)).tobytes())
    return digest.hexdigest()


class CheckpointState(NamedTuple):
    particles: np.ndarray
    next_segment: int
    observables: dict[str, list]


class CheckpointFile:
    """The checkpoint at ``path`` of the run identified by ``fingerprint``."""

    def __init__(self, path, fingerprint: dict):
        self.path = pathlib.Path(path)
        self.fingerprint = dict(fingerprint, format=_FORMAT)

    def load(self) -> CheckpointState | None:
        """The stored state, ``None`` without a file; ValueError if it is corrupt or another run's."""
        path = self.path
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
        # through JSON, so that tuples and lists compare equal
        fingerprint = json.loads(json.dumps(self.fingerprint))
        diff = sorted(k for k in set(stored) | set(fingerprint) if stored.get(k) != fingerprint.get(k))
        if diff:
            raise ValueError(f"checkpoint {path} was written by a different run (differs in: {', '.join(diff)}); "
                             "refusing to resume from it")
        if "particles" not in data or "next_segment" not in data:
            raise ValueError(f"checkpoint {path} is corrupt: missing fields")
        obs = {k[4:]: list(v) for k, v in data.items() if k.startswith("obs_")}
        return CheckpointState(data["particles"], int(data["next_segment"]), obs)

    def save(self, particles, next_segment: int, obs: dict[str, list]) -> None:
        """Write the state after ``next_segment`` segments: to a temporary file, flushed to
        disk, then renamed over the old one, so that a kill or a full disk at any point
        leaves the previous checkpoint whole (a failed write removes its temporary file
        and raises ``OSError`` saying so).

        Particles split over processes (``jax.distributed``) are gathered to every process
        and process 0 writes the one file; every process reads it on resume (a shared
        filesystem), and the driver splits it over the devices again."""
        if isinstance(particles, jax.Array) and not particles.is_fully_addressable:
            from jax.experimental import multihost_utils

            particles = multihost_utils.process_allgather(particles, tiled=True)
            try:
                if jax.process_index() == 0:
                    self._write(particles, next_segment, obs)
            finally:  # nobody reads the file (a resume) before it is whole, or hangs on a failed write
                multihost_utils.sync_global_devices(f"mfsde checkpoint {self.path} {next_segment}")
            return
        self._write(particles, next_segment, obs)

    def _write(self, particles, next_segment: int, obs: dict[str, list]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        arrays = {f"obs_{k}": np.stack(v) if v else np.zeros((0,)) for k, v in obs.items()}
        try:
            with open(tmp, "wb") as f:
                np.savez(f, particles=np.asarray(particles), next_segment=np.asarray(next_segment),
                         fingerprint=np.asarray(json.dumps(self.fingerprint)), **arrays)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)
            kept = (f"the previous checkpoint {self.path} is intact" if self.path.exists()
                    else "no checkpoint was kept")
            raise OSError(e.errno, f"could not write the checkpoint after segment {next_segment} to {tmp} "
                                   f"({e.strerror or e}); {kept}, and rerunning resumes from it") from e
        os.replace(tmp, self.path)
