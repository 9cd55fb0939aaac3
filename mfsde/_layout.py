"""The particle axis first, however a unit writes its contractions.

mfsde evaluates N units at once as ``vmap(apply, in_axes=(0, None))(Θ, x)``. JAX's batching
rule for ``dot_general`` keeps the operands' order: a unit written ``x @ w`` (data on the
left, the parameter on the right) puts the particle axis after the data axis, a (P, N)
product, and the next elementwise operation with a per-particle scalar moves it to the
front: an (N, P) transpose in the forward pass and another in the backward pass of every
step. ``w @ x.T`` or ``einsum("d,pd->p", w, x)`` put it first and need none.

``particle_axis_first(apply)`` removes the difference at trace time. It traces the
one-unit function to a jaxpr and evaluates it equation by equation, replacing every
contraction ``dot_general(data, θ-dependent)`` by ``dot_general(θ-dependent, data)`` with
the contraction dimensions swapped. That is the same product with its free dimensions in
the other order; the rewrite is made only where one side has no free dimension, so the
one-unit result is the same array, and under ``vmap`` the particle axis comes first.
Nested ``jit`` calls are inlined so that contractions inside them are rewritten too;
every other primitive (custom derivatives, control flow) is bound unchanged.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax import lax
from jax.extend import core
from jax.extend.core import primitives

__all__ = ["particle_axis_first"]


def _swapped_dot(lhs, rhs, params):
    """``dot_general(rhs, lhs)`` with the same output as ``dot_general(lhs, rhs, **params)``
    when ``lhs`` or ``rhs`` has no free dimension; ``None`` when both have one."""
    (lc, rc), (lb, rb) = params["dimension_numbers"]
    lhs_free = lhs.ndim - len(lc) - len(lb)
    rhs_free = rhs.ndim - len(rc) - len(rb)
    if lhs_free and rhs_free:  # swapping would need a transpose of the one-unit result
        return None
    precision = params.get("precision")
    if isinstance(precision, tuple):
        precision = precision[::-1]
    return lax.dot_general(rhs, lhs, ((rc, lc), (rb, lb)), precision=precision,
                           preferred_element_type=params.get("preferred_element_type"))


def _evaluate(jaxpr, consts, args, depends):
    """Evaluate ``jaxpr`` on ``args``; ``depends[i]``: whether argument i depends on θ."""
    env, dep = {}, {}
    for v, a in zip(jaxpr.constvars, consts):
        env[v], dep[v] = a, False
    for v, a, d in zip(jaxpr.invars, args, depends):
        env[v], dep[v] = a, d

    def read(v):
        return v.val if isinstance(v, core.Literal) else env[v]

    def reads_theta(v):
        return not isinstance(v, core.Literal) and dep[v]

    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        ds = [reads_theta(v) for v in eqn.invars]
        outs = None
        if eqn.primitive is primitives.dot_general_p and ds[1] and not ds[0]:
            out = _swapped_dot(*ins, eqn.params)
            outs = None if out is None else [out]
        elif eqn.primitive is primitives.jit_p:
            inner = eqn.params["jaxpr"]
            outs = _evaluate(inner.jaxpr, inner.consts, ins, ds)
        if outs is None:
            with eqn.ctx.manager:
                outs = eqn.primitive.bind(*ins, **eqn.primitive.get_bind_params(eqn.params))
            if not eqn.primitive.multiple_results:
                outs = [outs]
        for v, o in zip(eqn.outvars, outs):
            env[v], dep[v] = o, any(ds)
    return [read(v) for v in jaxpr.outvars]


def particle_axis_first(apply: Callable) -> Callable:
    """``apply(θ, x)`` with every contraction of data against θ written θ-first (above):
    the same values, and under ``vmap`` over θ no (P, N) intermediate."""

    def rewritten(theta, x):
        shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (theta, x))
        closed, out_shape = jax.make_jaxpr(apply, return_shape=True)(*shapes)
        n_theta = len(jax.tree.leaves(theta))
        leaves = jax.tree.leaves((theta, x))
        out = _evaluate(closed.jaxpr, closed.consts, leaves,
                        [i < n_theta for i in range(len(leaves))])
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return rewritten
