"""What every particle family saves after its own quantities: the law's moments, the in-run
diagnostics at the saves the budget affords, and the caller's extras; and the one way an
in-run Stein probe is seeded.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..diagnostics._moments import LawMoments
from ..free_energy import FreeEnergy
from ..particle_posterior import stein_residual

__all__ = ["DiagnosticGate", "ObservableTail", "stein_residual_at"]

# Seed of the Hutchinson probes of the in-run Stein residual (folded with each save time).
_STEIN_SEED = 20131


def stein_residual_at(fe: FreeEnergy, particles: Float[Array, "n d"], t) -> tuple[Array, Array]:
    """``stein_residual`` of a chain's state at save time t, its probe drawn from
    ``fold_in(key(_STEIN_SEED), bits of float32(t))``: a fresh probe per save time, the
    same on a rerun, on any time grid."""
    bits = jax.lax.bitcast_convert_type(jnp.asarray(t, jnp.float32), jnp.uint32)
    return stein_residual(fe, particles, jax.random.fold_in(jax.random.key(_STEIN_SEED), bits))


class DiagnosticGate(eqx.Module):
    """Which saves compute the diagnostics: those within ``tol`` of one of ``times`` (T,)
    (NaN where a save has none; ``_diagnostic_saves.diagnostic_gate``), or every save when
    ``times`` is None. Arrays, so that a run of other dt0 or t1 reuses the program."""

    times: Array | None = None
    tol: Array | float = 0.0

    def __call__(self, diagnose: Callable[[], dict], t, names: tuple[str, ...], dtype) -> dict:
        """``diagnose()`` (a dict of the scalars ``names``) at a gated save, NaN at the others:
        a ``lax.cond``, so the others cost nothing, and ``diagnose`` is traced once."""
        if self.times is None:
            return diagnose()
        return jax.lax.cond(jnp.any(jnp.abs(self.times - t) < self.tol), diagnose,
                            lambda: {name: jnp.full((), jnp.nan, dtype) for name in names})


class ObservableTail(eqx.Module):
    """The observables every family appends to its own, in this order: the law's per-site
    and projected moments (``LawMoments``, weighted for a weighted cloud), the diagnostics
    (``gate``; None: none), and the extras name -> fn(state) -> scalar."""

    moments: LawMoments | None = None
    gate: DiagnosticGate | None = None
    extra: tuple[tuple[str, Callable], ...] = eqx.field(static=True, default=())

    def __call__(self, out: dict, t, theta, weights, diagnose: Callable[[], dict], names: tuple[str, ...],
                 extra_argument) -> dict:
        """``out`` with the tail appended: moments of ``theta`` (with ``weights`` or None),
        ``diagnose()``'s ``names`` at the gated saves, and each extra of ``extra_argument``."""
        if self.moments is not None:
            out.update(self.moments(theta, weights) if weights is not None else self.moments(theta))
        if self.gate is not None:
            out.update(self.gate(diagnose, t, names, theta.dtype))
        for name, fn in self.extra:
            out[name] = fn(extra_argument)
        return out
