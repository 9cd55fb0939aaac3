"""The mean-field Langevin terms: the drift and the diffusion scale of every Langevin run.

Their own module because the step-stability estimate (``_stability``) linearises the same
drift that ``langevin`` integrates.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ..free_energy import FreeEnergy
from ..particles import Particles

__all__ = ["LangevinDrift", "LangevinNoise", "schedule_name", "unit_schedule"]


def unit_schedule(t):
    """ξ(t) = 1: the time-homogeneous dynamics."""
    return 1.0


def schedule_name(schedule: Callable) -> str:
    """What a run's options and checkpoint record of a schedule ξ: its qualified name."""
    return getattr(schedule, "__qualname__", repr(schedule))


class LangevinDrift(eqx.Module):
    """b(t, Θ)_i = ξ(t) [−∇Ψ(θ_i; ρ^N) + β⁻¹ ∇log π₀(θ_i)] over the (N, D) array (or a
    weighted ``Particles``: ρ = Σ_j w_j δ_θj, weights held fixed)."""

    fe: FreeEnergy
    schedule: Callable = eqx.field(static=True, default=unit_schedule)

    def __call__(self, t, particles, args=None):
        g = self.fe.grad_potential(particles)
        if self.fe.finite_beta:
            theta = particles.theta if isinstance(particles, Particles) else particles
            g = g - self.fe.grad_prior_logdensity(theta) / self.fe.beta
        return -self.schedule(t) * g


class LangevinNoise(eqx.Module):
    """g(t) = sqrt(2 ξ(t) / β), the isotropic diffusion scale."""

    beta: Array
    schedule: Callable = eqx.field(static=True, default=unit_schedule)

    def __call__(self, t):
        return jnp.sqrt(2.0 * self.schedule(t) / self.beta)
