"""How far a cloud is from the minimiser: the entropy sandwich as a certificate.

Nitanda–Wu–Suzuki (AISTATS 2022): for any ρ, with the proximal Gibbs measure
G[ρ] ∝ π₀ exp(−βΨ(·; ρ)),

    β⁻¹ KL(ρ‖ρ*) ≤ F(ρ) − F(ρ*) ≤ β⁻¹ KL(ρ‖G[ρ]).

Since log G[ρ] = log π₀ − βΨ(·; ρ) − log Z[ρ], Z[ρ] = E_π₀ e^{−βΨ(·; ρ)},

    KL(ρ‖G[ρ]) = KL(ρ‖π₀) + β E_ρ[Ψ(·; ρ)] + log Z[ρ],

each part an estimate mfsde already has: KL(ρ‖π₀) by the k-NN entropy (``kl_to_prior``),
E_ρΨ at the particles, and log Z by adaptive tempered SMC (``gibbs_log_normalizer``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import finite, particle_array, positive_int
from .._keys import single_key
from ..fixed_point import gibbs_log_normalizer
from ..free_energy import FreeEnergy
from ..particles import Particles
from ._divergence import kl_to_prior_terms

__all__ = ["OptimalityCertificate", "optimality_certificate"]


class OptimalityCertificate(NamedTuple):
    """``optimality_certificate``'s result (floats; nats divided by β where it says so).

    - ``upper_bound`` = β⁻¹ KL(ρ‖G[ρ]) ≥ F(ρ) − F(ρ*), and its standard error ``se``;
    - ``free_energy`` = F(ρ) = ½R(ρ) + β⁻¹ KL(ρ‖π₀);
    - the parts of KL(ρ‖G[ρ]): ``kl_to_prior`` (k-NN), ``expected_potential`` E_ρΨ(·; ρ),
      ``log_normalizer`` log Z[ρ] (mean of the SMC runs) with its s.e. ``log_normalizer_se``;
    - ``kl_to_gibbs`` = KL(ρ‖G[ρ]) itself.
    """

    upper_bound: float
    se: float
    free_energy: float
    kl_to_gibbs: float
    kl_to_prior: float
    expected_potential: float
    log_normalizer: float
    log_normalizer_se: float

    def __str__(self):
        return (f"F(ρ) is within {self.upper_bound:.4g} ± {self.se:.2g} of its minimum F(ρ*) "
                f"(entropy sandwich: β⁻¹KL(ρ‖G[ρ]))")


def optimality_certificate(fe: FreeEnergy, key: PRNGKeyArray, particles: Float[Array, "n d"], *, k: int = 1,
                           num_smc_runs: int = 4, num_smc_particles: int = 2000) -> OptimalityCertificate:
    """An upper bound on F(ρ) − F(ρ*) for the cloud ``particles`` (N, D) (module docstring):

        F(ρ) − F(ρ*) ≤ β⁻¹ [KL(ρ‖π₀) + β E_ρΨ(·; ρ) + log Z[ρ]].

    Its standard error combines the per-particle terms' spread (``kl_to_prior_terms`` +
    βΨ(θ_i)) over √N (ε_i the k-th neighbour distance of the k-NN entropy; the
    neighbours' dependence is ignored), and that of log Z over ``num_smc_runs``
    independent SMC runs of ``num_smc_particles``. The k-NN entropy's bias (it grows with
    D; ``entropy_knn``) is not in the s.e.

    Examples:
        >>> import jax, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> cloud = fe.prior_sample(jax.random.key(1), 1000)                # the prior: far from rho*
        >>> c = mfsde.optimality_certificate(fe, jax.random.key(2), cloud, num_smc_particles=500)
        >>> bool(c.upper_bound > 3 * c.se)                                 # F(prior) - F(rho*) <= upper_bound
        True
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    if not fe.finite_beta:
        raise ValueError("the certificate needs a finite beta (at beta = inf there is no entropy term)")
    k = positive_int("k", k)
    if isinstance(particles, Particles) and particles.log_weight is not None \
            and float(jnp.ptp(particles.log_weight)) > 0:
        raise ValueError("particles must be an equally weighted cloud for the certificate (E_ρΨ and R are "
                         "means over it); resample a weighted one first (Particles.resample)")
    positive_int("num_smc_particles", num_smc_particles, minimum=2)
    theta = particle_array("particles", particles, fe.dim, at_least=k + 2,
                           why=f"the k-NN entropy needs a k-th neighbour (k = {k}) and a spread")
    runs = positive_int("num_smc_runs", num_smc_runs, minimum=2)
    key = single_key(key, replicates="one certificate from num_smc_runs SMC runs")
    beta = float(fe.beta)
    finite("particles", theta)
    output = fe.output(theta)
    psi, _ = fe.potential_and_grad(theta, output)
    kl_terms = kl_to_prior_terms(theta, fe, k)
    kl_prior = float(jnp.mean(kl_terms))
    log_z = np.array([gibbs_log_normalizer(fe, kr, output, num_particles=num_smc_particles).log_z
                      for kr in jax.random.split(key, runs)])
    se_points = float(jnp.std(kl_terms + beta * psi)) / math.sqrt(theta.shape[0])
    se_z = float(np.std(log_z, ddof=1)) / math.sqrt(runs)
    e_psi = float(jnp.mean(psi))
    kl_gibbs = kl_prior + beta * e_psi + float(np.mean(log_z))
    free = 0.5 * float(jnp.mean(fe.residual(output) ** 2)) + kl_prior / beta
    return OptimalityCertificate(kl_gibbs / beta, math.hypot(se_points, se_z) / beta, free, kl_gibbs, kl_prior, e_psi,
                                 float(np.mean(log_z)), se_z)
