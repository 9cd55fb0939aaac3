"""The self-consistent Gibbs measure ρ* ∝ π₀ exp(−βΨ(·; ρ*)) sampled with BlackJAX MCMC.

G[ρ] depends on ρ only through f = f_ρ on the data, so ρ* is a fixed point of the map
f ↦ g(f) = E_{G[f]}[σ(x; θ)] on R^P, each evaluation an MCMC run. Its Jacobian comes with
the draws: ∂g_p/∂f_q = −(β/P) Cov_{G[f]}(σ(x_p; θ), σ(x_q; θ)), so the Newton step for
F(f) = f − g(f) = 0 solves (I + (β/P) C) δ = f − g with the draws' covariance C = U Uᵀ
(U: P × S centred features / √S), by Woodbury in the S × S space.

Plain Picard iteration f ← g(f) diverges when the Jacobian's spectral radius exceeds 1;
in the linear case g(f) = X m(f) with m(f) = −βs²(Σ̂ m − ĉ) (prior N(0, s²I)), so its
contraction factor is β s² λ_max(Σ̂).
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple

import blackjax
from blackjax.smc import resampling
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import particle_array, finite, number_in, positive_int, positive_number
from ._mcmc import MCMCDraws, check_kernel, run_chain
from ._keys import single_key
from ._trajectory import Trajectory
from .free_energy import FreeEnergy
from .particles import Particles

__all__ = ["GibbsSamples", "FixedPoint", "GibbsNormalizer", "sample_gibbs", "sample_fixed_point",
           "gibbs_log_normalizer"]

# Draws used for the Jacobian (the covariance of the features) in a Newton step.
_JACOBIAN_DRAWS = 4096
# Batch means for the Monte Carlo standard error of E_G[σ].
_BATCHES_PER_CHAIN = 5


class GibbsSamples(MCMCDraws):
    """Draws of G[f], ``samples`` (chains, draws, D), with their ``stats`` (``MCMCDraws``)."""


class FixedPoint(MCMCDraws):
    """Result of ``sample_fixed_point``: draws of ρ* (``samples`` (chains, draws, D) and
    their ``stats``, ``MCMCDraws``) and the iteration history (a pytree; the kernel's name
    is static)."""

    output: Float[Array, " p"]
    residuals: np.ndarray
    converged: bool
    outputs: np.ndarray
    mc_errors: np.ndarray
    kernel: str = eqx.field(static=True)


@eqx.filter_jit
def _sample_gibbs(fe: FreeEnergy, kernel: str, num_warmup: int, num_samples: int, num_integration_steps: int,
                  key, output, init) -> "GibbsSamples":
    # compiled once per structure (the unit, shapes, the kernel and its counts): the data,
    # β, the output and the starts are traced, so every check_fixed_point / sample_gibbs /
    # fixed-point round with the same settings reuses one program
    logdensity = fe.gibbs_logdensity(output)
    keys = jax.random.split(key, init.shape[0])
    d = jax.vmap(lambda k, x: run_chain(logdensity, kernel, k, x, num_warmup, num_samples,
                                        num_integration_steps))(keys, init)
    return GibbsSamples(d.position, d.stats)


def _gibbs_runner(fe: FreeEnergy, kernel: str, num_warmup: int, num_samples: int, num_integration_steps: int):
    """(key, output, init) -> GibbsSamples of G[output], one chain per row of init."""
    check_kernel(kernel)
    return functools.partial(_sample_gibbs, fe, kernel, int(num_warmup), int(num_samples), int(num_integration_steps))


def sample_gibbs(fe: FreeEnergy, key: PRNGKeyArray, output: Float[Array, " p"], init: Float[Array, "c d"], *,
                 num_warmup: int = 500, num_samples: int = 500, kernel: str = "nuts",
                 num_integration_steps: int = 16) -> GibbsSamples:
    """Draws of the Gibbs measure G[f] (dθ) ∝ π₀(dθ) exp(−βΨ(θ; f)) for a frozen output f.

    One BlackJAX chain per row of ``init`` (vmapped). nuts / hmc: Stan-style window
    adaptation of step size and diagonal mass matrix over ``num_warmup`` steps; mala
    (no mass matrix): the step size h is tuned over the warmup by Robbins–Monro,
    log h ← log h + (t + 10)^{-0.6} (acceptance − 0.574), then held fixed.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> g = mfsde.sample_gibbs(fe, jax.random.key(2), fe.output(p0), p0[:2], num_warmup=100, num_samples=100)
        >>> g.samples.shape                                    # (chains, draws, D) of G[f]
        (2, 100, 2)
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    key = single_key(key, replicates="its replicates are the chains, one per row of init")
    output = fe._check_output(output)
    init = jnp.asarray(init, fe.x.dtype)
    if init.ndim != 2 or init.shape[1] != fe.dim:
        raise ValueError(f"init must have shape (chains, D) = (chains, {fe.dim}), one start per chain, got {init.shape}")
    finite("init", init)
    for name, v in (("num_warmup", num_warmup), ("num_samples", num_samples),
                    ("num_integration_steps", num_integration_steps)):
        positive_int(name, v)
    return _gibbs_runner(fe, kernel, num_warmup, num_samples, num_integration_steps)(key, output, init)


