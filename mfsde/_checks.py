"""Argument checks at the public boundary: each error names the user's argument and the fix.

Values that are traced (under an outer jit or vmap) are not known here and pass; they are
checked when a call sees them concrete.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .particles import Particles

__all__ = ["finite", "positive_int", "positive_number", "number_in", "idata", "particle_array"]


def is_traced(a) -> bool:
    return isinstance(a, jax.core.Tracer)


def finite(name: str, a) -> None:
    """ValueError if the (concrete) array ``a`` has a NaN or an infinity."""
    if a is None or is_traced(a):
        return
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        # split over processes: reduced on the devices, every process gets the answer
        ok = bool(jax.numpy.all(jax.numpy.isfinite(a)))
    else:
        ok = bool(np.all(np.isfinite(np.asarray(a))))
    if not ok:
        raise ValueError(f"{name} contains non-finite values")


def host_array(a) -> np.ndarray:
    """``a`` as a numpy array on this host; an array split over processes
    (``jax.distributed``) is gathered whole to every process first."""
    if isinstance(a, jax.Array) and not is_traced(a) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return np.asarray(a)


def particle_array(name: str, particles, dim: int, at_least: int = 1, why: str = "") -> jax.Array:
    """θ (N, D) of an (N, D) array or a ``Particles``: ValueError naming ``name`` unless its
    shape is (N, ``dim``) with N >= ``at_least`` (an empty cloud has no law: its output,
    risk and moments are 0/0). ``why`` says what needs ``at_least``. Shapes are static, so
    this also holds under jit."""
    theta = jnp.asarray(particles.theta if isinstance(particles, Particles) else particles)
    if theta.ndim != 2 or theta.shape[1] != dim:
        raise ValueError(f"{name} must have shape (N, {dim}), got {theta.shape}")
    if theta.shape[0] < at_least:
        need = why or ("a cloud with no particles has no law" if at_least == 1 else "")
        raise ValueError(f"{name} needs at least {at_least} particle{'s' if at_least > 1 else ''}"
                         f"{': ' + need if need else ''}; got N = {theta.shape[0]}")
    return theta


def positive_int(name: str, v, minimum: int = 1) -> int:
    """``v`` as an int, ValueError unless it is a whole number >= ``minimum``."""
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v) \
        and int(v) == v and v >= minimum
    if not ok:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {need}, got {v!r}")
    return int(v)


def positive_number(name: str, v, allow_inf: bool = False) -> float:
    """``v`` as a float, ValueError unless it is > 0 (and finite unless ``allow_inf``)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not (x > 0 and (allow_inf or math.isfinite(x))):
        raise ValueError(f"{name} must be a positive number{' (inf allowed)' if allow_inf else ''}, got {v!r}")
    return x


def number_in(name: str, v, lo: float, hi: float, closed_hi: bool = False) -> float:
    """``v`` as a float, ValueError unless lo < v < hi (or <= hi with ``closed_hi``)."""
    try:
        x = float(v)
    except (TypeError, ValueError):
        x = math.nan
    if not (lo < x < hi or (closed_hi and x == hi)):
        raise ValueError(f"{name} must be in ({lo:g}, {hi:g}{']' if closed_hi else ')'}, got {v!r}")
    return x


def idata(name: str, tree) -> None:
    """TypeError unless ``tree`` is a DataTree (what ``to_inference_data`` and ``load`` give)."""
    import xarray as xr

    if not isinstance(tree, xr.DataTree):
        raise TypeError(f"{name} must be the DataTree of mfsde.to_inference_data(result, fe) or mfsde.load(path), "
                        f"got {type(tree).__name__}")
