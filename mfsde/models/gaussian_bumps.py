"""Rotskoff's 1-D example (neuron-birth-death, gaussian_example): units are Gaussian bumps.

Unit σ(x; c, y) = c · N(x; y, s²) with s² = 0.5, a bump of height c centred at y. Target:
f*(x) = (1/3) Σ_k c_k N(x; y_k, s_k²) with bumps at y = (−2, 0, 2), variances (0.5, 1, 0.5)
and weights (1, −2, 1): the mean of three units of varying width, which units of fixed
width s² represent only approximately (a positive bump sits on each side of a negative one).

The notebook's energy is the population risk ∫(f − f_n)² dx over the line. Here the "data"
are a uniform grid x_p on [−L, L] (the target is below 1e-6 outside [−6, 6]), so the risk
R = (1/P) Σ_p (f*(x_p) − f(x_p))² is ∫(f* − f)² dx / (2L) up to quadrature error, and time
runs 2L times slower than the notebook's: its 3000 steps of dt = 1e-2 (t = 30) are t = 360
here at L = 6 (``DEFAULTS``), and its rate per step α|V| (α = 0.05) is α_here · dt0 · |V| with
α_here = 0.05 · 2L / dt0.

Priors: c ~ N(0, 1), y ~ N(0, 1) (the notebook's re-injection law for y; at β = ∞ the prior
only supplies the "prior" variant's fresh draws). The notebook's start y₀ ~ U(−2, 2),
c₀ ~ N(0, 1) is ``start``; its "bad init" y₀ = −2 + 0.1·N(0, 1) is ``bad_start``.
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

UNIT_VARIANCE = 0.5
TARGET = dict(centres=(-2.0, 0.0, 2.0), variances=(0.5, 1.0, 0.5), weights=(1.0, -2.0, 1.0))
DEFAULTS = dict(half_width=6.0, num_data=241, num_particles=200, dt0=0.12, steps=3000, bad_steps=10000,
                alpha_per_step=0.05)


def bump(x, centre, variance):
    """N(x; centre, variance), the Gaussian density."""
    return jnp.exp(-((x - centre) ** 2) / (2.0 * variance)) / jnp.sqrt(2.0 * jnp.pi * variance)


def unit(x):
    """σ(x; c, y) = c · N(x; y, 0.5) on x of shape (P, 1)."""
    c = numpyro.sample("c", dist.Normal(0.0, 1.0))
    y = numpyro.sample("y", dist.Normal(0.0, 1.0))
    return c * bump(x[:, 0], y, UNIT_VARIANCE)


def target(x):
    """f*(x) = (1/3) Σ_k c_k N(x; y_k, s_k²) on x of shape (P, 1)."""
    t = TARGET
    return sum(c * bump(x[:, 0], y, s2) for y, s2, c in zip(t["centres"], t["variances"], t["weights"])) / 3.0


def make_data(half_width: float = DEFAULTS["half_width"], num_data: int = DEFAULTS["num_data"]):
    """(x (P, 1), f*(x) (P,)) on the uniform grid of P points in [−L, L]."""
    x = jnp.linspace(-half_width, half_width, num_data)[:, None]
    return x, target(x)


def alpha(dt0: float = DEFAULTS["dt0"], half_width: float = DEFAULTS["half_width"],
          per_step: float = DEFAULTS["alpha_per_step"]) -> float:
    """The rate α of ``mfsde.wfr`` whose per-step kill/clone probability α·dt0·|V − V̄| is the
    notebook's α|V| (its V is the line integral, 2L times ours)."""
    return per_step * 2.0 * half_width / dt0


def start(key, n: int = DEFAULTS["num_particles"]):
    """The notebook's start: columns (c, y) with c ~ N(0, 1), y ~ U(−2, 2); shape (n, 2)."""
    kc, ky = jax.random.split(key)
    return jnp.stack([jax.random.normal(kc, (n,)), jax.random.uniform(ky, (n,), minval=-2.0, maxval=2.0)], axis=1)


def bad_start(key, n: int = DEFAULTS["num_particles"]):
    """The notebook's bad start: c ~ N(0, 1), y = −2 + 0.1·N(0, 1), every bump on the left."""
    kc, ky = jax.random.split(key)
    return jnp.stack([jax.random.normal(kc, (n,)), -2.0 + 0.1 * jax.random.normal(ky, (n,))], axis=1)
