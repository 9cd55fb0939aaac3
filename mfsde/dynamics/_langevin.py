"""Mean-field Langevin dynamics (noisy-SGD limit, MMN's distributional dynamics)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..free_energy import FreeEnergy
from ..diagnostics._divergence import kl_to_prior, w2_to_prior_bound
from ..diagnostics._moments import LawMoments
from ._checkpoint import data_fingerprint
from ._core import Trajectory, drive
from ._saves import save_times
from ._sde import ParticleSDE
from ._diagnostic_saves import diagnostic_gate, diagnostic_policy
from ._observables import ObservableTail, stein_residual_at
from ._sharding import run_sharding
from ._solver import LeimkuhlerMatthews
from jax.sharding import Mesh
from ._stability import step_stability_hint
from ._starts import run_start
from ._terms import LangevinDrift, LangevinNoise, schedule_name, unit_schedule
from .._memory import particle_run_bytes
from .._trajectory import Run

__all__ = ["langevin", "LangevinDrift", "LangevinOptions", "ParticleObservables"]


class LangevinOptions(NamedTuple):
    """A Langevin run's settings besides its grid and solver (``Trajectory.run.options``):
    the schedule ξ's name."""

    schedule: str


class ParticleObservables(eqx.Module):
    """Observables of a particle state, saved along a run.

    Always: risk R(ρ^N); mean_sq_norm (1/N) Σ ‖θ_i‖² (unconstrained coordinates); the
    law's per-site and projected moments (``mfsde.diagnostics.LawMoments``), which the
    convergence verdict needs to see modes that risk and F do not.
    With ``diagnostics``: kl_to_prior (k-NN, ``mfsde.kl_to_prior``), free_energy
    F = ½R + KL/β, for Gaussian priors w2_to_prior_bound (the Gelbrich lower bound on
    W2(ρ^N, π₀); exact W2 needs an OT solve outside jit: ``mfsde.w2_to_prior``), and at
    finite β stein_residual / stein_curvature (``mfsde.stein_residual``, a fresh probe per
    save time): zero-mean under the exact N-particle stationary law, so its time average
    over a stationary run measures the integrator's bias.
    Plus any extra name -> fn(particles) -> scalar. The moments, the diagnostics (at the
    saves of ``tail.gate``, NaN at the others) and the extras are the ``ObservableTail``.
    """

    fe: FreeEnergy
    tail: ObservableTail
    prior_moments: tuple[Array, Array] | None = None

    def _diagnostic_names(self) -> tuple[str, ...]:
        names = ("stein_residual", "stein_curvature") if self.fe.finite_beta else ()
        return names + ("kl_to_prior", "free_energy") + (("w2_to_prior_bound",) if self.prior_moments is not None
                                                          else ())

    def _diagnostics(self, t, particles, risk):
        # The barrier keeps XLA from hoisting the Stein residual's work out of the save's
        # lax.cond into every step (bench/README.md has the cost without it).
        particles, risk = jax.lax.optimization_barrier((particles, risk))
        out = {}
        if self.fe.finite_beta:
            out["stein_residual"], out["stein_curvature"] = stein_residual_at(self.fe, particles, t)
        out["kl_to_prior"] = kl_to_prior(particles, self.fe)
        out["free_energy"] = 0.5 * risk + (0.0 if not self.fe.finite_beta else out["kl_to_prior"] / self.fe.beta)
        if self.prior_moments is not None:
            out["w2_to_prior_bound"] = w2_to_prior_bound(particles, self.fe, self.prior_moments)
        return out

    def __call__(self, t, particles, args=None):
        out = {
            "risk": self.fe.risk(particles),
            "mean_sq_norm": jnp.mean(jnp.sum(particles**2, axis=1)),
        }
        return self.tail(out, t, particles, None, lambda: self._diagnostics(t, particles, out["risk"]),
                         self._diagnostic_names(), particles)


