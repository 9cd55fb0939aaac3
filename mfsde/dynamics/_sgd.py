"""Finite-N (noisy) SGD with the mean-field scaling: the discrete object the SDEs are limits of."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import positive_int, positive_number
from ..diagnostics._moments import LawMoments
from ..free_energy import FreeEnergy
from ._checkpoint import data_fingerprint
from ._sharding import run_sharding
from ._core import Trajectory, drive
from ._saves import default_save_steps
from ._sde import ParticleSDE
from ._observables import DiagnosticGate, ObservableTail, stein_residual_at
from ._terms import schedule_name, unit_schedule
from .._trajectory import Run
from ._stability import step_stability_hint
from ._starts import run_start
from .._memory import particle_run_bytes

__all__ = ["sgd", "SGDOptions", "SGDStep", "SGDObservables"]


class SGDOptions(NamedTuple):
    """An SGD run's settings (``Trajectory.run.options``): the step η, the minibatch size B
    (None: the whole data set), whether the noise and the prior drift are on, and the
    schedule ξ's name."""

    step_size: float
    batch_size: int | None
    noise: bool
    prior_drift: bool
    schedule: str


class SGDStep(eqx.Module):
    """One step of SGD as a jump of the driver: at time t (step k = t/η) with key k,
    θ ← θ + η_k [−∇̂Ψ + β⁻¹∇log π₀] + sqrt(2η_k/β) g on the (N, D) array, η_k = η ξ(t)."""

    fe: FreeEnergy
    step_size: Array
    batch_size: int | None = eqx.field(static=True)
    noise: bool = eqx.field(static=True)
    prior_drift: bool = eqx.field(static=True)
    schedule: Callable = eqx.field(static=True)
    sampler: Callable | None = eqx.field(static=True, default=None)

    def batch(self, key):
        fe = self.fe
        if self.batch_size is None and self.sampler is None:
            return fe.x, fe.y
        if self.sampler is not None:
            xb, yb = self.sampler(key, self.batch_size)
        else:
            idx = jax.random.randint(key, (self.batch_size,), 0, fe.num_data)
            xb, yb = fe.x[idx], fe.y[idx]
        # Materialise the minibatch: XLA otherwise fuses the RNG (or the gather) into every
        # consumer and recomputes it for each of the N rows (9x the step at B = 1).
        return jax.lax.optimization_barrier((xb, yb))

    def __call__(self, key, t, theta):
        kb, kn = jax.random.split(key)
        xb, yb = self.batch(kb)
        eta = self.step_size * self.schedule(t)
        drift = -self.fe.grad_potential_and_output(theta, xb, yb)[0]
        if self.prior_drift:
            drift = drift + self.fe.grad_prior_logdensity(theta) / self.fe.beta
        theta = theta + eta * drift
        if self.noise:
            theta = theta + jnp.sqrt(2.0 * eta / self.fe.beta) * jax.random.normal(kn, theta.shape, theta.dtype)
        return theta


class SGDObservables(eqx.Module):
    """risk, mean_sq_norm, max_displacement = max_i ‖θ_i − θ_i(0)‖ (from the start Θ_0 the
    driver passes), then the ``ObservableTail``: the law's moments, the Stein residual at
    every save when ``tail.gate`` is set (``stein_residual_at``), the extras."""

    fe: FreeEnergy
    tail: ObservableTail

    def __call__(self, t, theta, theta0):
        fe = self.fe
        out = {"risk": fe.risk(theta), "mean_sq_norm": jnp.mean(jnp.sum(theta**2, axis=1)),
               "max_displacement": jnp.max(jnp.linalg.norm(theta - theta0, axis=1))}

        def stein():
            # under the save: the barrier keeps XLA from hoisting its work into every step
            residual, curvature = stein_residual_at(fe, jax.lax.optimization_barrier(theta), t)
            return {"stein_residual": residual, "stein_curvature": curvature}

        return self.tail(out, t, theta, None, stein, ("stein_residual", "stein_curvature"), theta)


