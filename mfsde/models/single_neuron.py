"""The lecture's planted neuron: teacher y = σ(⟨w*, x⟩), student units a·σ(⟨w, x⟩).

x ~ N(0, I_d), ‖w*‖ = 1 (so ⟨w*, x⟩ ~ N(0, 1)), σ = tanh (σ' > 0 everywhere, as the lecture
assumes). Priors: a ~ N(0, s_a²) and the "uninformative" w ~ N(0, (λ²/d) I_d), independent.
A mean-field network f(x) = (1/N) Σ a_i σ(⟨w_i, x⟩) can represent the teacher exactly (all
units at a = 1, w = w*), while units initialised at random are nearly orthogonal to w*.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

import mfsde

# Demo settings (`make demo`, numbers in bench/README.md). The slowest observables are the
# output weights' moments: Ψ is linear in a, so they relax at about the prior's rate
# 1/(β s_a²); the spread of a has an integrated autocorrelation time ≈ 275, and t1 = 2400
# gives 4 runs 4 · 1200 / 275 ≈ 17 effective samples of it in the stationary half
# (mfsde.diagnostics.MIN_ESS = 10). The mean of a is slower (≈ 500–950, a collective mode) and
# is judged against its own finite-N noise. Leimkuhler–Matthews at dt0 = 0.25
# (dt0 · λ_max ≈ 0.5) keeps the Stein configurational temperature within noise of 1.
DEFAULTS = dict(dim=16, num_data=1024, num_particles=512, beta=200.0, prior_scale_a=1.0, prior_scale_w=1.0,
                noise=0.0, t1=2400.0, dt0=0.25, replicates=4, start_spread=2.0)


def make_unit(prior_scale_a: float = DEFAULTS["prior_scale_a"], prior_scale_w: float = DEFAULTS["prior_scale_w"],
              activation=jnp.tanh, output_scale: float = 1.0):
    """Unit model α·a·σ(⟨w, x⟩) with a ~ N(0, s_a²), w ~ N(0, (λ²/d) I_d), λ = prior_scale_w.

    α = ``output_scale``: 1 is the mean-field scaling f_N = (1/N) Σ a_i σ(⟨w_i, x⟩); α = √N
    gives the lazy / NTK scaling f_N = (1/√N) Σ a_i σ(⟨w_i, x⟩) (``compare_scalings``).
    """

    def unit(x):
        d = x.shape[-1]
        a = numpyro.sample("a", dist.Normal(0.0, prior_scale_a))
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale_w / jnp.sqrt(d)).expand([d]).to_event(1))
        return output_scale * a * activation(w @ x.T)

    return unit


unit = make_unit()


def teacher_direction(key, dim: int = DEFAULTS["dim"]):
    """A uniformly random unit vector w* ∈ S^{d-1}."""
    w = jax.random.normal(key, (dim,))
    return w / jnp.linalg.norm(w)


def make_data(key, num_data: int = DEFAULTS["num_data"], dim: int = DEFAULTS["dim"], noise: float = DEFAULTS["noise"],
              activation=jnp.tanh, return_teacher: bool = False):
    """x ~ N(0, I_d), y = σ(⟨w*, x⟩) + noise·ε; w* from ``teacher_direction``."""
    kw, kx, ke = jax.random.split(key, 3)
    w_star = teacher_direction(kw, dim)
    x = jax.random.normal(kx, (num_data, dim))
    y = activation(x @ w_star) + noise * jax.random.normal(ke, (num_data,))
    return (x, y, w_star) if return_teacher else (x, y)


def relu(t):
    return jnp.maximum(t, 0.0)


# -- the lecture's comparison of scalings -----------------------------------------------------
def degree_one_remainder(activation, num_nodes: int = 200) -> float:
    """‖P_{>1} σ‖² = E σ(G)² − (E σ(G))² − (E G σ(G))²: the test risk a lazy (NTK-regime)
    network with m ≲ d^{1+δ} samples cannot go below (0.0908 for ReLU, 0.027 for tanh)."""
    g, w = np.polynomial.hermite_e.hermegauss(num_nodes)
    w = w / np.sqrt(2 * np.pi)
    v = np.asarray(activation(jnp.asarray(g)))
    return float(w @ v**2 - (w @ v) ** 2 - (w @ (g * v)) ** 2)


def compare_scalings(key, x, y, x_test, y_test, width: int, scaling: str, num_steps: int, step_size: float,
                     activation=relu):
    """Train N = ``width`` units by full-batch gradient descent (``mfsde.sgd``, no noise, no
    prior drift) in the mean-field (α = 1) or lazy (α = √N, step / N so the function moves
    at a comparable rate) scaling from the prior; return (train risk, test risk)."""
    alpha = 1.0 if scaling == "mean_field" else float(np.sqrt(width))
    fe = mfsde.FreeEnergy(make_unit(activation=activation, output_scale=alpha), x, y, float("inf"))
    k0, k1 = jax.random.split(key)
    eta = step_size if scaling == "mean_field" else step_size / width
    tr = mfsde.sgd(fe, k1, fe.prior_sample(k0, width), num_steps=num_steps, step_size=eta, noise=False, prior_drift=False,
                   save_every=num_steps)
    test = float(jnp.mean((fe.output(tr.particles, x_test) - y_test) ** 2))
    return float(tr.observables["risk"][-1]), test


# -- the (a, s, r) reduction as d → ∞ ---------------------------------------------------------
def gaussian_shift_expectation(activation, m, r, num_nodes: int = 20):
    """E σ(m + rG), G ~ N(0, 1): for ReLU m Φ(m/r) + |r| φ(m/r) (the one-dimensional piece of
    the arc-cosine kernel), else num_nodes-point Gauss–Hermite."""
    if activation is relu:
        r = jnp.maximum(jnp.abs(r), 1e-30)
        return m * jax.scipy.stats.norm.cdf(m / r) + r * jax.scipy.stats.norm.pdf(m / r)
    g, w = np.polynomial.hermite_e.hermegauss(num_nodes)
    return activation(m[..., None] + r[..., None] * jnp.asarray(g)) @ jnp.asarray(w / np.sqrt(2 * np.pi))


def make_reduced_unit(activation=jnp.tanh, num_nodes: int = 20):
    """Reduced unit h(g; a, s, r) = a E_{G2} σ(s g + r G2) with s = ⟨w, w*⟩, r = ‖P⊥w‖.

    As d → ∞ with x ~ N(0, I_d) and ‖w*‖ = 1, ⟨w, x⟩ = s G1 + r G2 with G1 = ⟨w*, x⟩ and
    G2 independent across units, so f_ρ(x) = ∫ h(G1; θ) ρ̄(dθ) and
    U(θ, θ') = a a' E[σ(sG1 + rG2) σ(s'G1 + r'G3)] = E_{G1}[h(G1; θ) h(G1; θ')]:
    the planted neuron's free energy is the free energy of h on data g = G1 (``reduced_data``).
    For ReLU U is the arc-cosine kernel of the two units, (n n'/2π)(sin φ + (π − φ) cos φ)
    with n² = s² + r², cos φ = s s'/(n n') (tested). The sites' priors are placeholders: the
    reduction is for the noiseless dynamics (β = ∞), started from ``init_reduced``.
    """

    def unit(x):
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        s = numpyro.sample("s", dist.Normal(0.0, 1.0))
        r = numpyro.sample("r", dist.Normal(0.0, 1.0))
        return a * gaussian_shift_expectation(activation, s * x[:, 0], r * jnp.ones_like(x[:, 0]), num_nodes)

    return unit


def reduced_data(num_nodes: int = 512, activation=jnp.tanh):
    """Equal-weight quantile nodes g_i = Φ⁻¹((i − ½)/K) of G1 as (K, 1) and the teacher σ(g_i)."""
    g = jax.scipy.stats.norm.ppf((jnp.arange(num_nodes) + 0.5) / num_nodes)
    return g[:, None], activation(g)


def reduced_problem(activation=jnp.tanh, num_nodes: int = 512, inner_nodes: int = 20):
    """``mfsde.FreeEnergy`` (β = ∞) of the (a, s, r) reduction of the planted neuron."""
    g, y = reduced_data(num_nodes, activation)
    return mfsde.FreeEnergy(make_reduced_unit(activation, inner_nodes), g, y, float("inf"))


def init_reduced(key, n: int, dim: int = DEFAULTS["dim"], prior_scale_a: float = DEFAULTS["prior_scale_a"],
                 prior_scale_w: float = DEFAULTS["prior_scale_w"]):
    """Reduced particles of n prior draws, a ~ N(0, s_a²), s ~ N(0, λ²/d), r = λ χ_{d−1}/√d, as
    (n, 3) in the reduced unit's flat order (a, r, s) (sites are flattened by name)."""
    ka, kw = jax.random.split(key)
    a = prior_scale_a * jax.random.normal(ka, (n,))
    w = prior_scale_w / jnp.sqrt(dim) * jax.random.normal(kw, (n, dim))
    return jnp.stack([a, jnp.linalg.norm(w[:, 1:], axis=1), w[:, 0]], axis=1)
