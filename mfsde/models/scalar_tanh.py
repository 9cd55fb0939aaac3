"""A two-parameter unit a·tanh(w x) on scalar inputs, whose fixed point is computable by
quadrature: a reference for every sampler and SDE in the nonlinear case.

Prior a ~ N(0, s_a²), w ~ N(0, s_w²); data x ~ N(0, 1), y = tanh(c x) + noise. The
symmetry (a, w) → (−a, −w) makes ρ* bimodal-symmetric. On an n × n grid over ±7 prior
s.d. the trapezoid rule is exact to ~1e-10 for these smooth densities.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DEFAULTS = dict(num_data=24, prior_scale_a=1.0, prior_scale_w=0.5, slope=1.5, noise=0.1, beta=10.0)


def make_unit(prior_scale_a: float = DEFAULTS["prior_scale_a"], prior_scale_w: float = DEFAULTS["prior_scale_w"]):
    """Unit σ(x; a, w) = a tanh(w x), a ~ N(0, s_a²), w ~ N(0, s_w²); x of shape (P, 1)."""

    def unit(x):
        a = numpyro.sample("a", dist.Normal(0.0, prior_scale_a))
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale_w))
        return a * jnp.tanh(w * x[:, 0])

    return unit


unit = make_unit()


def make_data(key, num_data: int = DEFAULTS["num_data"], slope: float = DEFAULTS["slope"],
              noise: float = DEFAULTS["noise"], scale: float = 1.0):
    """x ~ N(0, 1) as (P, 1), y = scale · tanh(slope · x) + noise · ε."""
    kx, ke = jax.random.split(key)
    x = jax.random.normal(kx, (num_data, 1))
    return x, scale * jnp.tanh(slope * x[:, 0]) + noise * jax.random.normal(ke, (num_data,))


def fixed_point_quadrature(x, y, beta, prior_scale_a=DEFAULTS["prior_scale_a"],
                           prior_scale_w=DEFAULTS["prior_scale_w"], num_grid: int = 281, iterations: int = 12):
    """ρ* = G[ρ*] on a grid by Newton's method on f ↦ f − E_{G[f]}[σ].

    Returns a dict: output f* (P,), kl = KL(ρ*‖π₀), log_z = log E_π₀ e^{−βΨ*}, beta_f =
    β F_β(ρ*) = KL + (β/2) R(ρ*), risk, mean/var of (a, w), abs_a = E|a|, residual
    ‖f − E_G σ‖, and grid (G, 2) with probabilities probs (G,).
    """
    ga = jnp.linspace(-7 * prior_scale_a, 7 * prior_scale_a, num_grid)
    gw = jnp.linspace(-7 * prior_scale_w, 7 * prior_scale_w, num_grid)
    grid = jnp.stack([g.ravel() for g in jnp.meshgrid(ga, gw, indexing="ij")], 1)
    feats = grid[:, :1] * jnp.tanh(grid[:, 1:] * x[:, 0])
    log_prior = -0.5 * (grid[:, 0] ** 2 / prior_scale_a**2 + grid[:, 1] ** 2 / prior_scale_w**2)
    p_data = y.shape[0]

    def gibbs(f):
        tilt = -beta * feats @ (f - y) / p_data
        return jax.nn.softmax(log_prior + tilt), tilt

    f = jnp.zeros(p_data, grid.dtype)
    for _ in range(iterations):
        # Newton on f − E_{G[f]}σ = 0, Jacobian I + (β/P) Cov_G(σ) (plain Picard can oscillate)
        probs = gibbs(f)[0]
        g = probs @ feats
        centred = feats - g
        cov = (centred * probs[:, None]).T @ centred
        f = f - jnp.linalg.solve(jnp.eye(p_data) + beta / p_data * cov, f - g)
    probs, tilt = gibbs(f)
    cell = (ga[1] - ga[0]) * (gw[1] - gw[0])
    log_z = float(jax.scipy.special.logsumexp(log_prior + tilt) + jnp.log(cell)
                  - jnp.log(2 * jnp.pi * prior_scale_a * prior_scale_w))
    kl = float(probs @ tilt) - log_z
    risk = float(jnp.mean((f - y) ** 2))
    mean = probs @ grid
    return dict(output=f, kl=kl, log_z=log_z, risk=risk, beta_f=kl + 0.5 * beta * risk, mean=np.asarray(mean),
                var=np.asarray(probs @ grid**2 - mean**2), abs_a=float(probs @ jnp.abs(grid[:, 0])),
                residual=float(jnp.linalg.norm(f - probs @ feats)), grid=grid, probs=probs)


def sample_quadrature(key, ref, n: int):
    """n draws of ρ* from the quadrature grid (exact up to the grid spacing)."""
    idx = jax.random.choice(key, ref["grid"].shape[0], (n,), p=ref["probs"])
    return ref["grid"][idx]
