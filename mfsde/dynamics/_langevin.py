"""Mean-field Langevin dynamics (noisy-SGD limit, MMN's distributional dynamics)."""

from __future__ import annotations

import math
from collections.abc import Callable

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..free_energy import FreeEnergy
from ._core import ParticleSDE, Trajectory, solve

__all__ = ["langevin", "LangevinDrift", "ParticleObservables"]


def _unit_schedule(t):
    return 1.0


class LangevinDrift(eqx.Module):
    """b(t, Θ)_i = ξ(t) [−∇Ψ(θ_i; ρ^N) + β⁻¹ ∇log π₀(θ_i)] over the (N, D) array."""

    fe: FreeEnergy
    schedule: Callable = eqx.field(static=True, default=_unit_schedule)

    def __call__(self, t, particles, args=None):
        g = self.fe.grad_potential(particles)
        if not math.isinf(self.fe.beta):
            g = g - self.fe.grad_prior_logdensity(particles) / self.fe.beta
        return -self.schedule(t) * g


class LangevinNoise(eqx.Module):
    """g(t) = sqrt(2 ξ(t) / β), the isotropic diffusion scale."""

    beta: float = eqx.field(static=True)
    schedule: Callable = eqx.field(static=True, default=_unit_schedule)

    def __call__(self, t):
        return jnp.sqrt(2.0 * self.schedule(t) / self.beta)


class ParticleObservables(eqx.Module):
    """Cheap observables of a particle state, saved along a run.

    risk R(ρ^N); mean_sq_norm (1/N) Σ ‖θ_i‖² (unconstrained coordinates); plus any
    ``extra`` name -> fn(particles) -> scalar.
    """

    fe: FreeEnergy
    extra: tuple[tuple[str, Callable], ...] = eqx.field(static=True, default=())

    def __call__(self, t, particles, args=None):
        out = {
            "risk": self.fe.risk(particles),
            "mean_sq_norm": jnp.mean(jnp.sum(particles**2, axis=1)),
        }
        for name, fn in self.extra:
            out[name] = fn(particles)
        return out


def langevin(
    fe: FreeEnergy,
    key: PRNGKeyArray,
    particles0: Float[Array, "n d"],
    t1: float,
    dt0: float,
    solver: diffrax.AbstractSolver | None = None,
    ts: Array | None = None,
    schedule: Callable | None = None,
    *,
    t0: float = 0.0,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    observables: dict[str, Callable] | None = None,
    progress: bool | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int | None = None,
) -> Trajectory:
    """Mean-field Langevin dynamics of F_β on N particles, solved with diffrax.

        dθ_i = ξ(t) [−∇Ψ(θ_i; ρ^N_t) + β⁻¹ ∇log π₀(θ_i)] dt + sqrt(2 ξ(t)/β) dB_i,

    ρ^N_t = (1/N) Σ_j δ_{θ_j(t)}, in the unconstrained coordinates of the prior. Its
    stationary law (N → ∞) is the self-consistent Gibbs measure ρ* ∝ π₀ exp(−βΨ(·; ρ*)).
    With ``fe.beta = inf`` it is the noiseless Wasserstein gradient flow of ½R, an ODE:
    adaptive solvers work (e.g. ``diffrax.Tsit5()`` with a ``diffrax.PIDController``).

    Args:
        fe: the free energy (unit model, data, β).
        key: PRNG key for the Brownian motion (unused when β = inf).
        particles0: initial particles, shape (N, D), e.g. ``fe.prior_sample(key, N)``.
        t1, dt0: final time (from ``t0``) and (initial) step size.
        solver: a diffrax solver. Default ``diffrax.Euler()``: the noise is additive
            (g does not depend on Θ), so Euler–Maruyama has weak order 1 (tested) with one
            drift evaluation, i.e. one forward and one backward pass over the data, per
            step. Two-stage SRK solvers (``ShARK``) buy strong order 1.5 for twice the
            cost, which does not pay while the O(N^{-1/2}) particle error dominates.
        ts: save times of the observables (default: up to 101 points in [t0, t1]).
        schedule: MMN's step-size schedule ξ(t) > 0, multiplying drift and diffusion
            variance (default 1).
        stepsize_controller: default ``ConstantStepSize``; adaptive ones for β = inf.
        observables: extra name -> fn(particles) -> scalar saved at ``ts``.
        progress: show a tqdm progress bar (default: runs of >= 5000 steps).

    Returns:
        ``Trajectory(ts, particles, observables, num_steps)``; observables hold ``risk``
        and ``mean_sq_norm`` (and the extras) at ``ts``.
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    particles0 = fe._check_particles(particles0)
    # Under an outer jit/vmap the values are not known here; they are checked when concrete.
    if not isinstance(particles0, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(particles0))):
        raise ValueError("particles0 contains non-finite values")
    particles0 = particles0.astype(fe.x.dtype)
    schedule = _unit_schedule if schedule is None else schedule
    noise = None if math.isinf(fe.beta) else LangevinNoise(fe.beta, schedule)
    sde = ParticleSDE(LangevinDrift(fe, schedule), noise)
    extra = tuple(sorted((observables or {}).items()))
    return solve(
        sde,
        key,
        particles0,
        t0=float(t0),
        t1=float(t1),
        dt0=float(dt0),
        solver=diffrax.Euler() if solver is None else solver,
        observables=ParticleObservables(fe, extra),
        ts=ts,
        stepsize_controller=stepsize_controller,
        progress=progress,
        adjoint=adjoint,
        max_steps=max_steps,
    )