def sgd(fe: FreeEnergy, key: PRNGKeyArray, particles0: Float[Array, "n d"], *, num_steps: int, step_size: float,
        batch_size: int | None = None, noise: bool | None = None, prior_drift: bool | None = None,
        schedule: Callable | None = None, save_every: int | None = None,
        observables: dict[str, Callable] | None = None, progress: bool | None = None,
        checkpoint_every: int | None = None, checkpoint_path: str | os.PathLike | None = None,
        sampler: Callable | None = None, mesh: Mesh | None = None) -> Trajectory:
    """Finite-N SGD on the mean-field network f_N = (1/N) Σ_i σ(·; θ_i), one update of all
    N units per step k (time t_k = k η, η = ``step_size``):

        θ_i ← θ_i + η_k [−∇̂Ψ(θ_i; ρ^N) + β⁻¹ ∇log π₀(θ_i)] + sqrt(2 η_k/β) g_i,   η_k = η ξ(t_k),
        ∇̂Ψ(θ; ρ^N) = (1/B) Σ_b (f_N(x_b) − y_b) ∇σ(x_b; θ),

    over a minibatch of B pairs: drawn with replacement from the data set, or fresh from
    a population ``sampler`` (one-pass SGD); ``batch_size``
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
        fe: free energy; its data (or the population sampler) feed the minibatches and its
            ``risk`` is the saved risk.
        key: PRNG key (batches and noise), or a batch of R keys (shape (R,); raw
            ``PRNGKey`` keys (2,) / (R, 2) too) for R replicate runs, vmapped.
        particles0: (N, D) start, e.g. a prior sample; with R keys also (R, N, D).
        num_steps, step_size: K steps of size η.
        batch_size: B (default: the whole data set; required with a population sampler).
        sampler: ``sampler(key, B) -> (x (B, ...), y (B,))``, fresh pairs for every
            minibatch (one pass, no pair reused): SGD on the population risk. Default: the
            one a ``FreeEnergy.from_sampler`` was built with, else none (the data set).
        noise: add sqrt(2η_k/β) g (default: when β is finite).
        prior_drift: add η_k β⁻¹∇log π₀ (default: same as ``noise``).
        schedule: ξ(t) (default 1).
        save_every: save the observables every this many steps, and after the last
            (default: every family's grid, up to 101 equally spaced steps).
        observables: extra name -> fn(particles) -> scalar.
        progress: tqdm bar over the save blocks (default: K >= 5000).
        checkpoint_every, checkpoint_path: write the state every this many steps to an
            .npz and resume from it (``mfsde.dynamics.drive``). Step k draws from
            ``fold_in(key, k)`` however the run is cut, so a checkpointed run is the same
            chain as the uncheckpointed one.
        mesh: a ``jax.sharding.Mesh`` with an axis "particles": split the particles over
            its devices (``mfsde.shard_particles``; N a multiple of its size). Default: the
            start's own sharding if it is split, else one device. See the README's
            "More than one device".

    Returns:
        ``Trajectory`` with ts = k η at the saves, the final particles ((R, N, D) for R
        replicates, observables then (R, T)) and observables
        risk, mean_sq_norm, max_displacement = max_i ‖θ_i − θ_i(0)‖ (laziness), the law's
        moments (``LawMoments``) and, with noise and the prior drift,
        stein_residual / stein_curvature (``mfsde.stein_residual``; its time average is the
        step-size and minibatch bias of the chain's stationary law, ``mfsde.stein_test``).

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> traj = mfsde.sgd(fe, jax.random.key(2), p0, num_steps=200, step_size=0.05, batch_size=8, progress=False)
        >>> traj.particles.shape
        (128, 2)
    """
    key, batched, particles0 = run_start(fe, key, particles0, broadcast=True, cast=True)
    num_steps = positive_int("num_steps", num_steps)
    positive_number("step_size", step_size)
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    sampler = fe.sampler if sampler is None else sampler
    if sampler is not None and not callable(sampler):
        raise TypeError(f"sampler must be a function (key, batch_size) -> (x, y), got {type(sampler).__name__}")
    if batch_size is None and sampler is not None:
        raise ValueError("one-pass SGD from a population sampler needs a batch_size")
    noise = fe.finite_beta if noise is None else bool(noise)
    prior_drift = noise if prior_drift is None else bool(prior_drift)
    if (noise or prior_drift) and not fe.finite_beta:
        raise ValueError("noise and the prior drift need a finite beta")
    if save_every is None:
        ks = default_save_steps(num_steps)
    else:
        every = positive_int("save_every", save_every)
        ks = np.unique(np.r_[np.arange(0, num_steps, every), num_steps])
    eta = jnp.asarray(float(step_size), fe.x.dtype)
    step = SGDStep(fe, eta, None if batch_size is None else int(batch_size), noise, prior_drift,
                   unit_schedule if schedule is None else schedule, sampler)
    # the Stein residual is zero-mean under p_N, the law noisy full-drift SGD approximates
    obs = SGDObservables(fe, ObservableTail(LawMoments.of(fe.unit), DiagnosticGate() if noise and prior_drift else None,
                                            tuple(sorted((observables or {}).items()))))
    run = Run(family="sgd", options=SGDOptions(float(step_size), None if batch_size is None else int(batch_size), noise,
                                               prior_drift, schedule_name(step.schedule)))
    return drive(ParticleSDE(jump=step), key, particles0, t0=0.0, t1=num_steps * float(step_size),
                 dt0=float(step_size), observables=obs, ts=ks * float(step_size),
                 progress=num_steps >= 5000 if progress is None else progress, checkpoint_every=checkpoint_every,
                 checkpoint_path=checkpoint_path, run=run, sharding=run_sharding(mesh, particles0),
                 stability_hint=lambda last: step_stability_hint(
                     fe, (("at the last finite state", last), ("at the start", particles0.reshape(-1, *particles0.shape[-2:])[0])),
                     float(step_size), "step_size"),
                 memory=particle_run_bytes(fe, fe.dim, None if batch_size is None else
                                                   lambda n: 2 * n * int(batch_size) * fe.x.dtype.itemsize),
                 fingerprint=data_fingerprint(fe))
