"""JAX's persistent compilation cache, on by default for mfsde's programs.

A compiled program is stored on disk keyed by its HLO, the compiler flags and the jax
version, so a second process (a second ``make demo``, the test lanes, a tutorial run again)
loads what an earlier one compiled instead of compiling it again. The folder is
``$MFSDE_COMPILATION_CACHE`` if set, else ``$XDG_CACHE_HOME/mfsde/jax`` (``~/.cache/mfsde/jax``);
``MFSDE_COMPILATION_CACHE=0`` (or ``off``) leaves JAX's own setting alone, and so does a
cache folder the caller configured already.
"""

from __future__ import annotations

import os
import pathlib

import jax

__all__ = ["enable_compilation_cache", "CACHE_ENV"]

CACHE_ENV = "MFSDE_COMPILATION_CACHE"
# Programs that compile faster than this are not worth a disk entry (JAX's default is 1 s;
# most of mfsde's small programs take 0.1-1 s on 2 cores, which is what a test pays).
_MIN_COMPILE_SECONDS = 0.1


def enable_compilation_cache(path: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Point JAX's persistent compilation cache at ``path`` (default as the module docstring
    says) and return the folder; None when it is switched off or configured by the caller."""
    setting = os.environ.get(CACHE_ENV, "") if path is None else str(path)
    if setting.strip().lower() in ("0", "off", "false", "no"):
        return None
    if path is None and not setting and jax.config.jax_compilation_cache_dir:
        return None
    if setting:
        folder = pathlib.Path(setting).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
        folder = pathlib.Path(base) / "mfsde" / "jax"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: run without the cache
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", _MIN_COMPILE_SECONDS)
    return folder
