"""Ground truth at finite N: the exact stationary law of the N-particle Langevin system.

The N-particle mean-field Langevin system is a gradient system,
dΘ = ∇ log p_N(Θ) dt / β + sqrt(2/β) dB with

    log p_N(Θ) = Σ_i log π₀(θ_i) − β N · ½ R(f_N(Θ)),   f_N = (1/N) Σ_i σ(·; θ_i),

since ∂/∂θ_i [βN · ½R(f_N)] = β ∇Ψ(θ_i; ρ^N). So p_N is its stationary law at every N, with
no mean-field approximation: the Bayesian posterior of a two-layer network with N units,
output scale 1/N, the unit model's prior on every unit and a Gaussian likelihood of noise
variance P/(βN). ρ* is its N → ∞ limit (propagation of chaos; O(1/N) bias).

Stein's identity for p_N gives a test of stationarity at any N without sampling p_N
(``stein_residual``): a configurational temperature along the data directions, exactly 1
under p_N, which a discretised or minibatch dynamics misses by its step-size bias.

Closed form for the linear unit σ(x; θ) = θ·x with prior N(0, s²I) (tested): the particle
mean θ̄ ~ N(m*, (1/N)(I/s² + βΣ̂)⁻¹), independent of the deviations θ_i − θ̄, which are the
prior's N(0, s²I) per particle conditioned on Σ_i (θ_i − θ̄) = 0.
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._checks import finite, positive_int
from ._mcmc import MCMCDraws, check_kernel, run_chain
from ._keys import single_key
from ._memory import check_run_fits, particle_run_bytes
from .free_energy import FreeEnergy

__all__ = ["ParticlePosterior", "particle_logdensity", "sample_particle_posterior", "stein_residual"]


class ParticlePosterior(MCMCDraws):
    """Draws of p_N: ``samples`` (chains, draws, N, D) in the unit's flat unconstrained
    coordinates, with their ``stats`` (``MCMCDraws``: per draw (chains, draws), the
    adapted step size per chain (chains,))."""

    kernel: str = eqx.field(static=True)


def particle_logdensity(fe: FreeEnergy, num_particles: int):
    """z ↦ log p_N(Θ) for Θ = z.reshape(N, D): Σ_i log π₀(θ_i) − (βN/2) R(f_N(Θ)).

    Its gradient, ∇_{θ_i} = ∇log π₀(θ_i) − β ∇Ψ(θ_i; ρ^N) (β times the Langevin drift), is
    supplied by hand: one forward pass and one vjp per data chunk (``grad_potential_and_output``),
    so a gradient costs one Langevin step and memory stays O(N · chunk).

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> logp = mfsde.particle_logdensity(fe, 8)            # log p_N(Theta), Theta flattened to (N * D,)
        >>> logp(p0[:8].reshape(-1)).shape
        ()
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    n, d, beta = positive_int("num_particles", num_particles), fe.dim, fe.beta
    prior_value_and_grad = jax.vmap(jax.value_and_grad(fe.unit.prior_logdensity))

    def value_and_grad(z):
        theta = z.reshape(n, d)
        lp, gp = prior_value_and_grad(theta)
        g, f = fe.grad_potential_and_output(theta)
        value = jnp.sum(lp) - 0.5 * beta * n * jnp.mean((f - fe.y) ** 2)
        return value, (gp - beta * g).reshape(-1)

    @jax.custom_vjp
    def logdensity(z):
        return value_and_grad(z)[0]

    def bwd(grad, cotangent):
        return (cotangent * grad,)

    logdensity.defvjp(value_and_grad, bwd)
    return logdensity


@eqx.filter_jit
def _sample_posterior(fe: FreeEnergy, n: int, kernel: str, num_warmup: int, num_samples: int,
                      num_integration_steps: int, thinning: int, key, init):
    # compiled once per structure and counts; the data, β and the starts are traced
    logdensity = particle_logdensity(fe, n)
    keys = jax.random.split(key, init.shape[0])
    return jax.vmap(lambda k, x: run_chain(logdensity, kernel, k, x, num_warmup, num_samples,
                                           num_integration_steps, thinning))(keys, init.reshape(len(init), -1))