class _Continuation(eqx.Module):
    """The same Langevin run (solver, schedule) from ``particles`` on [t0, t1] with step
    dt0, with every in-run diagnostic: ``Run.continuation`` of a fixed-step run."""

    solver: diffrax.AbstractSolver
    schedule: Callable

    def __call__(self, fe: FreeEnergy, key, particles, t0: float, t1: float, dt0: float) -> Trajectory:
        return langevin(fe, key, particles, t0=t0, t1=t1, dt0=dt0, solver=self.solver, schedule=self.schedule,
                        diagnostics=True, progress=False)


def _is_fixed_step(controller) -> bool:
    return controller is None or isinstance(controller, diffrax.ConstantStepSize)


def langevin(
    fe: FreeEnergy,
    key: PRNGKeyArray,
    particles0: Float[Array, "n d"],
    *,
    t1: float,
    dt0: float,
    solver: diffrax.AbstractSolver | None = None,
    ts: Array | None = None,
    schedule: Callable | None = None,
    t0: float = 0.0,
    stepsize_controller: diffrax.AbstractStepSizeController | None = None,
    observables: dict[str, Callable] | None = None,
    progress: bool | None = None,
    adjoint: diffrax.AbstractAdjoint | None = None,
    max_steps: int | None = None,
    diagnostics: bool | None = None,
    checkpoint_every: int | None = None,
    checkpoint_path: str | os.PathLike | None = None,
    mesh: Mesh | None = None,
) -> Trajectory:
    """Mean-field Langevin dynamics of F_β on N particles, solved with diffrax.

        dθ_i = ξ(t) [−∇Ψ(θ_i; ρ^N_t) + β⁻¹ ∇log π₀(θ_i)] dt + sqrt(2 ξ(t)/β) dB_i,

    ρ^N_t = (1/N) Σ_j δ_{θ_j(t)}, in the unconstrained coordinates of the prior. Its
    stationary law (N → ∞) is the self-consistent Gibbs measure ρ* ∝ π₀ exp(−βΨ(·; ρ*)).
    With ``fe.beta = inf`` it is the noiseless Wasserstein gradient flow of ½R, an ODE:
    adaptive solvers work (e.g. ``diffrax.Tsit5()`` with a ``diffrax.PIDController``).

    Args:
        fe: the free energy (unit model, data, β).
        key: PRNG key for the Brownian motion (unused when β = inf).
        particles0: initial particles, shape (N, D), e.g. ``fe.prior_sample(key, N)``.
        t1, dt0: final time (from ``t0``) and (initial) step size.
        solver: a diffrax solver. Default at finite β: ``mfsde.LeimkuhlerMatthews()``,
            θ_{n+1} = θ_n + h b(θ_n) + sqrt(2h/β)(ξ_n + ξ_{n+1})/2. It costs what
            Euler–Maruyama costs (one drift evaluation, i.e. one forward and one backward
            pass over the data, per step), and the law a run is judged by — its stationary
            law — is accurate to O(dt0²) instead of Euler's O(dt0) (exact for Gaussian
            targets; orders tested), so a run reaches the N-particle posterior at larger
            steps. Its finite-time (weak) accuracy is first order, like Euler's. At β = inf:
            ``diffrax.Euler()``; pass ``diffrax.Euler()`` at finite β for Euler–Maruyama.
            Two-stage SRK solvers (``ShARK``) buy strong order 1.5 for twice the cost,
            which does not pay while the O(N^{-1/2}) particle error dominates.
        ts: save times of the observables (default: up to 101 points in [t0, t1]). At
            finite β with fixed steps they move to the nearest step's time (the
            trajectory's ``ts`` are the times used): an SDE's interpolant between steps is
            not a state of the chain and carries less noise.
        schedule: MMN's step-size schedule ξ(t) > 0, multiplying drift and diffusion
            variance (default 1).
        stepsize_controller: default ``ConstantStepSize``; adaptive ones for β = inf.
        observables: extra name -> fn(particles) -> scalar saved at ``ts``.
        progress: show a tqdm progress bar (default: runs of >= 5000 steps).
        diagnostics: also save kl_to_prior, free_energy, (Gaussian prior)
            w2_to_prior_bound and, at finite β, stein_residual / stein_curvature (what
            ``check_fixed_point`` reads the time-step bias from); each such save costs an
            O(N² D) k-NN search and a few drift evaluations. ``True``: at every save.
            ``None`` (default): within a budget of 10% of the run's cost
            (``_diagnostic_saves``), i.e. at every k-th save counted back from the last,
            NaN at the others, and none at all in a run too short to afford one; the
            trajectory's info records k as ``diagnostics_every`` (0: none).
        checkpoint_every, checkpoint_path: run in segments of this many steps and write
            the state after each to ``checkpoint_path`` (an .npz, replaced atomically). If
            the file exists, the run resumes from it; a file that is unreadable or was
            written by a different run (data, β, sizes, times, key) raises ``ValueError``.
            Step k draws its noise from ``fold_in(key, k)`` however the run is cut, so a
            checkpointed run, resumed or not, equals the plain run with the same key
            exactly. Fixed step sizes only.
        mesh: a ``jax.sharding.Mesh`` with an axis "particles": split the particles over
            its devices (``mfsde.shard_particles``; N a multiple of its size). Default: the
            start's own sharding if it is split, else one device. See the README's
            "More than one device".

    ``key`` may be a batch of keys, shape (R,): R independent replicate runs (vmapped),
    from ``particles0`` of shape (N, D) (shared) or (R, N, D); the trajectory's particles
    and observables then carry a leading replicate axis, for R-hat across runs.

    Returns:
        ``Trajectory(ts, particles, observables, num_steps)``; observables hold ``risk``
        and ``mean_sq_norm`` (and the diagnostics and extras) at ``ts``.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> traj = mfsde.langevin(fe, jax.random.key(2), p0, t1=4.0, dt0=0.1, progress=False)
        >>> traj.particles.shape, traj.ts.shape == traj.observables["risk"].shape
        ((128, 2), True)
        >>> bool(traj.observables["risk"][-1] < traj.observables["risk"][0])
        True
    """
    key, batched, particles0 = run_start(fe, key, particles0, cast=True, key_optional=True)
    n = particles0.shape[-2]
    schedule = unit_schedule if schedule is None else schedule
    noise = None if not fe.finite_beta else LangevinNoise(fe.beta, schedule)
    sde = ParticleSDE(LangevinDrift(fe, schedule), noise)
    run_ts = save_times(ts, float(t0), float(t1), float(dt0), stepsize_controller, noise is not None)
    every = diagnostic_policy(diagnostics, run_ts, float(t0), float(t1), float(dt0), stepsize_controller, n,
                              fe.num_data)
    moments = fe.unit.gaussian_prior_moments() if every else None
    if moments is not None:
        moments = tuple(jnp.asarray(m, particles0.dtype) for m in moments)
    tail = ObservableTail(LawMoments.of(fe.unit), diagnostic_gate(run_ts, every, float(dt0), particles0.dtype),
                          tuple(sorted((observables or {}).items())))
    obs = ParticleObservables(fe, tail, moments)
    if solver is None:
        solver = diffrax.Euler() if noise is None else LeimkuhlerMatthews()
    elif noise is None and isinstance(solver, LeimkuhlerMatthews):
        raise ValueError("LeimkuhlerMatthews is a scheme for the noisy dynamics; at beta = inf use diffrax.Euler() "
                         "or an adaptive ODE solver")
    return drive(sde, key, particles0, t0=float(t0), t1=float(t1), dt0=float(dt0), solver=solver, observables=obs,
                 ts=run_ts, stepsize_controller=stepsize_controller, progress=progress, adjoint=adjoint,
                 run=Run(family="langevin", diagnostics_every=every, options=LangevinOptions(schedule_name(schedule)),
                         continuation=_Continuation(solver, schedule) if _is_fixed_step(stepsize_controller) else None),
                 max_steps=max_steps, checkpoint_every=checkpoint_every, checkpoint_path=checkpoint_path,
                 stability_hint=lambda last: step_stability_hint(
                     fe, (("at the last finite state", last), ("at the start", particles0.reshape(-1, n, fe.dim)[0])),
                     float(dt0)),
                 memory=particle_run_bytes(fe, fe.dim), sharding=run_sharding(mesh, particles0),
                 fingerprint=data_fingerprint(fe))
