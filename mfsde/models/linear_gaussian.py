"""Linear units σ(x; θ) = θ·x with prior N(0, s² I): the closed form of docs/design.md §5.

With Σ̂ = XᵀX/P, ĉ = XᵀY/P and A = Σ̂ + I/(βs²):
Ψ(θ; ρ) = (Σ̂ m − ĉ)·θ with m = E_ρ[θ]; the fixed point is ρ* = N(m*, s² I) with
m* = (I + βs²Σ̂)⁻¹ βs² ĉ = A⁻¹ĉ; KL(ρ*‖π₀) = ‖m*‖²/(2s²); W2(ρ*, π₀) = ‖m*‖; the Langevin
mean solves dm/dt = −(Σ̂m − ĉ) − m/(βs²) = −A(m − m*).
"""

import jax
import numpy as np
import numpyro
import numpyro.distributions as dist

import mfsde

DEFAULTS = dict(num_data=200, dim=3, prior_scale=1.0, beta=4.0, noise=0.1)


def make_unit(prior_scale: float = DEFAULTS["prior_scale"]):
    """Unit model σ(x; θ) = x·θ, θ ~ N(0, s² I_d)."""

    def unit(x):
        theta = numpyro.sample("theta", dist.Normal(0.0, prior_scale).expand([x.shape[-1]]).to_event(1))
        return theta @ x.T

    return unit


unit = make_unit()


def make_data(key, num_data: int = DEFAULTS["num_data"], dim: int = DEFAULTS["dim"], noise: float = DEFAULTS["noise"]):
    """x ~ N(0, I_d) (P rows), y = x·w + noise·ε with a random teacher w ~ N(0, I_d)."""
    kx, kw, ke = jax.random.split(key, 3)
    x = jax.random.normal(kx, (num_data, dim))
    w = jax.random.normal(kw, (dim,))
    y = x @ w + noise * jax.random.normal(ke, (num_data,))
    return x, y


def free_energy(key=None, num_data: int = DEFAULTS["num_data"], dim: int = DEFAULTS["dim"],
                beta: float = DEFAULTS["beta"], prior_scale: float = DEFAULTS["prior_scale"],
                noise: float = DEFAULTS["noise"]):
    """``mfsde.FreeEnergy`` of ``make_unit(prior_scale)`` on ``make_data(key, ...)`` (key 0 by
    default): the small problem with a closed-form fixed point that the docs' examples use."""
    x, y = make_data(jax.random.key(0) if key is None else key, num_data, dim, noise)
    return mfsde.FreeEnergy(unit if prior_scale == DEFAULTS["prior_scale"] else make_unit(prior_scale), x, y, beta)


def moments(x, y):
    """(Σ̂, ĉ) = (XᵀX/P, XᵀY/P) in float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return x.T @ x / len(y), x.T @ y / len(y)


def drift_matrix(x, y, beta, prior_scale=DEFAULTS["prior_scale"]):
    """A = Σ̂ + I/(βs²), the generator of the mean ODE."""
    sigma, _ = moments(x, y)
    return sigma + np.eye(len(sigma)) / (beta * prior_scale**2)


def fixed_point_mean(x, y, beta, prior_scale=DEFAULTS["prior_scale"]):
    """m* = (I + βs²Σ̂)⁻¹ βs² ĉ."""
    sigma, c = moments(x, y)
    k = beta * prior_scale**2
    return np.linalg.solve(np.eye(len(c)) + k * sigma, k * c)


def kl_fixed_point(x, y, beta, prior_scale=DEFAULTS["prior_scale"]):
    """KL(ρ*‖π₀) = ‖m*‖²/(2s²)."""
    m = fixed_point_mean(x, y, beta, prior_scale)
    return float(m @ m / (2 * prior_scale**2))


def w2_fixed_point(x, y, beta, prior_scale=DEFAULTS["prior_scale"]):
    """W2(ρ*, π₀) = ‖m*‖."""
    return float(np.linalg.norm(fixed_point_mean(x, y, beta, prior_scale)))


def _expm_sym(a, t):
    lam, q = np.linalg.eigh(a)
    return (q * np.exp(-lam * t)) @ q.T


def mean_ode(t, m0, x, y, beta, prior_scale=DEFAULTS["prior_scale"]):
    """m(t) = m* + exp(−At)(m0 − m*), the exact Langevin mean (an OU process)."""
    a = drift_matrix(x, y, beta, prior_scale)
    m_star = fixed_point_mean(x, y, beta, prior_scale)
    return m_star + _expm_sym(a, t) @ (np.asarray(m0, np.float64) - m_star)


def particle_mean_covariance(t, num_particles, init_var, x, y, beta, prior_scale=DEFAULTS["prior_scale"]):
    """Cov of the N-particle empirical mean at t, for iid initial particles of variance init_var.

    The empirical mean obeys dm_N = −A(m_N − m*) dt + sqrt(2/(βN)) dB̄ exactly, so
    Cov(t) = exp(−2At) init_var/N + (βN)⁻¹ A⁻¹ (I − exp(−2At)).
    """
    a = drift_matrix(x, y, beta, prior_scale)
    e2 = _expm_sym(a, 2 * t)
    eye = np.eye(len(a))
    return e2 * init_var / num_particles + np.linalg.solve(a, eye - e2) / (beta * num_particles)