@eqx.filter_jit
def _moments(fe: FreeEnergy, samples):
    """E_G[σ(x; θ)] (P,), its Monte Carlo s.e. (P,) and a (P, S') centred-feature factor U.

    The s.e. is from batch means (5 contiguous batches per chain), which holds for
    autocorrelated draws (HMC with a fixed path length can be strongly so).
    """
    c, n, d = samples.shape
    per = n // _BATCHES_PER_CHAIN
    batches = samples[:, : per * _BATCHES_PER_CHAIN].reshape(c * _BATCHES_PER_CHAIN, per, d)
    means = jax.lax.map(fe.output, batches)                  # (B, P)
    g = means.mean(0)
    se = jnp.std(means, axis=0, ddof=1) / math.sqrt(means.shape[0])
    flat = samples.reshape(-1, d)
    sub = flat[:: max(1, flat.shape[0] // _JACOBIAN_DRAWS)]
    feats = fe.features(sub, fe.x)                          # (S', P): S' <= 4096 draws
    centred = feats - feats.mean(0)
    return g, se, centred.T / math.sqrt(sub.shape[0])


def _start_of(fe: FreeEnergy, start, num_chains: int):
    """(f_ρ (P,), num_chains rows of the cloud) of ``sample_fixed_point``'s ``start``."""
    cloud = start.particles if isinstance(start, Trajectory) else start
    if not isinstance(cloud, Particles):
        cloud = jnp.asarray(cloud, fe.x.dtype)
        if cloud.ndim == 3 and isinstance(start, Trajectory):
            cloud = cloud.reshape(-1, cloud.shape[-1])  # replicate runs: one pooled cloud
    theta = particle_array("start", cloud, fe.dim)
    finite("start", theta)
    n = theta.shape[0]
    if n < num_chains:
        raise ValueError(f"start has {n} particles, fewer than num_chains = {num_chains} (one start per chain)")
    rows = (jnp.arange(num_chains) * n) // num_chains
    return fe.output(cloud), jnp.asarray(theta, fe.x.dtype)[rows]


def sample_fixed_point(fe: FreeEnergy, key: PRNGKeyArray, *, num_chains: int = 4, num_warmup: int = 500,
                       num_samples: int = 500, kernel: str = "nuts", tol: float = 1e-2, max_iter: int = 10,
                       output0: Array | None = None, damping: float = 1.0,
                       num_integration_steps: int = 16, start=None) -> FixedPoint:
    """Sample ρ* = G[ρ*] by Newton iteration on f ↦ E_{G[f]}[σ], each round a BlackJAX run.

    Round k samples G[f_k] (chains warm-started from the previous round's last states),
    estimates g = E_G[σ], its Monte Carlo standard error se, and C = Cov_G(σ), and stops
    when ‖f_k − g‖ ≤ max(tol ‖g‖, 2 ‖se‖) (the residual is then indistinguishable from
    Monte Carlo noise); otherwise f_{k+1} = f_k − damping · (I + (β/P) C)⁻¹ (f_k − g). A
    round whose residual exceeds the best so far halves the last step instead (the map is
    nonlinear and a full Newton step from far away can overshoot).
    Starts from f_0 = ``output0`` (default 0: G[0] is the prior tilted by −β E[−yσ]), or,
    with ``start`` (particles (N, D), ``Particles``, or a ``Trajectory`` whose final
    particles, replicates pooled, are used), from f_0 = f_ρ of those particles, the chains
    starting at num_chains of them spread over the cloud. A short mean-field Langevin run is
    such a start: far from ρ* the map f ↦ g(f) is strongly nonlinear (β Cov_G changes with
    f) and Newton from f_0 = 0 overshoots, while from f_ρ of a Langevin cloud it is in its
    quadratic range.
    Non-convergence within ``max_iter`` rounds warns and returns ``converged=False`` with
    the residual history. Residuals are relative, ‖f_k − g‖ / ‖g‖.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> fp = mfsde.sample_fixed_point(fe, jax.random.key(1), num_chains=2, num_warmup=200, num_samples=200)
        >>> fp.samples.shape, fp.output.shape                  # draws of rho*, f_rho* on the data
        ((2, 200, 2), (64,))
        >>> bool(jnp.allclose(fp.samples.mean((0, 1)), lg.fixed_point_mean(fe.x, fe.y, 4.0), atol=0.2))
        True
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    if not fe.finite_beta:
        raise ValueError("the fixed point of the Gibbs map needs a finite beta")
    for name, v in (("num_chains", num_chains), ("num_warmup", num_warmup), ("num_samples", num_samples),
                    ("max_iter", max_iter), ("num_integration_steps", num_integration_steps)):
        positive_int(name, v)
    positive_number("tol", tol)
    number_in("damping", damping, 0.0, 1.0, closed_hi=True)
    if output0 is not None:
        output0 = fe._check_output(output0, "output0")
    if start is not None:
        if output0 is not None:
            raise ValueError("give output0 or start (whose output is f_0), not both")
        output0, chain_starts = _start_of(fe, start, num_chains)
    if num_samples < 2 * _BATCHES_PER_CHAIN:
        raise ValueError(f"num_samples must be at least {2 * _BATCHES_PER_CHAIN} (batch-means error), got {num_samples}")
    run = _gibbs_runner(fe, kernel, num_warmup, num_samples, num_integration_steps)
    p = fe.num_data
    f = jnp.zeros(p, fe.x.dtype) if output0 is None else jnp.asarray(output0, fe.x.dtype)
    key, k0 = jax.random.split(single_key(key, replicates="its replicates are its num_chains chains, drawn from one key"))
    init = fe.prior_sample(k0, num_chains) if start is None else chain_starts
    a = fe.beta / p
    residuals, outputs, errors = [], [], []
    converged = False
    best, f_prev, delta = math.inf, None, None
    for _ in range(max_iter):
        key, k = jax.random.split(key)
        gs = run(k, f, init)
        g, se, u = _moments(fe, gs.samples)
        r = f - g
        norm_g = float(jnp.linalg.norm(g)) or 1.0
        res = float(jnp.linalg.norm(r))
        residuals.append(res / norm_g)
        errors.append(float(jnp.linalg.norm(se)) / norm_g)
        outputs.append(np.asarray(g))
        init = gs.samples[:, -1]
        if res <= max(tol * norm_g, 2.0 * float(jnp.linalg.norm(se))):
            converged = True
            break
        if res > best and f_prev is not None:
            # Newton overshot (the map is nonlinear): back off along the last step.
            delta = 0.5 * delta
            f = f_prev - delta
            continue
        best, f_prev = res, f
        if u.shape[1] < p:
            # Woodbury: (I + a U Uᵀ)⁻¹ r = r − a U (I + a UᵀU)⁻¹ Uᵀ r, an S × S solve
            small = jnp.eye(u.shape[1], dtype=u.dtype) + a * (u.T @ u)
            step = r - a * (u @ jnp.linalg.solve(small, u.T @ r))
        else:
            step = jnp.linalg.solve(jnp.eye(p, dtype=u.dtype) + a * (u @ u.T), r)
        delta = damping * step
        f = f - delta
    if not converged:
        warnings.warn(f"sample_fixed_point did not converge in {max_iter} rounds; relative residuals "
                      f"{np.round(residuals, 4).tolist()}", RuntimeWarning, stacklevel=2)
    return FixedPoint(samples=gs.samples, stats=gs.stats, output=g, residuals=np.asarray(residuals),
                      converged=converged, outputs=np.stack(outputs), mc_errors=np.asarray(errors), kernel=kernel)


@eqx.filter_jit
def _tempered_smc(fe: FreeEnergy, output, init, key, target_ess: float, num_mcmc_steps: int, step_size: float,
                  num_integration_steps: int):
    """(final SMC state, log Z, number of temperatures) of BlackJAX's adaptive tempered SMC
    from π₀ to G[output]; compiled once per structure and settings (output, data, β traced)."""
    log_tilt = fe.gibbs_log_tilt(output)
    inv_mass = jnp.var(init, axis=0)[None]
    params = dict(step_size=jnp.asarray([step_size], init.dtype), inverse_mass_matrix=inv_mass,
                  num_integration_steps=jnp.asarray([num_integration_steps]))
    smc = blackjax.adaptive_tempered_smc(fe.unit.prior_logdensity, log_tilt, blackjax.hmc.build_kernel(),
                                         blackjax.hmc.init, params, resampling.systematic, target_ess,
                                         num_mcmc_steps=num_mcmc_steps)

    def cond(c):
        return c[0].tempering_param < 1.0

    def body(c):
        state, k, log_z, n = c
        k, sub = jax.random.split(k)
        state, info = smc.step(sub, state)
        return state, k, log_z + info.log_likelihood_increment, n + 1

    state, _, log_z, n = jax.lax.while_loop(cond, body, (smc.init(init), key, jnp.zeros((), init.dtype), 0))
    return state, log_z, n


@eqx.filter_jit
def _mean_log_tilt(fe: FreeEnergy, output, points, weights):
    """Σ_j w_j (−βΨ(v_j; f)), the weighted mean log tilt of G[f] at points v_j."""
    return jnp.sum(weights * jax.vmap(fe.gibbs_log_tilt(output))(points))


class GibbsNormalizer(NamedTuple):
    """``gibbs_log_normalizer``: log Z of G[f] and KL(G[f]‖π₀) by adaptive tempered SMC."""

    log_z: float
    kl: float
    expected_log_tilt: float
    num_temperatures: int
    particles: Float[Array, "n d"]
    weights: Float[Array, " n"]


def gibbs_log_normalizer(fe: FreeEnergy, key: PRNGKeyArray, output: Float[Array, " p"], *, num_particles: int = 2000,
                         target_ess: float = 0.5, num_mcmc_steps: int = 10, step_size: float = 0.3,
                         num_integration_steps: int = 8, samples: Array | None = None) -> GibbsNormalizer:
    """log Z = log E_π₀[exp(−βΨ(θ; f))] and KL(G[f]‖π₀) = −β E_G[Ψ] − log Z.

    BlackJAX adaptive tempered SMC from π₀ (λ = 0) to G[f] (λ = 1): each temperature is
    chosen so the ESS of the incremental weights is ``target_ess`` · N, the particles are
    resampled (systematic) and moved by ``num_mcmc_steps`` HMC steps (mass matrix = the
    prior draws' variances, step ``step_size``); log Z is the sum of the log mean
    incremental weights. E_G[Ψ] comes from ``samples`` of G[f] when given (e.g. the draws of
    ``sample_fixed_point``), else from the final weighted SMC particles.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> z = mfsde.gibbs_log_normalizer(fe, jax.random.key(2), fe.output(p0), num_particles=256)
        >>> bool(jnp.isfinite(z.log_z)), bool(z.kl >= 0)        # log Z[f] and KL(G[f] || prior)
        (True, True)
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    if not fe.finite_beta:
        raise ValueError("the Gibbs measure needs a finite beta")
    output = fe._check_output(output)
    num_particles = positive_int("num_particles", num_particles, minimum=2)
    number_in("target_ess", target_ess, 0.0, 1.0)
    positive_int("num_mcmc_steps", num_mcmc_steps)
    positive_number("step_size", step_size)
    positive_int("num_integration_steps", num_integration_steps)
    fe.gibbs_log_tilt(output)  # refuses a degenerate Gibbs measure before any work
    k0, k1 = jax.random.split(single_key(key, replicates="one SMC run of num_particles particles"))
    init = fe.prior_sample(k0, num_particles)
    state, log_z, n = _tempered_smc(fe, output, init, k1, float(target_ess), int(num_mcmc_steps), float(step_size),
                                    int(num_integration_steps))
    if samples is None:
        tilt = float(_mean_log_tilt(fe, output, state.particles, state.weights))
    else:
        points = jnp.asarray(samples, fe.x.dtype).reshape(-1, fe.dim)
        tilt = float(_mean_log_tilt(fe, output, points, jnp.full(points.shape[0], 1.0 / points.shape[0], fe.x.dtype)))
    return GibbsNormalizer(float(log_z), tilt - float(log_z), tilt, int(n), state.particles, state.weights)
