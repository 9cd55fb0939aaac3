"""The spherical 3-spin target of Vanden-Eijnden's talk (Rotskoff–Vanden-Eijnden):

    f(x) = (1/d) Σ_{p,q,r} a_pqr x_p x_q x_r,    a_pqr ~ N(0, 1) (fixed by a seed),

with x uniform on the sphere of radius √d in R^d. The units are c · h(a·x + b) with h the
logistic sigmoid, a ∈ R^d, b, c ∈ R; priors c ~ N(0, 1), a ~ N(0, I/d) (so a·x = O(1) on the
sphere), b ~ N(0, 1). Data come fresh from the population (``sampler``): the risk is the
population risk, estimated on a fixed evaluation sample (``FreeEnergy.from_sampler``).

f is a random cubic, O(1) on the sphere after the 1/d: Var f = (1/d²) Σ E[(x_p x_q x_r)²]
≈ d (each of the d³ terms is O(1)), so ``normalised_target`` divides by its population
standard deviation (estimated once, fixed) to keep the risk of the zero network near 1 at
every d. The talk plots f along great circles x_i = √d cos θ, x_j = √d sin θ
(``great_circle``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist

DEFAULTS = dict(dim=10, seed=0, num_eval=4096)


def coefficients(dim: int = DEFAULTS["dim"], seed: int = DEFAULTS["seed"]):
    """a_pqr ~ N(0, 1), shape (d, d, d), from ``seed``."""
    return jax.random.normal(jax.random.key(seed), (dim, dim, dim))


def sphere(key, num: int, dim: int):
    """num points uniform on the sphere of radius √d, shape (num, d)."""
    g = jax.random.normal(key, (num, dim))
    return jnp.sqrt(dim) * g / jnp.linalg.norm(g, axis=1, keepdims=True)


def three_spin(x, a):
    """f(x) = (1/d) Σ_{pqr} a_pqr x_p x_q x_r for x of shape (P, d)."""
    return jnp.einsum("pqr,np,nq,nr->n", a, x, x, x) / x.shape[-1]


def target_scale(a, num: int = 16384):
    """The population standard deviation of f (a fixed Monte Carlo estimate, seed 1)."""
    return float(jnp.std(three_spin(sphere(jax.random.key(1), num, a.shape[0]), a)))


def make_unit(dim: int = DEFAULTS["dim"]):
    """Unit c · sigmoid(a·x + b) with c ~ N(0, 1), a ~ N(0, I/d), b ~ N(0, 1)."""

    def unit(x):
        c = numpyro.sample("c", dist.Normal(0.0, 1.0))
        a = numpyro.sample("a", dist.Normal(0.0, 1.0 / np.sqrt(dim)).expand([dim]).to_event(1))
        b = numpyro.sample("b", dist.Normal(0.0, 1.0))
        return c * jax.nn.sigmoid(a @ x.T + b)

    return unit


def make_sampler(dim: int = DEFAULTS["dim"], seed: int = DEFAULTS["seed"]):
    """sampler(key, B) -> (x (B, d) uniform on the √d-sphere, y = f(x)/sd(f) (B,))."""
    a = coefficients(dim, seed)
    scale = target_scale(a)

    def sampler(key, num):
        x = sphere(key, num, dim)
        return x, three_spin(x, a) / scale

    return sampler


def great_circle(dim: int, i: int = 0, j: int = 1, num: int = 361):
    """(θ (num,), x (num, d)): the great circle x_i = √d cos θ, x_j = √d sin θ, other
    coordinates 0, θ ∈ [0, 2π]."""
    theta = jnp.linspace(0.0, 2.0 * jnp.pi, num)
    x = jnp.zeros((num, dim)).at[:, i].set(jnp.sqrt(dim) * jnp.cos(theta)).at[:, j].set(jnp.sqrt(dim) * jnp.sin(theta))
    return theta, x
