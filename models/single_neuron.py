"""The lecture's planted neuron: teacher y = σ(⟨w*, x⟩), student units a·σ(⟨w, x⟩).

x ~ N(0, I_d), ‖w*‖ = 1 (so ⟨w*, x⟩ ~ N(0, 1)), σ = tanh (σ' > 0 everywhere, as the lecture
assumes). Priors: a ~ N(0, s_a²) and the "uninformative" w ~ N(0, (λ²/d) I_d), independent.
A mean-field network f(x) = (1/N) Σ a_i σ(⟨w_i, x⟩) can represent the teacher exactly (all
units at a = 1, w = w*), while units initialised at random are nearly orthogonal to w*.
"""

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

# Demo sizes: the slowest mode, the a-marginal, relaxes at rate 1/(β s_a²) (OU in a), so
# stationarity needs t1 of a few β s_a² (measured: flat risk from t ≈ 300 on).
DEFAULTS = dict(dim=16, num_data=2048, num_particles=1024, beta=200.0, prior_scale_a=1.0, prior_scale_w=1.0,
                noise=0.0, t1=600.0, dt0=0.1)


def make_unit(prior_scale_a: float = DEFAULTS["prior_scale_a"], prior_scale_w: float = DEFAULTS["prior_scale_w"],
              activation=jnp.tanh):
    """Unit model a·σ(⟨w, x⟩) with a ~ N(0, s_a²), w ~ N(0, (λ²/d) I_d), λ = prior_scale_w."""

    def unit(x):
        d = x.shape[-1]
        a = numpyro.sample("a", dist.Normal(0.0, prior_scale_a))
        w = numpyro.sample("w", dist.Normal(0.0, prior_scale_w / jnp.sqrt(d)).expand([d]).to_event(1))
        # parameter on the left: under the particle vmap the particle axis leads (N, P)
        # intermediates, which saves XLA two transposes a step (mfsde.model docstring).
        return a * activation(w @ x.T)

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
