"""A run's memory, estimated from its shapes before any work, against what the device holds.

A run that needs more than the device has is refused with ``MemoryError`` before anything
is compiled or allocated, with the largest particle count and replicate count that fit,
instead of being killed by the operating system halfway. The estimate is a lower bound
(the arrays no schedule can avoid: a few copies of the state, and the (N, chunk) unit
outputs and cotangents of one data chunk, per replicate), so a refusal is always right;
a run that passes may still need more, by what its unit keeps alive per (particle, data
point) pair.

The limit is the device's free memory (``memory_stats``; on CPU the host's MemAvailable),
or ``MFSDE_MEMORY_LIMIT`` bytes when that environment variable is set.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax

__all__ = ["available_bytes", "check_run_fits", "particle_run_bytes"]

LIMIT_ENV = "MFSDE_MEMORY_LIMIT"
# copies of the (N, D) state a fixed-step solve keeps alive at least: the state, the drift,
# the noise increment, the run's start Θ_0 (the drift's args) and the next state
_STATE_COPIES = 5


def available_bytes() -> int | None:
    """Bytes a run may use: ``MFSDE_MEMORY_LIMIT``, else the default device's free memory
    (``bytes_limit − bytes_in_use``), else on CPU the host's MemAvailable; None if unknown."""
    env = os.environ.get(LIMIT_ENV)
    if env:
        try:
            return int(float(env))
        except ValueError:
            raise ValueError(f"{LIMIT_ENV} must be a number of bytes, got {env!r}") from None
    device = jax.devices()[0]
    try:
        stats = device.memory_stats()
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    except Exception:  # backends without memory_stats (CPU)
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def particle_run_bytes(fe, state_width: int, extra: Callable[[int], int] | None = None) -> Callable[[int, int], int]:
    """``bytes(N, R)``, the lower bound of a run of R replicates of N particles of the free
    energy ``fe`` with state width ``state_width``:

        R · [5 · N · state_width + 2 · N · chunk(N)] · itemsize (+ R · extra(N))

    (``_STATE_COPIES`` state copies, and one data chunk's (N, chunk) unit outputs and their
    cotangents; ``chunk(N) = fe.chunk_for(N)``, all P points without chunking).
    """
    itemsize = fe.x.dtype.itemsize

    def run_bytes(n: int, r: int) -> int:
        per = (_STATE_COPIES * n * state_width + 2 * n * fe.chunk_for(n)) * itemsize
        return r * (per + (extra(n) if extra is not None else 0))

    return run_bytes


def _largest(fits: Callable[[int], bool], hi: int) -> int:
    """The largest m in [0, hi] with fits(m) (fits is monotone), by bisection."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _gib(b: float) -> str:
    return f"{b / 2**30:.3g} GiB" if b >= 2**30 else f"{b / 2**20:.3g} MiB"


def check_run_fits(what: str, run_bytes: Callable[[int, int], int], n: int, r: int = 1, replicates: str = "replicates",
                   also: str = "") -> None:
    """``MemoryError`` if a run of ``r`` replicates of ``n`` particles needs more than
    ``available_bytes()``, naming the largest N (at r replicates) and R (at n) that fit;
    ``replicates`` names R (e.g. "chains"), ``also`` adds the family's own remedies."""
    limit = available_bytes()
    need = run_bytes(n, r)
    if limit is None or need <= limit:
        return
    n_fit = _largest(lambda m: run_bytes(m, r) <= limit, n)
    r_fit = _largest(lambda m: run_bytes(n, m) <= limit, r)
    options = [f"num particles <= {n_fit}" + (f" with {r} {replicates}" if r > 1 else "")] if n_fit >= 2 else []
    if r > 1 and r_fit >= 1:
        options.append(f"at most {r_fit} {replicates} of {n} particles")
    fix = (f"the largest that fits: {' or '.join(options)}" if options else "not even 2 particles fit")
    source = f"{LIMIT_ENV}" if os.environ.get(LIMIT_ENV) else "the device's free memory"
    raise MemoryError(f"{what} with {n} particles{f' x {r} {replicates}' if r > 1 else ''} needs at least "
                      f"{_gib(need)}, more than the {_gib(limit)} available ({source}); {fix}. {also}A smaller "
                      "chunk_size of the FreeEnergy lowers the (particles x data chunk) part.")
