"""The drift's largest curvature: what bounds a stable explicit step size.

The mean-field Langevin drift is b(Θ) = −∇_Θ E(Θ) with E(Θ) = (N/2) R(f_N(Θ)) − β⁻¹ Σ_i
log π₀(θ_i) (∂/∂θ_i of (N/2)R is ∇Ψ(θ_i; ρ^N)), so its Jacobian −∇²E is symmetric. Euler
and Leimkuhler–Matthews are stable for h λ_max(∇²E) < 2 and their invariant-measure bias
grows with h λ_max; ``max_curvature`` estimates λ_max by power iteration with
Jacobian-vector products of the drift (each one costs about two drift evaluations).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import particle_array, positive_int
from .._keys import single_key
from ..free_energy import FreeEnergy
from ..particles import Particles
from ._terms import LangevinDrift

__all__ = ["max_curvature"]


def step_stability_hint(fe: FreeEnergy, states, step: float, name: str = "dt0") -> str:
    """What a diverged run's error says: h·λ_max (λ_max = ``max_curvature``) against 2, where
    explicit steps of the drift stop being stable, and the step that is.

    ``states``: ((where, Θ), ...) tried in order, e.g. the last finite state and then the
    start; the first with a finite λ_max is reported (far out, the curvature itself may
    overflow). Θ is an (N, D) array or a (weighted) ``Particles``, or None (not known)
    and is then skipped.
    """
    for where, particles in states:
        if particles is None:
            continue
        if not isinstance(particles, Particles):
            particles = jnp.asarray(particles)[..., : fe.dim]
        lam = float(max_curvature(fe, particles))
        if math.isfinite(lam) and lam > 0:
            return (f"Stability: {name}·λ_max = {step:g} × {lam:.4g} = {step * lam:.3g} {where} (λ_max the largest "
                    f"curvature of the drift, mfsde.max_curvature); explicit steps are unstable above 2, so take "
                    f"{name} < {2.0 / lam:.3g}, or rescale the inputs.")
    return f"The drift's curvature could not be estimated; take a smaller {name} than {step:g}."


def max_curvature(fe: FreeEnergy, particles: Float[Array, "n d"] | Particles, key: PRNGKeyArray | None = None,
                  num_iterations: int = 40) -> Float[Array, ""]:
    """λ_max = the largest |eigenvalue| of the Langevin drift's Jacobian at ``particles``.

    Power iteration v ← J v / ‖J v‖ with J v = jvp of Θ ↦ b(Θ), started from a random
    direction; returns ‖J v‖ after ``num_iterations`` (a lower bound that converges
    geometrically at the rate of the spectral gap). jit-able.

    For weighted ``Particles`` the drift is the weighted one, b_i = −∇Ψ(θ_i; Σ_j w_j δ_θj)
    + β⁻¹∇log π₀(θ_i), with the weights held fixed: J_ij = δ_ij A_i + w_j G(θ_i, θ_j)
    (A_i = −∇²Ψ(θ_i) + β⁻¹∇²log π₀, G = −(1/P) Σ_p ∇σ(x_p; θ_i) ∇σ(x_p; θ_j)ᵀ), similar to
    the symmetric A + W^½ G W^½, so its spectrum is real and a heavy particle's block
    counts w_j times: what bounds the transport step of ``mfsde.wfr``.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> lam = mfsde.max_curvature(fe, p0)                  # dt0 * lam < 1 keeps the step stable
        >>> bool(lam > 0)
        True
    """
    log_weight = particles.log_weight if isinstance(particles, Particles) else None
    theta = particle_array("particles", particles, fe.dim)
    num_iterations = positive_int("num_iterations", num_iterations)
    key = jax.random.key(0) if key is None else single_key(key, replicates="one power iteration")
    v0 = jax.random.normal(key, theta.shape, theta.dtype)

    langevin_drift = LangevinDrift(fe)

    def drift(th):
        return langevin_drift(0.0, th if log_weight is None else Particles(th, log_weight))

    def jv(v):
        return jax.jvp(drift, (theta,), (v,))[1]

    def body(_, v):
        w = jv(v)
        return w / jnp.linalg.norm(w)

    v = jax.lax.fori_loop(0, num_iterations, body, v0 / jnp.linalg.norm(v0))
    return jnp.linalg.norm(jv(v))