def sample_particle_posterior(fe: FreeEnergy, key: PRNGKeyArray, num_particles: int, *, num_chains: int = 4,
                              num_warmup: int = 1000, num_samples: int = 1000, kernel: str = "nuts",
                              init: Float[Array, "c n d"] | None = None, thinning: int = 1,
                              num_integration_steps: int = 16) -> ParticlePosterior:
    """Sample the exact N-particle stationary law p_N with BlackJAX on all N·D coordinates.

        p_N(Θ) ∝ Π_i π₀(θ_i) · exp(−β N · ½ R(f_N(Θ))).

    One chain per row of ``init`` (default: ``num_chains`` independent prior draws of N
    particles), vmapped and jit-compiled once; NUTS (default) or HMC with window
    adaptation of the step size and a diagonal mass matrix, or MALA (``mfsde._mcmc``).
    Each gradient costs one Langevin drift evaluation (``particle_logdensity``). Keeps
    ``num_samples`` draws per chain, every ``thinning``-th state (memory: chains · draws ·
    N · D numbers). ``mfsde.to_inference_data`` turns the result into a DataTree.

    Returns ``ParticlePosterior(samples (chains, draws, N, D), acceptance, diverging,
    energy, num_integration_steps, step_size, kernel)``.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> post = mfsde.sample_particle_posterior(fe, jax.random.key(1), 8, num_chains=2, num_warmup=100,
        ...                                        num_samples=100)
        >>> post.samples.shape                                 # (chains, draws, N, D) of p_N
        (2, 100, 8, 2)
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    if not fe.finite_beta:
        raise ValueError("the N-particle posterior exp(-beta N R/2) needs a finite beta")
    check_kernel(kernel)
    for name, v in (("num_particles", num_particles), ("num_chains", num_chains), ("num_warmup", num_warmup),
                    ("num_samples", num_samples), ("thinning", thinning)):
        positive_int(name, v)
    n, d = int(num_particles), fe.dim
    key, k0 = jax.random.split(single_key(key, replicates="its replicates are its num_chains chains, drawn from one key"))
    if init is None:
        init = jax.vmap(lambda k: fe.prior_sample(k, n))(jax.random.split(k0, int(num_chains)))
    init = jnp.asarray(init, fe.x.dtype)
    if init.ndim != 3 or init.shape[1:] != (n, d):
        raise ValueError(f"init must have shape (chains, {n}, {d}), got {init.shape}")
    # under an outer jit the values are not known here
    finite("init", init)
    kept = int(num_samples) * d * fe.x.dtype.itemsize
    check_run_fits("sample_particle_posterior", particle_run_bytes(fe, d, lambda m: kept * m), n, int(init.shape[0]),
                   "chains", "The draws kept are num_samples x N x D numbers per chain: fewer num_samples (a larger "
                   "thinning) lowers them. ")
    draws = _sample_posterior(fe, n, kernel, int(num_warmup), int(num_samples), int(num_integration_steps),
                              int(thinning), key, init)
    c = init.shape[0]
    return ParticlePosterior(draws.position.reshape(c, int(num_samples), n, d), draws.stats, kernel)


def stein_residual(fe: FreeEnergy, particles: Float[Array, "n d"], key: PRNGKeyArray
                   ) -> tuple[Float[Array, ""], Float[Array, ""]]:
    """(r, c): a Stein residual of the N-particle law with E_{p_N}[r] = 0 exactly, and its scale.

    Stein's identity E_p[⟨∇log p, g⟩ + ∇·g] = 0 for p = p_N and the risk's gradient field
    g = ∇_Θ (N/2) R(f_N) = (∇Ψ(θ_i; f_N))_i gives, per particle,

        r = (1/N) Σ_i [β ‖∇Ψ_i‖² − ∇log π₀(θ_i)·∇Ψ_i]  −  (1/N) Σ_i [Δ_θ Ψ(θ_i; f_N) + ⟨∇σ(θ_i), ∇σ(θ_i)⟩/N],
        c = (1/N) Σ_i [Δ_θ Ψ(θ_i; f_N) + ⟨∇σ(θ_i), ∇σ(θ_i)⟩/N]

    (⟨u, v⟩ = (1/P) Σ_p u_p·v_p; the last term is ∂f_N/∂θ_i's share of ∇·g). 1 + r/c is a
    configurational temperature along the directions the data constrain: 1 for the exact
    stationary law at every N; a discretisation (Euler–Maruyama's O(h), Leimkuhler–
    Matthews's O(h²)) or minibatch noise heats those stiff directions and makes it > 1,
    where conditional-mean tests see nothing (the law stays self-consistent to first order).
    Time-averaged over a stationary run (the ``stein_residual`` observable), its mean is a
    reference-free measure of the integrator's bias. The two traces are Hutchinson
    estimates with one Rademacher probe per particle (``key``; draw a fresh key per
    evaluation so the probe noise averages out): one Hessian-vector product of Ψ with f_N
    frozen and one Jacobian-vector product of the features, about four drift evaluations.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> r, c = mfsde.stein_residual(fe, p0, jax.random.key(2))
        >>> r.shape, bool(c > 0)                               # residual, and the curvature it is relative to
        ((), True)
    """
    n = particles.shape[0]
    g, f = fe.grad_potential_and_output(particles)
    gp = fe.grad_prior_logdensity(particles)
    v = jax.random.rademacher(single_key(key, replicates="one Hutchinson probe per call"), particles.shape,
                              particles.dtype)
    laplacian = jnp.sum(v * jax.jvp(lambda th: fe.potential_and_grad(th, f)[1], (particles,), (v,))[1], axis=1)
    xc, _, wc = fe._chunked(n, fe.x)

    def chunk(acc, batch):
        xb, wb = batch
        dsigma = jax.jvp(lambda th: fe.features(th, xb), (particles,), (v,))[1]
        return acc + jnp.sum(dsigma**2 * wb, axis=1), None

    grad_sq = jax.lax.scan(chunk, jnp.zeros(n, particles.dtype), (xc, wc))[0] / fe.num_data
    kinetic = fe.beta * jnp.sum(g * g, axis=1) - jnp.sum(gp * g, axis=1)
    curvature = jnp.mean(laplacian + grad_sq / n)
    return jnp.mean(kinetic) - curvature, curvature
