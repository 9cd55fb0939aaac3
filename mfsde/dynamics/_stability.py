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

from .._checks import positive_int
from .._keys import single_key
from ..free_energy import FreeEnergy

__all__ = ["max_curvature"]


def step_stability_hint(fe: FreeEnergy, states, step: float, name: str = "dt0") -> str:
    """What a diverged run's error says: h·λ_max (λ_max = ``max_curvature``) against 2, where
    explicit steps of the drift stop being stable, and the step that is.

    ``states``: ((where, Θ), ...) tried in order, e.g. the last finite state and then the
    start; the first with a finite λ_max is reported (far out, the curvature itself may
    overflow). Θ may be None (not known) and is then skipped.
    """
    for where, particles in states:
        if particles is None:
            continue
        lam = float(max_curvature(fe, jnp.asarray(particles)[..., : fe.dim]))
        if math.isfinite(lam) and lam > 0:
            return (f"Stability: {name}·λ_max = {step:g} × {lam:.4g} = {step * lam:.3g} {where} (λ_max the largest "
                    f"curvature of the drift, mfsde.max_curvature); explicit steps are unstable above 2, so take "
                    f"{name} < {2.0 / lam:.3g}, or rescale the inputs.")
    return f"The drift's curvature could not be estimated; take a smaller {name} than {step:g}."


def max_curvature(fe: FreeEnergy, particles: Float[Array, "n d"], key: PRNGKeyArray | None = None,
                  num_iterations: int = 40) -> Float[Array, ""]:
    """λ_max = the largest |eigenvalue| of the Langevin drift's Jacobian at ``particles``.

    Power iteration v ← J v / ‖J v‖ with J v = jvp of Θ ↦ b(Θ), started from a random
    direction; returns ‖J v‖ after ``num_iterations`` (a lower bound that converges
    geometrically at the rate of the spectral gap). jit-able.
    """
    from ._langevin import LangevinDrift

    particles = fe._check_particles(particles)
    num_iterations = positive_int("num_iterations", num_iterations)
    drift = LangevinDrift(fe)
    key = jax.random.key(0) if key is None else single_key(key, replicates="one power iteration")
    v0 = jax.random.normal(key, particles.shape, particles.dtype)

    def jv(v):
        return jax.jvp(lambda th: drift(0.0, th), (particles,), (v,))[1]

    def body(_, v):
        w = jv(v)
        return w / jnp.linalg.norm(w)

    v = jax.lax.fori_loop(0, num_iterations, body, v0 / jnp.linalg.norm(v0))
    return jnp.linalg.norm(jv(v))
