"""Weighted particle measures ρ = Σ_i w_i δ_{θ_i}: the state of dynamics that move mass.

Langevin and SGD move particles and keep the weights uniform (ρ^N = (1/N) Σ_i δ_{θ_i}, a
plain (N, D) array). Rotskoff–Vanden-Eijnden's birth–death and Wasserstein–Fisher–Rao flows
also change the mass each particle carries; ``Particles`` holds it as log-weights, so that
a weight can fall to e^{-700} without underflowing to a zero that cannot grow back.
Everything that takes particles (``FreeEnergy``'s f_ρ, R, Ψ, ∇Ψ; ``kl_to_prior``, ``w2``;
``to_inference_data``) takes an (N, D) array or a ``Particles``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["Particles", "as_measure"]


class Particles(eqx.Module):
    """ρ = Σ_i w_i δ_{θ_i} with w_i = exp(log_weight_i) / Σ_j exp(log_weight_j).

    theta: particle positions, shape (N, D) (unconstrained coordinates); (R, N, D) for the
    final states of R replicate runs.
    log_weight: unnormalised log-weights, shape (N,) ((R, N)), or ``None``: uniform
    weights 1/N, which every consumer treats exactly as the plain array ``theta`` (no
    extra cost).

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> rho = mfsde.Particles(p0, jnp.zeros(128))         # equal weights: the same measure as p0
        >>> bool(jnp.allclose(fe.risk(rho), fe.risk(p0)))
        True
    """

    theta: Float[Array, "n d"]
    log_weight: Float[Array, " n"] | None = None

    def __check_init__(self):
        shape = jnp.shape(self.theta)
        if len(shape) not in (2, 3):
            raise ValueError(f"Particles.theta must have shape (N, D) (or (R, N, D)), got {shape}")
        if self.log_weight is not None and jnp.shape(self.log_weight) != shape[:-1]:
            raise ValueError(f"Particles.log_weight must have shape {shape[:-1]} to match theta {shape}, got "
                             f"{jnp.shape(self.log_weight)}")

    @property
    def num_particles(self) -> int:
        return self.theta.shape[-2]

    def weights(self) -> Float[Array, " n"]:
        """w_i, normalised to sum to one over the particle axis (1/N each when uniform)."""
        if self.log_weight is None:
            return jnp.full(self.theta.shape[:-1], 1.0 / self.theta.shape[-2], self.theta.dtype)
        return jax.nn.softmax(self.log_weight, axis=-1)

    def effective_sample_size(self) -> Float[Array, ""]:
        """Kish's ESS = 1 / Σ_i w_i² ∈ [1, N] (N when uniform)."""
        return 1.0 / jnp.sum(self.weights() ** 2, axis=-1)

    def resample(self, key: PRNGKeyArray, num: int | None = None) -> Float[Array, "m d"]:
        """``num`` (default N) equally weighted points by systematic resampling: point j is
        θ_i with i the first index whose cumulative weight exceeds (j + u)/num, u ~ U[0, 1)."""
        num = self.theta.shape[0] if num is None else int(num)
        u = (jnp.arange(num) + jax.random.uniform(key, (), self.theta.dtype)) / num
        idx = jnp.searchsorted(jnp.cumsum(self.weights()), u, side="right")
        return self.theta[jnp.minimum(idx, self.theta.shape[0] - 1)]


def as_measure(particles) -> tuple[Array, Array | None]:
    """(θ (N, D), normalised weights (N,) or ``None`` for uniform) of an array or ``Particles``."""
    if isinstance(particles, Particles):
        return jnp.asarray(particles.theta), None if particles.log_weight is None else particles.weights()
    return jnp.asarray(particles), None


def weighted_mean(values: Float[Array, "n ..."], weights: Array | None) -> Array:
    """Σ_i w_i values_i over the leading axis ((1/N) Σ_i values_i when weights is None)."""
    if weights is None:
        return values.mean(0)
    return jnp.tensordot(weights.astype(values.dtype), values, axes=1)
