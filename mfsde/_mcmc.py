"""One BlackJAX chain with warmup, shared by every sampler of the package.

nuts / hmc: Stan-style window adaptation of the step size and a diagonal mass matrix;
mala (no mass matrix): the step size h is tuned over the warmup by Robbins–Monro,
log h ← log h + (t + 10)^{-0.6} (acceptance − 0.574), then held fixed. The caller jits and
vmaps over chains (blackjax's convention).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import blackjax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

__all__ = ["KERNELS", "MALA_TARGET_ACCEPTANCE", "SamplerStats", "ChainDraws", "MCMCDraws", "run_chain", "check_kernel"]

KERNELS = ("nuts", "hmc", "mala")
# MALA's step size is tuned during warmup by Robbins–Monro on log h towards this acceptance.
MALA_TARGET_ACCEPTANCE = 0.574


class SamplerStats(NamedTuple):
    """Per-draw statistics of a chain, shape (s,) (vmapped over chains: (c, s)): acceptance
    probability, whether the trajectory diverged, the Hamiltonian's energy (NaN for MALA),
    leapfrog steps taken (1 for MALA); and the adapted step size, shape () (or (c,))."""

    acceptance: Float[Array, " s"]
    diverging: Array
    energy: Float[Array, " s"]
    num_integration_steps: Array
    step_size: Float[Array, ""]


class ChainDraws(NamedTuple):
    """Draws of one chain (or, vmapped, of several: a leading chain axis everywhere)."""

    position: Float[Array, "s d"]
    stats: SamplerStats


class MCMCDraws(eqx.Module):
    """What every sampler's result holds: ``samples`` (chains, draws, ...) and their
    ``stats`` (``SamplerStats``, (chains, draws) and (chains,)), whose fields read as the
    result's own (``result.acceptance``...)."""

    samples: Array
    stats: SamplerStats

    @property
    def acceptance(self) -> Float[Array, "c s"]:
        return self.stats.acceptance

    @property
    def diverging(self) -> Array:
        return self.stats.diverging

    @property
    def energy(self) -> Float[Array, "c s"]:
        return self.stats.energy

    @property
    def num_integration_steps(self) -> Array:
        return self.stats.num_integration_steps

    @property
    def step_size(self) -> Float[Array, " c"]:
        return self.stats.step_size


def check_kernel(kernel: str) -> None:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")


def _mala_warmup(logdensity, key, x0, num_warmup):
    def step(carry, k):
        state, log_h, t = carry
        new, info = blackjax.mala(logdensity, jnp.exp(log_h)).step(k, state)
        gamma = (t + 10.0) ** -0.6
        return (new, log_h + gamma * (info.acceptance_rate - MALA_TARGET_ACCEPTANCE), t + 1.0), None

    state = blackjax.mala(logdensity, 0.1).init(x0)
    init = (state, jnp.log(jnp.asarray(0.1, x0.dtype)), jnp.asarray(0.0, x0.dtype))
    (state, log_h, _), _ = jax.lax.scan(step, init, jax.random.split(key, num_warmup))
    return state, jnp.exp(log_h)


def run_chain(logdensity: Callable, kernel: str, key: PRNGKeyArray, x0: Float[Array, " d"], num_warmup: int,
              num_samples: int, num_integration_steps: int = 16, thinning: int = 1) -> ChainDraws:
    """Warm up one chain from ``x0``, then keep ``num_samples`` draws, every ``thinning``-th state."""
    k_warm, k_draw = jax.random.split(key)
    if kernel == "mala":
        state, h = _mala_warmup(logdensity, k_warm, x0, num_warmup)
        algo = blackjax.mala(logdensity, h)
    else:
        extra = {} if kernel == "nuts" else {"num_integration_steps": num_integration_steps}
        base = blackjax.nuts if kernel == "nuts" else blackjax.hmc
        (state, params), _ = blackjax.window_adaptation(base, logdensity, **extra).run(k_warm, x0, num_warmup)
        algo = base(logdensity, **(extra | params))
        h = params["step_size"]

    def one(state, k):
        state, info = algo.step(k, state)
        return state, (info.acceptance_rate, getattr(info, "is_divergent", jnp.asarray(False)),
                       jnp.asarray(getattr(info, "energy", jnp.nan), x0.dtype),
                       jnp.asarray(getattr(info, "num_integration_steps", 1), jnp.int32))

    def keep(state, k):
        if thinning == 1:
            state, (acc, div, energy, steps) = one(state, k)
            return state, (state.position, acc, div, energy, steps)
        state, (acc, div, energy, steps) = jax.lax.scan(one, state, jax.random.split(k, thinning))
        return state, (state.position, acc.mean(), div.any(), energy[-1], steps.sum())

    _, (pos, acc, div, energy, steps) = jax.lax.scan(keep, state, jax.random.split(k_draw, num_samples))
    return ChainDraws(pos, SamplerStats(acc, div, energy, steps, jnp.asarray(h, x0.dtype)))
