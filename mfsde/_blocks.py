"""Row blocks: the one way mfsde sweeps a long axis (data points, particles, inner draws) in
fixed-size pieces, so that what is made per row lives for one block only (memory O(block))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool

__all__ = ["row_blocks", "unblock"]


def row_blocks(rows: Array, block: int) -> tuple[Array, Bool[Array, "k c"]]:
    """(rows reshaped to (k, c, ...), valid (k, c)) with c = min(block, n), k = ⌈n / c⌉.

    The last block is padded with copies of row 0, marked invalid: a sweep (``lax.map`` or
    ``lax.scan`` over the k blocks) gives them weight 0 or drops their outputs (``unblock``).
    """
    n = rows.shape[0]
    c = min(int(block), n)
    k = -(-n // c)
    pad = k * c - n
    if pad:
        rows = jnp.concatenate([rows, jnp.broadcast_to(rows[:1], (pad,) + rows.shape[1:])])
    valid = (jnp.arange(k * c) < n).reshape(k, c)
    return rows.reshape((k, c) + rows.shape[1:]), valid


def unblock(blocked, n: int):
    """Per-row outputs (k, c, ...) of a sweep over ``row_blocks`` back to (n, ...), padding dropped."""
    return jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], blocked)
