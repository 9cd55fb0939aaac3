"""JAX's persistent compilation cache, on by default for mfsde's programs.

A compiled program is stored on disk keyed by its HLO, the compiler flags and the jax
version, so a second process (a second ``make demo``, the test lanes, a tutorial run again)
loads what an earlier one compiled instead of compiling it again. The folder is
``$MFSDE_COMPILATION_CACHE`` if set, else ``$XDG_CACHE_HOME/mfsde/jax`` (``~/.cache/mfsde/jax``);
``MFSDE_COMPILATION_CACHE=0`` (or ``off``) leaves JAX's own setting alone, and so does a
cache folder the caller configured already.

A run over several processes (``jax.distributed``, initialised before ``import mfsde``, as
JAX requires: importing BlackJAX starts the backend) compiles without it: a multi-process
executable read back from the cache can wait forever in its first collective (seen on CPU
with gloo; openxla/xla#18286 is the GPU form).
"""

from __future__ import annotations

import os
import pathlib

import jax
from jax._src import monitoring
from jax._src.dispatch import JAXPR_TO_MLIR_MODULE_EVENT as _LOWERING_EVENT

__all__ = ["enable_compilation_cache", "new_programs", "CACHE_ENV"]

CACHE_ENV = "MFSDE_COMPILATION_CACHE"
# Programs that compile faster than this are not worth a disk entry (JAX's default is 1 s;
# most of mfsde's small programs take 0.1-1 s on 2 cores, which is what a test pays).
_MIN_COMPILE_SECONDS = 0.02


def enable_compilation_cache(path: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Point JAX's persistent compilation cache at ``path`` (default as the module docstring
    says) and return the folder; None when it is switched off, configured by the caller, or the
    process is one of several (``jax.distributed``).
    ``import mfsde`` calls it once with no argument.

    Examples:
        >>> import tempfile, mfsde
        >>> folder = mfsde.enable_compilation_cache(tempfile.mkdtemp())   # compiled programs go there
        >>> folder.is_dir()
        True
        >>> mfsde.enable_compilation_cache("off") is None                 # leaves JAX's setting alone
        True
    """
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a folder (str or os.PathLike), 'off', or None, got {type(path).__name__}")
    setting = os.environ.get(CACHE_ENV, "") if path is None else str(path)
    if setting.strip().lower() in ("0", "off", "false", "no") or jax.distributed.is_initialized():
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


class new_programs:
    """Context: the names of the programs JAX lowers inside it (a list, filled as it runs).

    Every new compiled program is lowered first, whether XLA then compiles it or the
    persistent cache supplies it, so an empty list means that nothing in the block was
    traced and compiled afresh: what a sweep over values should cost. ::

        with mfsde.new_programs() as made:
            mfsde.langevin(fe, key, particles, t1=25.0, dt0=0.04)
        assert not made, made

    Examples:
        >>> import jax, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 32)
        >>> run = lambda fe, dt0: mfsde.langevin(fe, jax.random.key(2), p0, t1=4.0, dt0=dt0, progress=False)
        >>> _ = run(fe, 0.04)                                        # compiles
        >>> with mfsde.new_programs() as made:
        ...     _ = run(lg.free_energy(num_data=64, dim=2, beta=8.0), 0.025)   # other beta, dt0: values
        >>> made
        []
    """

    def __init__(self):
        self.names: list[str] = []

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event == _LOWERING_EVENT:
            self.names.append(str(kwargs.get("fun_name", "?")))

    def __enter__(self) -> list[str]:
        monitoring.register_event_duration_secs_listener(self._listen)
        return self.names

    def __exit__(self, *exc) -> None:
        monitoring.unregister_event_duration_listener(self._listen)
