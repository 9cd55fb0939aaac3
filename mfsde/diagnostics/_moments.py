"""Low-order moments of the particle law, saved along every run: what slow modes move.

Risk and free energy settle long before every marginal does (in the planted neuron the
output weight a relaxes at the prior's rate 1/(β s_a²) because Ψ is linear in a), so a
stationarity verdict needs observables that follow the law itself. Per site s (flat,
unconstrained coordinates θ_s of the particles):

- ``mean[s]``: the particle mean of a scalar site; ``norm_of_mean[s]``: ‖(1/N) Σ_i θ_{i,s}‖
  for a site with several coordinates;
- ``mean_sq[s]``: (1/N) Σ_i ‖θ_{i,s}‖²;

and along ``NUM_PROJECTIONS`` fixed random unit directions u_k ∈ R^D (seed 0), which mix
the sites: ``mean[proj k]`` = (1/N) Σ_i u_k·θ_i and ``mean_sq[proj k]`` = (1/N) Σ_i (u_k·θ_i)².
Cost O(N·D) per save. ``scales`` gives each moment's finite-N noise level at a particle
cloud: the standard deviation of its per-particle summand over √N (for a norm of a mean,
sqrt(tr Cov(θ_s) / N)), the size of the fluctuations of these averages that no run length
removes at this N.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..particles import weighted_mean

__all__ = ["LawMoments", "NUM_PROJECTIONS", "law_scales_per_run"]

NUM_PROJECTIONS = 2


class LawMoments(eqx.Module):
    """particles (N, D) -> dict of the moments above (scalars). Build with ``LawMoments.of(unit)``."""

    sites: tuple[tuple[str, tuple[int, ...]], ...] = eqx.field(static=True)
    projections: Array

    @classmethod
    def of(cls, unit) -> "LawMoments":
        sites = tuple((name, tuple(int(i) for i in np.atleast_1d(idx).reshape(-1)))
                      for name, idx in unit.site_indices().items())
        u = np.random.default_rng(0).standard_normal((unit.dim, NUM_PROJECTIONS))
        return cls(sites, jnp.asarray(u / np.linalg.norm(u, axis=0)))

    def __call__(self, particles: Float[Array, "n d"], weights: Float[Array, " n"] | None = None
                 ) -> dict[str, Array]:
        """The moments of Σ_i w_i δ_{θ_i} (w_i = 1/N when ``weights`` is None)."""
        out = {}
        for name, idx in self.sites:
            block = particles[:, np.asarray(idx)]
            mean = weighted_mean(block, weights)
            if len(idx) == 1:
                out[f"mean[{name}]"] = mean[0]
            else:
                out[f"norm_of_mean[{name}]"] = jnp.sqrt(jnp.sum(mean**2))
            out[f"mean_sq[{name}]"] = weighted_mean(jnp.sum(block**2, axis=1), weights)
        proj = particles @ self.projections.astype(particles.dtype)
        for k in range(proj.shape[1]):
            out[f"mean[proj {k}]"] = weighted_mean(proj[:, k], weights)
            out[f"mean_sq[proj {k}]"] = weighted_mean(proj[:, k] ** 2, weights)
        return out

    def scales(self, particles: Float[Array, "n d"]) -> dict[str, Array]:
        """Finite-N noise level of each moment (and of langevin's mean_sq_norm) at
        ``particles``: sd(summand)/√N."""
        n = particles.shape[0]
        out = {}
        for name, idx in self.sites:
            block = particles[:, np.asarray(idx)]
            if len(idx) == 1:
                out[f"mean[{name}]"] = jnp.std(block[:, 0]) / jnp.sqrt(n)
            else:
                out[f"norm_of_mean[{name}]"] = jnp.sqrt(jnp.sum(jnp.var(block, axis=0)) / n)
            out[f"mean_sq[{name}]"] = jnp.std(jnp.sum(block**2, axis=1)) / jnp.sqrt(n)
        out["mean_sq_norm"] = jnp.std(jnp.sum(particles**2, axis=1)) / jnp.sqrt(n)
        proj = particles @ self.projections.astype(particles.dtype)
        for k in range(proj.shape[1]):
            out[f"mean[proj {k}]"] = jnp.std(proj[:, k]) / jnp.sqrt(n)
            out[f"mean_sq[proj {k}]"] = jnp.std(proj[:, k] ** 2) / jnp.sqrt(n)
        return out


@eqx.filter_jit
def law_scales_per_run(moments: LawMoments, particles: Float[Array, "r n d"]) -> dict[str, Array]:
    """``moments.scales`` of each of R clouds (R, N, D): name -> (R,)."""
    return jax.vmap(moments.scales)(particles)
