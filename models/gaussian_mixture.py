"""Mei–Montanari–Nguyen's Gaussian-mixture classification and its d → ∞ reduction.

Full model: y = ±1 with probability ½ each; x | y ~ N(0, Σ_y) with Σ_± = (1 ± Δ)² I_d
(isotropic) or diag((1 ± Δ)² I_{s0}, I_{d−s0}) (anisotropic). Unit σ(x; w) = σ_*(⟨w, x⟩)
with MMN's truncated ReLU (t1 = 0.5, t2 = 1.5, s1 = −2.5, s2 = 7.5) or the plain ReLU;
prior / initialisation w ~ N(0, (κ²/d) I_d), κ = 0.8 in their experiments.

Isotropic reduction (d → ∞). For a rotation-invariant ρ (w = r u, u uniform on the sphere)
⟨w, x⟩ given the class is N(0, r² s_±²) with s_± = 1 ± Δ, and for two independent units
the two projections are independent, so with v_±(r) = E_G σ_*(r s_± G):

    f_ρ(x) → f_± = ∫ v_±(r) ρ̄(dr),   R(ρ) → ½ Σ_± (y_± − f_±)²,
    Ψ(w; ρ) → ½ Σ_± (f_± − y_±) v_±(‖w‖),

i.e. exactly the free energy of a *reduced unit* v(x̄; r) = E_G σ_*(r x̄ G) on two equally
weighted data points x̄ = s_±, ȳ = ±1. ``reduced_problem`` builds it (E_G in closed form
for the piecewise-linear activations, Gauss–Hermite for any other), so the reduced dynamics are ``mfsde.langevin`` (β = ∞: the ODE dr/dt = −∂_rΨ̄) on
an (N, 1) array of radii: the same SDE core. (The radial part of the d-dimensional flow
is dr/dt = −∂_r Ψ(r); the sign of r is immaterial since v is even in r.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DEFAULTS = dict(dim=40, delta=0.8, num_particles=800, init_scale=0.8, num_nodes=128)
TRUNCATED_RELU = dict(t1=0.5, t2=1.5, s1=-2.5, s2=7.5)


def truncated_relu(t, t1=TRUNCATED_RELU["t1"], t2=TRUNCATED_RELU["t2"], s1=TRUNCATED_RELU["s1"],
                   s2=TRUNCATED_RELU["s2"]):
    """σ_*(t) = s1 for t ≤ t1, s2 for t ≥ t2, linear in between (MMN's activation)."""
    return s1 + (s2 - s1) * jnp.clip((t - t1) / (t2 - t1), 0.0, 1.0)


def relu(t):
    return jnp.maximum(t, 0.0)


def make_unit(dim: int = DEFAULTS["dim"], init_scale: float = DEFAULTS["init_scale"], activation=truncated_relu):
    """Unit σ_*(⟨w, x⟩), w ~ N(0, (κ²/d) I_d) (the prior is MMN's initialisation)."""

    def unit(x):
        w = numpyro.sample("w", dist.Normal(0.0, init_scale / np.sqrt(dim)).expand([dim]).to_event(1))
        return activation(w @ x.T)

    return unit


def class_scales(dim: int, delta: float, s0: int | None = None):
    """Per-coordinate s.d. of x for y = +1 and y = −1: (1 ± Δ) on the first s0 (default all)."""
    s0 = dim if s0 is None else s0
    plus = np.concatenate([np.full(s0, 1 + delta), np.ones(dim - s0)])
    minus = np.concatenate([np.full(s0, 1 - delta), np.ones(dim - s0)])
    return plus, minus


def make_sampler(dim: int = DEFAULTS["dim"], delta: float = DEFAULTS["delta"], s0: int | None = None):
    """sampler(key, B) -> (x (B, d), y (B,)): fresh pairs of the mixture (population data)."""
    plus, minus = (jnp.asarray(s) for s in class_scales(dim, delta, s0))

    def sampler(key, batch_size):
        ky, kx = jax.random.split(key)
        y = jnp.where(jax.random.bernoulli(ky, 0.5, (batch_size,)), 1.0, -1.0)
        scale = jnp.where(y[:, None] > 0, plus, minus)
        return scale * jax.random.normal(kx, (batch_size, dim)), y

    return sampler


def init_radii(key, n: int, dim: int = DEFAULTS["dim"], init_scale: float = DEFAULTS["init_scale"]):
    """r = ‖w‖ for w ~ N(0, (κ²/d) I_d): κ χ_d/√d, shape (n, 1) (the reduced particles)."""
    g = jax.random.normal(key, (n, dim))
    return init_scale * jnp.linalg.norm(g, axis=1, keepdims=True) / np.sqrt(dim)


def _relu_gaussian(c, a):
    """E relu(cG − a) for G ~ N(0, 1), c ≥ 0: c φ(a/c) − a (1 − Φ(a/c))."""
    c = jnp.maximum(jnp.abs(c), 1e-30)
    z = a / c
    return c * jax.scipy.stats.norm.pdf(z) - a * jax.scipy.stats.norm.sf(z)


def gaussian_expectation(activation, c, num_nodes: int = DEFAULTS["num_nodes"]):
    """E_G σ_*(c G), G ~ N(0, 1): closed form for the piecewise-linear ``truncated_relu``
    and ``relu`` (σ = s1 + k[relu(t − t1) − relu(t − t2)]), else num_nodes-point
    Gauss–Hermite (whose error at a kink decays only like 1/num_nodes: ~3e-3 at 128)."""
    if activation is truncated_relu:
        p = TRUNCATED_RELU
        k = (p["s2"] - p["s1"]) / (p["t2"] - p["t1"])
        return p["s1"] + k * (_relu_gaussian(c, p["t1"]) - _relu_gaussian(c, p["t2"]))
    if activation is relu:
        return _relu_gaussian(c, 0.0)
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    return activation(c[..., None] * jnp.asarray(nodes)) @ jnp.asarray(weights / np.sqrt(2 * np.pi))


def make_reduced_unit(activation=truncated_relu, num_nodes: int = DEFAULTS["num_nodes"],
                      init_scale: float = DEFAULTS["init_scale"]):
    """Reduced unit v(x̄; r) = E_G σ_*(r x̄ G), G ~ N(0, 1) (``gaussian_expectation``)."""

    def unit(x):
        r = numpyro.sample("r", dist.Normal(0.0, init_scale))
        return gaussian_expectation(activation, r * x[:, 0], num_nodes)

    return unit


def reduced_data(delta: float = DEFAULTS["delta"]):
    """The reduction's two equally weighted data points: x̄ = (1 ± Δ) as (2, 1), ȳ = ±1."""
    return jnp.asarray([[1.0 + delta], [1.0 - delta]]), jnp.asarray([1.0, -1.0])


def reduced_problem(delta: float = DEFAULTS["delta"], activation=truncated_relu, beta: float = float("inf"),
                    num_nodes: int = DEFAULTS["num_nodes"]):
    """``mfsde.FreeEnergy`` of the isotropic reduction (risk, Ψ, ∇Ψ in the radius r)."""
    import mfsde

    x, y = reduced_data(delta)
    return mfsde.FreeEnergy(make_reduced_unit(activation, num_nodes), x, y, beta)
