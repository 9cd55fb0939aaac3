"""ott-jax's Sinkhorn pieces, imported on first use (both OT estimators of mfsde use them:
the debiased Sinkhorn W2 and the entropic transport map)."""

from __future__ import annotations

import types
import warnings

__all__ = ["ott_modules"]


def ott_modules() -> types.SimpleNamespace:
    """ott-jax's ``pointcloud``, ``linear`` (solvers), ``acceleration``, ``initializers``,
    ``linear_problem`` and ``potentials`` modules.

    Imported here on first use: ott-jax's import is slow and pulls jaxopt. Its online point
    clouds (``batch_size=``) flatten their arguments with
    ``jax.interpreters.batching.is_vmappable``, which jax removed in 0.9 (ott-jax/ott#700;
    the 0.6.0 release still calls it). Since 0.9 no type is custom-vmappable, so the removed
    predicate is the constant False, and that is what is restored while it is missing.
    """
    from jax.interpreters import batching

    if not hasattr(batching, "is_vmappable"):
        batching.is_vmappable = lambda x: False
    with warnings.catch_warnings():
        # ott-jax imports jaxopt, which warns that it is unmaintained; nothing here uses it
        warnings.filterwarnings("ignore", "JAXopt is no longer maintained", DeprecationWarning)
        from ott.geometry import pointcloud
        from ott.initializers.linear import initializers
        from ott.problems.linear import linear_problem, potentials
        from ott.solvers import linear
        from ott.solvers.linear import acceleration

    return types.SimpleNamespace(pointcloud=pointcloud, linear=linear, acceleration=acceleration,
                                 initializers=initializers, linear_problem=linear_problem, potentials=potentials)
