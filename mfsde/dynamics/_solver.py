"""Leimkuhler–Matthews: the stationary-accurate one-evaluation scheme for overdamped Langevin.

For dΘ = b(t, Θ) dt + g(t) dB with additive noise, one step of size h is

    Θ_{n+1} = Θ_n + h b(t_n, Θ_n) + (g_n ΔB_n + g_{n+1} ΔB_{n+1}) / 2,

the Brownian increment of each step used twice, in this step and the next (Leimkuhler &
Matthews 2013, "Rational construction of stochastic numerical methods for molecular
sampling"; the high-friction limit of BAOAB). It costs one drift evaluation per step,
like Euler–Maruyama, and its error in the invariant measure of a gradient system is O(h²)
against Euler's O(h). For a linear drift b = −A(Θ − m) with symmetric A (the linear unit
of docs/design.md §5, at any N) it is exact: the chain Θ_{n+1} = CΘ_n + s(ξ_n + ξ_{n+1}),
C = I − hA, s² = h/(2β), has stationary covariance 2s²(I − C)⁻¹ = (βA)⁻¹, the continuous
one, for every stable h (Euler's is (βA)⁻¹(I − hA/2)⁻¹). Finite-time (weak) accuracy is
first order, as for Euler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
from equinox.internal import ω

__all__ = ["LeimkuhlerMatthews", "leimkuhler_matthews_update"]


def leimkuhler_matthews_update(y, increment, previous_noise, noise):
    """One step of the scheme, y_{n+1} = y_n + b(t_n, y_n) h + (g ΔW_{n−1} + g ΔW_n) / 2, from
    the drift ``increment`` b h and the two noise increments (pytrees of y's structure):
    the solver below and WFR's transport step (``mfsde.dynamics.WFRStep``) both take it."""
    return (y**ω + increment**ω + 0.5 * (previous_noise**ω + noise**ω)).ω


class LeimkuhlerMatthews(diffrax.AbstractItoSolver):
    """Leimkuhler–Matthews scheme for additive-noise SDEs ``MultiTerm(drift, diffusion)``.

        y_{n+1} = y_n + f(t_n, y_n) h + (g(t_{n−1}) ΔW_{n−1} + g(t_n) ΔW_n) / 2.

    The solver state carries the previous step's noise g ΔW (the same shape as y). The
    first step has no previous increment and reuses its own, so it is an Euler–Maruyama
    step; a run cut into segments (checkpointing) restarts that way at every segment,
    which leaves the invariant measure unchanged. Fixed step sizes only: the scheme's
    accuracy statement is about the stationary law of a fixed-h chain. Multiplicative
    noise is not supported (the scheme is derived for additive noise).
    """

    term_structure: ClassVar = diffrax.MultiTerm[tuple[diffrax.AbstractTerm, diffrax.AbstractTerm]]
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = diffrax.LocalLinearInterpolation

    def order(self, terms):
        return 1

    def strong_order(self, terms):
        return 0.5

    def init(self, terms, t0, t1, y0, args) -> Any:
        _, diffusion = terms.terms
        return diffusion.vf_prod(t0, y0, args, diffusion.contr(t0, t1))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        del made_jump
        drift, diffusion = terms.terms
        noise = diffusion.vf_prod(t0, y0, args, diffusion.contr(t0, t1))
        y1 = leimkuhler_matthews_update(y0, drift.vf_prod(t0, y0, args, drift.contr(t0, t1)), solver_state, noise)
        return y1, None, dict(y0=y0, y1=y1), noise, diffrax.RESULTS.successful

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)
