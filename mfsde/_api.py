"""The public signature convention: ``(fe, key, init, *, options)``, ``num_*`` for counts.

Names that code outside the project already calls keep working: ``renamed`` maps an old
keyword onto its new name, with a ``DeprecationWarning`` that names both.
"""

from __future__ import annotations

import functools
import warnings

__all__ = ["renamed"]


def renamed(**old_to_new: str):
    """Decorator: accept keyword ``old`` as ``new`` (``renamed(n_particles="num_particles")``)."""

    def wrap(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old}= and its new name {new}=")
                    warnings.warn(f"{fn.__name__}(): {old}= is now called {new}=", DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return call

    return wrap
