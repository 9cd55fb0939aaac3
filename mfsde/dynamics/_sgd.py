"""Finite-N (noisy) SGD with the mean-field scaling: the discrete object the SDEs are limits of."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..diagnostics._moments import LawMoments
from ..free_energy import FreeEnergy
from ..particle_posterior import stein_residual
from ._core import Trajectory
from ._keys import as_keys
from ._langevin import _STEIN_SEED, _unit_schedule

__all__ = ["sgd"]


class _SGDStep(eqx.Module):
    """One step θ ← θ + η_k [−∇̂Ψ + β⁻¹∇log π₀] + sqrt(2η_k/β) g on the (N, D) array."""

    fe: FreeEnergy
    step_size: float = eqx.field(static=True)
    batch_size: int | None = eqx.field(static=True)
    noise: bool = eqx.field(static=True)
    prior_drift: bool = eqx.field(static=True)
    schedule: Callable = eqx.field(static=True)

    def batch(self, key):
        fe = self.fe
        if fe.sampler is not None:
            return fe.sampler(key, self.batch_size)
        if self.batch_size is None:
            return fe.x, fe.y
        idx = jax.random.randint(key, (self.batch_size,), 0, fe.num_data)
        return fe.x[idx], fe.y[idx]

    def __call__(self, k, theta, key):
        kb, kn = jax.random.split(key)
        xb, yb = self.batch(kb)
        eta = self.step_size * self.schedule(k * self.step_size)
        drift = -self.fe.grad_potential_and_output(theta, xb, yb)[0]
        if self.prior_drift:
            drift = drift + self.fe.grad_prior_logdensity(theta) / self.fe.beta
        theta = theta + eta * drift
        if self.noise:
            theta = theta + jnp.sqrt(2.0 * eta / self.fe.beta) * jax.random.normal(kn, theta.shape, theta.dtype)
        return theta


def _observe(fe, extra, theta, theta0, stein_key=None):
    out = {"risk": fe.risk(theta), "mean_sq_norm": jnp.mean(jnp.sum(theta**2, axis=1)),
           "max_displacement": jnp.max(jnp.linalg.norm(theta - theta0, axis=1))}
    out.update(LawMoments.of(fe.unit)(theta))
    if stein_key is not None:
        out["stein_residual"], out["stein_curvature"] = stein_residual(fe, theta, stein_key)
    for name, fn in extra:
        out[name] = fn(theta)
    return out


def _block(step, extra, theta, theta0, key, k0, n, stein):
    def body(i, th):
        k = k0 + i
        return step(k, th, jax.random.fold_in(key, k))

    theta = jax.lax.fori_loop(0, n, body, theta)
    stein_key = jax.random.fold_in(jax.random.key(_STEIN_SEED), k0 + n) if stein else None
    return theta, _observe(step.fe, extra, theta, theta0, stein_key)


@eqx.filter_jit
def _run_block(step, extra, theta, theta0, key, k0, n, stein, batched):
    if not batched:
        return _block(step, extra, theta, theta0, key, k0, n, stein)
    # R replicates: keys (R,), theta and theta0 (R, N, D)
    return jax.vmap(lambda th, th0, k: _block(step, extra, th, th0, k, k0, n, stein))(theta, theta0, key)


def sgd(fe: FreeEnergy, key: PRNGKeyArray, particles0: Float[Array, "n d"], num_steps: int, step_size: float,
        batch_size: int | None = None, noise: bool | None = None, *, prior_drift: bool | None = None,
        schedule: Callable | None = None, save_every: int | None = None,
        observables: dict[str, Callable] | None = None, progress: bool | None = None) -> Trajectory:
    """Finite-N SGD on the mean-field network f_N = (1/N) Σ_i σ(·; θ_i), one update of all
    N units per step k (time t_k = k η, η = ``step_size``):

        θ_i ← θ_i + η_k [−∇̂Ψ(θ_i; ρ^N) + β⁻¹ ∇log π₀(θ_i)] + sqrt(2 η_k/β) g_i,   η_k = η ξ(t_k),
        ∇̂Ψ(θ; ρ^N) = (1/B) Σ_b (f_N(x_b) − y_b) ∇σ(x_b; θ),

    over a minibatch of B pairs: drawn with replacement from the data set, or fresh from
    the population sampler of a ``FreeEnergy.from_sampler`` (one-pass SGD); ``batch_size``
    None uses the whole data set (gradient descent). This is Euler–Maruyama for
    ``mfsde.langevin`` with a stochastic gradient; ``noise=False`` and ``prior_drift=False``
    drop the noise and the prior (weight-decay) term.

    Other scalings map onto it:
      - Mei–Montanari–Nguyen, step s_k = ε ξ(kε), θ ← (1 − 2λs_k)θ + 2s_k(y − ŷ)∇σ + noise,
        prior N(0, (λβ)⁻¹I): ``step_size = 2ε``, ``schedule(t) = ξ(t / 2)``; the noise
        consistent with their PDE (stationary law ρ*) is sqrt(4 s_k/β) g.
      - Tzen–Raginsky, W ← W + ηβ_TR (y − f_N)∇σ from W_0 ~ N(0, τI)^N, no noise:
        ``step_size = η β_TR``, ``noise=False``, ``prior_drift=False``; time kη ∈ [0, 1]
        of their McKean–Vlasov dynamics is step k.

    Args:
        fe: free energy; its data (or population sampler) feed the minibatches and its
            ``risk`` is the saved risk.
        key: PRNG key (batches and noise), or a batch of R keys (shape (R,); raw
            ``PRNGKey`` keys (2,) / (R, 2) too) for R replicate runs, vmapped.
        particles0: (N, D) start, e.g. a prior sample; with R keys also (R, N, D).
        num_steps, step_size: K steps of size η.
        batch_size: B (default: the whole data set; required with a population sampler).
        noise: add sqrt(2η_k/β) g (default: when β is finite).
        prior_drift: add η_k β⁻¹∇log π₀ (default: same as ``noise``).
        schedule: ξ(t) (default 1).
        save_every: save the observables every this many steps (default K/100).
        observables: extra name -> fn(particles) -> scalar.
        progress: tqdm bar over the save blocks (default: K >= 5000).

    Returns:
        ``Trajectory`` with ts = k η at the saves, the final particles ((R, N, D) for R
        replicates, observables then (R, T)) and observables
        risk, mean_sq_norm, max_displacement = max_i ‖θ_i − θ_i(0)‖ (laziness), the law's
        moments (``LawMoments``) and, with noise and the prior drift,
        stein_residual / stein_curvature (``mfsde.stein_residual``; its time average is the
        step-size and minibatch bias of the chain's stationary law, ``mfsde.stein_test``).
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    key, batched = as_keys(key)
    particles0 = jnp.asarray(particles0)
    if batched:
        if particles0.ndim == 3 and particles0.shape[0] != key.shape[0]:
            raise ValueError(f"particles0 has {particles0.shape[0]} replicates for {key.shape[0]} keys")
        fe._check_particles(particles0[0] if particles0.ndim == 3 else particles0)
        particles0 = jnp.broadcast_to(particles0, (key.shape[0], *particles0.shape[-2:])).astype(fe.x.dtype)
    else:
        particles0 = fe._check_particles(particles0).astype(fe.x.dtype)
    if not bool(jnp.all(jnp.isfinite(particles0))):
        raise ValueError("particles0 contains non-finite values")
    if int(num_steps) != num_steps or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    num_steps = int(num_steps)
    if not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if batch_size is None and fe.sampler is not None:
        raise ValueError("one-pass SGD from a population sampler needs a batch_size")
    noise = not math.isinf(fe.beta) if noise is None else bool(noise)
    prior_drift = noise if prior_drift is None else bool(prior_drift)
    if (noise or prior_drift) and math.isinf(fe.beta):
        raise ValueError("noise and the prior drift need a finite beta")
    every = max(1, num_steps // 100) if save_every is None else int(save_every)
    if every < 1:
        raise ValueError(f"save_every must be a positive integer, got {save_every!r}")
    step = _SGDStep(fe, float(step_size), None if batch_size is None else int(batch_size), noise, prior_drift,
                    _unit_schedule if schedule is None else schedule)
    extra = tuple(sorted((observables or {}).items()))
    blocks = [every] * (num_steps // every) + ([num_steps % every] if num_steps % every else [])
    if progress is None:
        progress = num_steps >= 5000
    from tqdm.auto import tqdm

    # the Stein residual is zero-mean under p_N, the law noisy full-drift SGD approximates
    stein = noise and prior_drift
    theta = particles0
    stein0 = jax.random.key(_STEIN_SEED) if stein else None
    first = jax.vmap(lambda th, th0: _observe(fe, extra, th, th0, stein0)) if batched else (
        lambda th, th0: _observe(fe, extra, th, th0, stein0))
    saves = [first(theta, particles0)]
    ks = [0]
    for n in tqdm(blocks, desc="sgd", disable=not progress):
        theta, obs = _run_block(step, extra, theta, particles0, key, jnp.asarray(ks[-1]), n, stein, batched)
        saves.append(obs)
        ks.append(ks[-1] + n)
    # (T,) per observable, (R, T) for replicates (as langevin's)
    observables_out = {name: jnp.stack([s[name] for s in saves], axis=-1) for name in saves[0]}
    info = (("sde", "sgd"), ("step_size", float(step_size)), ("batch_size", batch_size), ("noise", noise),
            ("prior_drift", prior_drift))
    return Trajectory(ts=jnp.asarray(np.asarray(ks) * float(step_size), fe.x.dtype), particles=theta,
                      observables=observables_out, num_steps=jnp.asarray(num_steps), info=info)
