"""PRNG keys as every dynamics family takes them: one key, or a batch of keys for replicates."""

from __future__ import annotations

import jax
from jaxtyping import PRNGKeyArray

__all__ = ["as_keys", "single_key"]


def as_keys(key, name: str = "key") -> tuple[PRNGKeyArray, bool]:
    """(typed key or keys, batched) from what a user passes as ``key``.

    Accepts a typed key ``jax.random.key(s)`` (shape ()), a batch of them (shape (R,), e.g.
    ``jax.random.split(key, R)``: R replicate runs), and the raw uint32 keys of numpyro's
    docs, ``jax.random.PRNGKey(s)`` (shape (2,)) or a batch of shape (R, 2). Raw keys are
    wrapped with ``jax.random.wrap_key_data``, which draws the same numbers, so a raw key
    and its typed twin give the same run.
    """
    if not hasattr(key, "dtype") or not hasattr(key, "shape"):
        raise TypeError(f"{name} must be a jax.random.key(...) or jax.random.PRNGKey(...), got {key!r}")
    dtype, shape = key.dtype, tuple(key.shape)
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if len(shape) <= 1:
            return key, len(shape) == 1
    else:
        raw = _raw_shape()
        if dtype == jax.numpy.uint32 and len(shape) in (len(raw), len(raw) + 1) and shape[-len(raw):] == raw:
            return jax.random.wrap_key_data(key), len(shape) == len(raw) + 1
    raise ValueError(f"{name} must be one key (jax.random.key(s), or a raw jax.random.PRNGKey(s) of shape {_raw_shape()}) "
                     f"or a batch of R keys for R replicate runs (shape (R,), or (R, {_raw_shape()[0]}) raw); got "
                     f"dtype {dtype} and shape {tuple(shape)}")


def _raw_shape() -> tuple[int, ...]:
    # the key data of the default implementation (threefry: 2 words)
    return tuple(jax.random.key_data(jax.random.key(0)).shape)


def single_key(key, name: str = "key", replicates: str = "") -> PRNGKeyArray:
    """One typed key from a typed or raw key (``as_keys``); a batch raises ValueError that says
    what the function's replicates are instead (``replicates``)."""
    key, batched = as_keys(key, name)
    if batched:
        raise ValueError(f"{name} must be a single key here, got a batch of {key.shape[0]}"
                         + (f"; {replicates}" if replicates else ""))
    return key
