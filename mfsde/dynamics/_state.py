"""A family's state pytree as rows of the one array the driver carries.

A family states its per-particle state as a pytree (a NamedTuple such as WFR's
``WFRState(theta, log_weight, clones, kills, noise)``) whose every leaf has the particle
axis first: shape (N, ...), or (R, N, ...) for R replicates. The driver's machinery —
the compiled loop, checkpoints, the divergence report, the particle sharding — works on
one (N, W) array, W = Σ_leaves ∏ trailing shape, the leaves' trailing axes flattened and
concatenated in pytree order (``jax.flatten_util.ravel_pytree`` per particle row). The
family's terms, jumps and observables see the pytree: ``RowLayout.terms`` wraps them, so
no family indexes a column by number.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["RowLayout", "RowDrift", "RowNoise", "RowJump", "RowObservables", "is_state_tree"]


def is_state_tree(y) -> bool:
    """Whether ``y`` is a state pytree (to be laid out in rows), not one array."""
    return not isinstance(y, (jax.Array, np.ndarray, jax.core.Tracer))


class RowLayout(eqx.Module):
    """The rows of a state pytree: its treedef, each leaf's name (its path, e.g.
    ``"theta"``), trailing shape (after the particle axis) and dtype."""

    treedef: object = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    dtypes: tuple = eqx.field(static=True)

    @classmethod
    def of(cls, state, replicates: int | None = None) -> "RowLayout":
        """The layout of ``state``: every leaf (N, ...) with the same N, or, with
        ``replicates`` = R, every leaf (R, N, ...) (one start per replicate) or (N, ...)
        (one start for all: ``shared``); ValueError naming the leaf otherwise."""
        paths, treedef = jax.tree_util.tree_flatten_with_path(state)
        if not paths:
            raise ValueError("the state pytree has no arrays")
        names = tuple(jax.tree_util.keystr(p, simple=True, separator=".") or "state" for p, _ in paths)
        shapes = [tuple(jnp.shape(leaf)) for _, leaf in paths]
        lead = 2 if replicates is not None and not cls.shared(state, replicates) else 1
        n = None
        for name, shape in zip(names, shapes):
            if len(shape) < lead:
                raise ValueError(f"state leaf {name!r} has shape {shape}; every leaf needs the particle axis first, "
                                 f"(N, ...)" + (f", or ({replicates}, N, ...) for {replicates} keys" if replicates else ""))
            if n is not None and shape[lead - 1] != n:
                raise ValueError(f"state leaf {name!r} has {shape[lead - 1]} particles, the others {n}")
            n = shape[lead - 1]
        return cls(treedef, names, tuple(s[lead:] for s in shapes),
                   tuple(jnp.result_type(leaf) for _, leaf in paths))

    @staticmethod
    def shared(state, replicates: int) -> bool:
        """Whether a start for R = ``replicates`` runs is one state for all (its leaves do
        not all read as (R, N, ...) with one N)."""
        shapes = [jnp.shape(leaf) for leaf in jax.tree.leaves(state)]
        per_run = all(len(s) >= 2 and s[0] == replicates for s in shapes) and len({s[1] for s in shapes}) == 1
        return not per_run

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    def columns(self) -> tuple[tuple[str, int], ...]:
        """((leaf name, width), ...): the rows' column groups, for the divergence report."""
        return tuple(zip(self.names, self.widths))

    def ravel(self, state):
        """(..., N, W) rows of a state whose leaves are (..., N, trailing)."""
        leaves = self.treedef.flatten_up_to(state)
        dtype = jnp.result_type(*self.dtypes)
        return jnp.concatenate([jnp.reshape(leaf, jnp.shape(leaf)[:jnp.ndim(leaf) - len(s)] + (-1,)).astype(dtype)
                                for leaf, s in zip(leaves, self.shapes)], axis=-1)

    def unravel(self, y):
        """The state pytree of (..., N, W) rows."""
        bounds = np.cumsum((0,) + self.widths)
        leaves = [jnp.reshape(y[..., a:b], y.shape[:-1] + s).astype(dt)
                  for a, b, s, dt in zip(bounds[:-1], bounds[1:], self.shapes, self.dtypes)]
        return jax.tree.unflatten(self.treedef, leaves)

    def ravel_scale(self, scale):
        """A noise scale as the rows see it: a scalar stays one; a pytree of the state's
        structure with per-leaf scalars or trailing-shaped scales becomes a (W,) row."""
        leaves, treedef = jax.tree.flatten(scale)
        if treedef != self.treedef:
            return scale
        return jnp.concatenate([jnp.broadcast_to(jnp.asarray(leaf), s).reshape(-1) for leaf, s in zip(leaves, self.shapes)])


class RowDrift(eqx.Module):
    """A drift ``fn(t, state, start) -> state`` over the rows: (t, (N, W), (N, W)) -> (N, W)."""

    fn: Callable
    layout: RowLayout

    def __call__(self, t, y, args):
        return self.layout.ravel(self.fn(t, self.layout.unravel(y), self.layout.unravel(args)))


class RowNoise(eqx.Module):
    """A noise scale ``fn(t)`` (a scalar, or a pytree of per-leaf scales) as a row scale."""

    fn: Callable
    layout: RowLayout

    def __call__(self, t):
        return self.layout.ravel_scale(self.fn(t))


class RowJump(eqx.Module):
    """A jump ``fn(key, t, state) -> state`` over the rows."""

    fn: Callable
    layout: RowLayout

    def __call__(self, key, t, y):
        return self.layout.ravel(self.fn(key, t, self.layout.unravel(y)))


class RowObservables(eqx.Module):
    """Observables ``fn(t, state, start) -> dict`` of the rows."""

    fn: Callable
    layout: RowLayout

    def __call__(self, t, y, args):
        return self.fn(t, self.layout.unravel(y), self.layout.unravel(args))
