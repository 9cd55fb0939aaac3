"""Rotskoff–Vanden-Eijnden: Wasserstein–Fisher–Rao transport with reweighting, or with
neuron birth–death, on the one driver.

The energy of a measure μ is E[μ] = ½R(μ) + (λ/q)∫|c|^q dμ (the optional penalty on an
output-weight site c), plus β⁻¹ KL(μ‖π₀) at finite β. Its first variation at θ is

    Λ(θ) = V(θ) + β⁻¹ log(ρ(θ)/π₀(θ)),    V = Ψ(θ; μ) + (λ/q)|c|^q,

and the mean-field dynamics is ∂_t μ = ∇·(μ ∇V) + β⁻¹Δ-part (Langevin's) − α(Λ − Λ̄)μ,
Λ̄ = ∫Λ dμ: particles move down −∇V (with Langevin noise at finite β) while mass moves from
where Λ is high to where it is low. The mass moves either as continuous reweighting of the
particles (w_i ← w_i e^{−α h (Λ_i − Λ̄)}, renormalised so that (1/N) Σ w_i = 1), or as
birth–death jumps of equally weighted particles (Rotskoff et al. 2019). At finite β the
density ρ at the particles is a Gaussian kernel density estimate (Lu–Lu–Nolen 2019).

One step (h = dt0) is one jump of the driver, from one forward and one backward pass:
(Λ_i, ∇V_i, f) at the current state, then the transport step and the mass step with those
values (explicit Euler for the pair; Leimkuhler–Matthews noise at finite β).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .._blocks import row_blocks, unblock
from .._checks import positive_number
from .._memory import particle_run_bytes
from ..diagnostics._divergence import kl_to_prior
from ..diagnostics._moments import LawMoments
from ..free_energy import FreeEnergy
from ..particles import Particles
from ._checkpoint import data_fingerprint
from ._sharding import hold_particle_axis, run_sharding
from ._core import Trajectory, drive
from ._saves import save_times
from ._sde import ParticleSDE
from ._diagnostic_saves import diagnostic_gate, diagnostic_policy
from ._observables import ObservableTail, stein_residual_at
from ._solver import leimkuhler_matthews_update
from ._stability import step_stability_hint
from ._state import RowLayout
from ._starts import run_start
from .._trajectory import Run

__all__ = ["wfr", "birth_death_events", "WFROptions", "WFRState", "WFRStep", "WFRObservables", "Penalty", "kde_logdensity", "silverman_bandwidth"]

_BIRTH_DEATH = (None, "clone", "prior")
# Rows of the (rows, N) distance block of the kernel density estimate.
_KDE_BLOCK = 512


class Penalty(NamedTuple):
    """(λ/q) Σ_k |θ_k|^q over the unconstrained coordinates of one site (the talk's control
    of the output weights' total variation, q > 2): ``site``, ``lam`` = λ ≥ 0, ``q``."""

    site: str
    lam: float
    q: float


def silverman_bandwidth(theta: Float[Array, "n d"], weights: Float[Array, " n"]) -> Float[Array, ""]:
    """Silverman's rule h = σ̄ (4 / ((D + 2) n_eff))^{1/(D + 4)}, with σ̄² the mean over
    coordinates of the weighted variances and n_eff = 1/Σ w_i² (Kish)."""
    d = theta.shape[1]
    mean = weights @ theta
    var = jnp.mean(weights @ (theta - mean) ** 2)
    n_eff = 1.0 / jnp.sum(weights**2)
    return jnp.sqrt(var) * (4.0 / ((d + 2) * n_eff)) ** (1.0 / (d + 4))


def kde_logdensity(theta: Float[Array, "n d"], weights: Float[Array, " n"], bandwidth) -> Float[Array, " n"]:
    """log ρ_h(θ_i) = log Σ_j w_j N(θ_i; θ_j, h² I) at every particle (the point itself
    included), in row blocks: memory O(block · N), work O(N² D)."""
    n, d = theta.shape
    h2 = jnp.asarray(bandwidth, theta.dtype) ** 2
    sq = jnp.sum(theta**2, axis=1)
    logw = jnp.log(weights)
    rows, _ = row_blocks(jnp.arange(n), _KDE_BLOCK)

    def block(idx):
        dist2 = jnp.maximum(sq[idx][:, None] + sq[None, :] - 2.0 * theta[idx] @ theta.T, 0.0)
        return jax.nn.logsumexp(logw[None, :] - 0.5 * dist2 / h2, axis=1)

    return unblock(jax.lax.map(block, rows), n) - 0.5 * d * jnp.log(2.0 * jnp.pi * h2)


def _unit_mean_weights(log_weight: Array) -> Array:
    """log-weights shifted so that (1/N) Σ_i exp(log_weight_i) = 1 (over the last axis)."""
    return log_weight - (jax.nn.logsumexp(log_weight, axis=-1, keepdims=True) - jnp.log(log_weight.shape[-1]))


class WFROptions(NamedTuple):
    """A weighted run's settings (``Trajectory.run.options``): the rate α, the mass move
    (``birth_death``: None for reweighting, ``"clone"`` or ``"prior"``), the KDE bandwidth
    (``"silverman"``: the rule at every step) and the ``Penalty`` (or None)."""

    alpha: float
    birth_death: str | None
    bandwidth: float | str
    penalty: Penalty | None


class WFRState(NamedTuple):
    """The state of a weighted run, every field per particle slot (a leading replicate axis
    (R,) on each for R runs): ``theta`` (N, D); ``log_weight`` (N,), normalised so that
    (1/N) Σ_i exp(log_weight_i) = 1 (all 0 under birth–death); ``clones`` and ``kills``
    (N,): how many clone and kill events the particle in each slot has had so far (their
    sums are the run's births and deaths); ``noise`` (N, D): the last Leimkuhler–Matthews
    draw ξ_n at finite β, None at β = ∞."""

    theta: Float[Array, "n d"]
    log_weight: Float[Array, " n"]
    clones: Int[Array, " n"]
    kills: Int[Array, " n"]
    noise: Float[Array, "n d"] | None


def birth_death_events(key: PRNGKeyArray, delta: Float[Array, " n"], rate_step) -> tuple[Array, Array]:
    """(kill (N,), clone (N,)): independently for each particle, an event with probability
    min(1, αh|Λ_i − Λ̄|) (``rate_step`` = αh, ``delta`` = Λ − Λ̄), a kill where Λ_i > Λ̄ and
    a clone where Λ_i < Λ̄."""
    prob = jnp.minimum(1.0, rate_step * jnp.abs(delta))
    event = jax.random.uniform(key, delta.shape, delta.dtype) < prob
    return event & (delta > 0), event & (delta < 0)


def _resolve_jumps(key, kill, clone, variant: str):
    """Where each of the N slots takes its particle from after the kill and clone events,
    keeping N fixed: (source (N,), fresh (N,)): slot i holds particle source_i, or a fresh
    prior draw where ``fresh``.

    The population after the events is the survivors plus one copy of each cloned particle
    (and, for ``"prior"``, one prior draw in each killed slot). If it exceeds N, uniformly
    chosen survivors or copies are removed (prior draws are kept); if it falls short
    (``"clone"`` only), the gap is filled with copies of uniformly chosen members. Survivors
    keep their slots, so a step without events is the identity.
    """
    n = kill.shape[0]
    k_remove, k_fill = jax.random.split(key)
    valid = jnp.concatenate([~kill, clone])  # candidates: survivors i, copies of clones i (n + i)
    count = jnp.sum(valid)
    target = n - (jnp.sum(kill) if variant == "prior" else 0)
    surplus = jnp.maximum(count - target, 0)
    priority = jnp.where(valid, jax.random.uniform(k_remove, (2 * n,)), 2.0)
    rank = jnp.argsort(jnp.argsort(priority))
    keep = valid & (rank >= surplus)
    kept_copies = jnp.nonzero(keep[n:], size=n, fill_value=0)[0]
    num_copies = jnp.sum(keep[n:])
    members = jnp.nonzero(keep, size=2 * n, fill_value=0)[0] % n
    num_members = jnp.sum(keep)
    picks = members[jax.random.randint(k_fill, (n,), 0, jnp.maximum(num_members, 1))]
    free = ~keep[:n]
    order = jnp.cumsum(free) - 1
    from_copy = order < num_copies
    filled = jnp.where(from_copy, kept_copies[jnp.clip(order, 0, n - 1)],
                       picks[jnp.clip(order - num_copies, 0, n - 1)])
    source = jnp.where(free, filled, jnp.arange(n))
    fresh = free & ~from_copy & (variant == "prior")
    return source, fresh


class WFRStep(eqx.Module):
    """One step of weighted transport (reweighting or birth–death) as a jump of the driver.

    With (Λ_i, ∇V_i) at the state Θ_n (``rates``) and h = dt0:

        θ_i ← θ_i + h [−∇V_i + β⁻¹∇log π₀(θ_i)] + sqrt(2h/β)(ξ_n + ξ_{n+1})/2   (ξ at finite β)
        reweighting:  log w_i ← log w_i − αh(Λ_i − Λ̄), then shifted so (1/N) Σ w_i = 1;
        birth–death:  with probability min(1, αh|Λ_i − Λ̄|), particle i is killed (Λ_i > Λ̄)
                      or cloned (Λ_i < Λ̄); N is restored by ``_resolve_jumps``.
    """

    fe: FreeEnergy
    step_size: Array
    alpha: Array
    birth_death: str | None = eqx.field(static=True)
    bandwidth: Array | None
    penalty: Penalty | None = eqx.field(static=True)
    # α = 0 is a different program (no rate), not a value of the same one
    reacts: bool = eqx.field(static=True, default=True)

    def penalty_and_grad(self, theta):
        """((λ/q) Σ_k |θ_ik|^q, its gradient) over the penalised site's coordinates."""
        if self.penalty is None or self.penalty.lam == 0.0:
            return jnp.zeros(theta.shape[0], theta.dtype), jnp.zeros_like(theta)
        idx = np.atleast_1d(self.fe.unit.site_indices()[self.penalty.site]).reshape(-1)
        c = theta[:, idx]
        lam, q = self.penalty.lam, self.penalty.q
        grad = jnp.zeros_like(theta).at[:, idx].set(lam * jnp.abs(c) ** (q - 2) * c)
        return lam / q * jnp.sum(jnp.abs(c) ** q, axis=1), grad

    def rates(self, theta, log_weight):
        """(Λ_i − Λ̄, the transport drift b_i, f_ρ, V̄) at the state: one data sweep."""
        fe = self.fe
        measure = Particles(theta, log_weight)
        w = measure.weights()
        v, grad, f = fe.potentials_grads_and_output(measure)
        pv, pgrad = self.penalty_and_grad(theta)
        v, drift = v + pv, -(grad + pgrad)
        rate = v
        if fe.finite_beta:
            logp, dlogp = jax.vmap(jax.value_and_grad(fe.unit.prior_logdensity))(theta)
            drift = drift + dlogp / fe.beta
            if self.reacts:
                h = silverman_bandwidth(theta, w) if self.bandwidth is None else self.bandwidth
                rate = v + (kde_logdensity(theta, w, h) - logp) / fe.beta
        return rate - w @ rate, drift, f, w @ v

    def __call__(self, key, t, state: WFRState) -> WFRState:
        h = self.step_size
        theta, lw, xi = state.theta, state.log_weight, None
        k_noise, k_event, k_resolve, k_prior = jax.random.split(key, 4)
        delta, drift, _, _ = self.rates(theta, None if self.birth_death else lw)
        if state.noise is None:
            theta = theta + h * drift
        else:
            xi = jax.random.normal(k_noise, theta.shape, theta.dtype)
            scale = jnp.sqrt(2.0 * h / self.fe.beta)
            theta = leimkuhler_matthews_update(theta, h * drift, scale * state.noise, scale * xi)
        if self.birth_death is None:
            if self.reacts:  # at α = 0 the weights stay put even where Λ overflows (0·∞)
                lw = _unit_mean_weights(lw - self.alpha * h * delta)
            return state._replace(theta=theta, log_weight=lw, noise=xi)
        # the transport and rates stay split over devices; only the copy gathers
        theta, delta = hold_particle_axis(theta), hold_particle_axis(delta)
        kill, clone = birth_death_events(k_event, delta, self.alpha * h)
        source, fresh = _resolve_jumps(k_resolve, kill, clone, self.birth_death)
        moved = jax.tree.map(lambda a: a[source], (theta, xi))
        if self.birth_death == "prior":
            k_theta, k_xi = jax.random.split(k_prior)
            new = self.fe.prior_sample(k_theta, theta.shape[0]).astype(theta.dtype)
            drawn = (new, None if xi is None else jax.random.normal(k_xi, new.shape, new.dtype))
            moved = jax.tree.map(lambda a, b: jnp.where(fresh[:, None], a, b), drawn, moved)
        return state._replace(theta=moved[0], noise=moved[1], clones=state.clones + clone.astype(state.clones.dtype),
                              kills=state.kills + kill.astype(state.kills.dtype))


class WFRObservables(eqx.Module):
    """risk R(μ), energy E[μ] = ½R + (λ/q)∫|c|^q dμ, mean_potential V̄ = ∫V dμ,
    mean_rate_spread ∫|Λ − Λ̄| dμ (zero at a stationary point of the free energy),
    effective_sample_size 1/Σ w_i², max_jump_probability max_i min(1, αh|Λ_i − Λ̄|) (the
    jumps discretise the rate only while it is well below 1), births and deaths (cumulative here; ``wfr`` reports
    them per save interval), mean_sq_norm, the law's moments (weighted), and with
    ``diagnostics`` kl_to_prior, free_energy and (finite β, birth–death) the Stein
    residual (``stein_residual_at``); plus the extras fn(Particles) -> scalar: the
    ``ObservableTail``."""

    step: WFRStep
    tail: ObservableTail

    def _diagnostic_names(self) -> tuple[str, ...]:
        stein = ("stein_residual", "stein_curvature") if self.step.fe.finite_beta and self.step.birth_death else ()
        return ("kl_to_prior", "free_energy") + stein

    def _diagnostics(self, t, measure, energy):
        fe, step = self.step.fe, self.step
        measure = jax.lax.optimization_barrier(measure)  # as ParticleObservables._diagnostics
        out = {"kl_to_prior": kl_to_prior(measure, fe)}
        out["free_energy"] = energy + (0.0 if not fe.finite_beta else out["kl_to_prior"] / fe.beta)
        if fe.finite_beta and step.birth_death:
            out["stein_residual"], out["stein_curvature"] = stein_residual_at(fe, measure.theta, t)
        return out

    def __call__(self, t, state: WFRState, start=None):
        step, fe = self.step, self.step.fe
        theta = state.theta
        lw = None if step.birth_death else state.log_weight
        measure = Particles(theta, lw)
        w = measure.weights()
        delta, _, f, vbar = step.rates(theta, lw)
        risk = jnp.mean((f - fe.y) ** 2)
        pv = step.penalty_and_grad(theta)[0]
        jump_prob = jnp.minimum(1.0, step.alpha * step.step_size * jnp.max(jnp.abs(delta)))
        out = {"risk": risk, "energy": 0.5 * risk + w @ pv, "mean_potential": vbar, "max_jump_probability": jump_prob,
               "mean_rate_spread": w @ jnp.abs(delta), "effective_sample_size": measure.effective_sample_size(),
               "births": jnp.sum(state.clones).astype(theta.dtype), "deaths": jnp.sum(state.kills).astype(theta.dtype),
               "mean_sq_norm": w @ jnp.sum(theta**2, axis=1)}
        return self.tail(out, t, theta, None if lw is None else w, lambda: self._diagnostics(t, measure, out["energy"]),
                         self._diagnostic_names(), measure)


def _start_state(fe, key, particles0, batched: bool) -> WFRState:
    """The ``WFRState`` of (R,) N, D particles: log-weights 0 (or those of a ``Particles``),
    counts 0, and at finite β a first draw ξ_0 from ``fold_in(key, 2³¹ − 1)``."""
    theta = particles0.theta if isinstance(particles0, Particles) else particles0
    theta = jnp.asarray(theta, fe.x.dtype)
    lw = (jnp.zeros(theta.shape[:-1], theta.dtype) if not isinstance(particles0, Particles)
          or particles0.log_weight is None else jnp.asarray(particles0.log_weight, theta.dtype))
    lw = _unit_mean_weights(lw)
    if batched:
        theta = jnp.broadcast_to(theta, (key.shape[0],) + theta.shape[-2:])
        lw = jnp.broadcast_to(lw, theta.shape[:-1])
    noise = None
    if fe.finite_beta:
        def first(k):
            return jax.random.normal(jax.random.fold_in(k, 2**31 - 1), theta.shape[-2:], theta.dtype)
        noise = jax.vmap(first)(key) if batched else first(key)
    zeros = jnp.zeros(theta.shape[:-1], jnp.int32)
    return WFRState(theta, lw, zeros, zeros, noise)


def wfr(fe: FreeEnergy, key: PRNGKeyArray, particles0, *, t1: float, dt0: float, alpha: float,
        birth_death: str | None = None, penalty: Penalty | tuple | None = None, bandwidth: float | None = None,
        ts: Array | None = None, t0: float = 0.0, observables: dict[str, Callable] | None = None,
        progress: bool | None = None, diagnostics: bool | None = None, checkpoint_every: int | None = None,
        checkpoint_path: str | os.PathLike | None = None, mesh: Mesh | None = None) -> Trajectory:
    """Wasserstein–Fisher–Rao dynamics on N weighted particles (Rotskoff–Vanden-Eijnden):
    gradient flow (Langevin at finite β) with the mass moving at rate α from where the first
    variation Λ is high to where it is low,

        θ̇_i = −∇V(θ_i) (+ β⁻¹∇log π₀ + noise),   ẇ_i = −α w_i (Λ(θ_i) − Λ̄),

    mean-field limit ∂_t μ = ∇·(μ∇V) (+ β⁻¹ diffusion) − α(Λ − Λ̄)μ, with V = Ψ(·; μ) (+ the
    penalty), Λ = V (+ β⁻¹ log(ρ_h/π₀) at finite β, ρ_h the Gaussian KDE of the particles),
    Λ̄ = ∫Λ dμ. With α = 0 it is the gradient flow (Euler, as ``langevin`` at β = inf).

    Args:
        fe: the free energy (unit model, data, β).
        key: PRNG key (a batch of R keys: R replicate runs) for the noise and the jumps.
        particles0: (N, D) (or (R, N, D)) start, or a ``Particles`` with log-weights.
        t1, dt0: final time (from ``t0``) and the step h; (t1 − t0)/dt0 whole steps.
        alpha: the reaction rate α ≥ 0.
        birth_death: ``None``: continuous reweighting, log w_i ← log w_i − αh(Λ_i − Λ̄)
            renormalised to (1/N) Σ w_i = 1 exactly. ``"clone"``: equally weighted particles;
            each is killed (Λ_i > Λ̄) or cloned (Λ_i < Λ̄) with probability min(1, αh|Λ_i − Λ̄|)
            per step, and N is restored by removing uniformly chosen particles or copying
            uniformly chosen ones. ``"prior"``: killed particles are replaced by fresh prior
            draws; each clone then displaces a uniformly chosen particle. All three share the
            fixed points where Λ is constant on the support.
        penalty: ``Penalty(site, lam, q)`` adds (λ/q)∫|c|^q dμ to the energy.
        bandwidth: the KDE's h at finite β (default Silverman's rule ``silverman_bandwidth``
            on the current cloud, every step). The rate's fixed point is Langevin's as
            h → 0; at finite h, ρ_h = ρ ⊛ N(0, h²I) is wider than ρ, so the rate is higher
            in the tails and birth–death contracts the cloud a little: for a Gaussian ρ* of
            variance v per coordinate, relaxed by Langevin at rate κ, by a fraction
            ≈ αh² / (2βκ(v + h²)). Keep α below βκ to keep it small.
        ts: save times (default up to 101 points); moved to the nearest step.
        observables: extra name -> fn(Particles) -> scalar.
        progress: tqdm bar (default: runs of >= 5000 steps).
        diagnostics: also save kl_to_prior, free_energy and (finite β, birth–death) the Stein
            residual (the k-NN search is O(N² D) per save). As ``langevin``: ``True`` at
            every save, ``None`` (default) within 10% of the run's cost.
        checkpoint_every, checkpoint_path: as ``langevin`` (draws depend on the step index
            only, so a checkpointed run equals the plain run).
        mesh: a ``jax.sharding.Mesh`` with an axis "particles": split the particles over
            its devices (``mfsde.shard_particles``; N a multiple of its size). Default: the
            start's own sharding if it is split, else one device. Clone/kill across
            shards: the copy θ_i ← θ_source(i) is a gather of the whole (N, D) state,
            which XLA runs as an all-gather, so a clone's source may live on any device.

    Stability: the transport step's stiffness grows with concentration. A particle of
    weight w, or a cluster of k clones, moves f_ρ w (k) times as much as one plain particle,
    so a dt0 that is stable for gradient flow can blow up (or raise the risk it should
    lower) once the mass concentrates; watch ``effective_sample_size`` and the risk. A
    diverged run's error reports h·λ_max of the weighted drift (``max_curvature`` of the
    last finite weighted cloud) against 2.

    Returns:
        ``Trajectory``; its particles are a ``Particles`` (uniform weights, ``log_weight``
        None, under birth–death); observables as ``WFRObservables``, births and deaths
        counted per save interval (the count since the previous save; 0 at the first).

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> traj = mfsde.wfr(fe, jax.random.key(2), p0, t1=1.0, dt0=0.1, alpha=1.0, progress=False)
        >>> traj.particles.theta.shape, traj.particles.log_weight.shape   # weighted particles
        ((128, 2), (128,))
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    if birth_death not in _BIRTH_DEATH:
        raise ValueError(f"birth_death must be one of {_BIRTH_DEATH}, got {birth_death!r}")
    if not (isinstance(alpha, (int, float, np.number)) and math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    alpha = float(alpha)
    positive_number("dt0", dt0)
    if bandwidth is not None:
        bandwidth = float(positive_number("bandwidth", bandwidth))
    if penalty is not None:
        penalty = Penalty(*penalty)
        if penalty.site not in fe.unit.site_names:
            raise ValueError(f"penalty site {penalty.site!r} is not a sample site of the unit "
                             f"({', '.join(fe.unit.site_names)})")
        if not (penalty.lam >= 0 and penalty.q > 1):
            raise ValueError(f"penalty needs lam >= 0 and q > 1, got lam = {penalty.lam!r}, q = {penalty.q!r}")
    if birth_death and isinstance(particles0, Particles) and particles0.log_weight is not None:
        raise ValueError("birth-death moves equally weighted particles; resample a weighted start first "
                         "(Particles.resample)")
    key, batched, theta0 = run_start(fe, key, particles0, measures=True)
    dtype = fe.x.dtype
    step = WFRStep(fe, jnp.asarray(float(dt0), dtype), jnp.asarray(alpha, dtype), birth_death,
                   None if bandwidth is None else jnp.asarray(bandwidth, dtype), penalty, alpha > 0)
    n = theta0.shape[-2]
    y0 = _start_state(fe, key, particles0, batched)
    sde = ParticleSDE(jump=step)
    run_ts = save_times(ts, float(t0), float(t1), float(dt0), jump_every=sde.jump_every)
    every = diagnostic_policy(diagnostics, run_ts, float(t0), float(t1), float(dt0), None, n, fe.num_data)
    obs = WFRObservables(step, ObservableTail(LawMoments.of(fe.unit), diagnostic_gate(run_ts, every, float(dt0),
                                                                                      theta0.dtype),
                                              tuple(sorted((observables or {}).items()))))
    traj = drive(sde, key, y0, t0=float(t0), t1=float(t1), dt0=float(dt0), observables=obs,
                 ts=ts, progress=progress, checkpoint_every=checkpoint_every, checkpoint_path=checkpoint_path,
                 sharding=run_sharding(mesh, theta0),
                 run=Run(family="wfr", diagnostics_every=every,
                         options=WFROptions(alpha, birth_death, "silverman" if bandwidth is None else bandwidth,
                                            penalty)),
                 stability_hint=lambda last: step_stability_hint(
                     fe, (("at the last finite state", None if last is None else _measure(last, birth_death)),
                          ("at the start", jnp.reshape(theta0, (-1, n, fe.dim))[0])), float(dt0)),
                 memory=particle_run_bytes(fe, sum(RowLayout.of(y0, key.shape[0] if batched else None).widths)),
                 fingerprint=data_fingerprint(fe))
    traj = _weighted_trajectory(traj, birth_death)
    _warn_if_jumps_saturate(traj, birth_death)
    return traj


def _measure(state: WFRState, birth_death) -> Particles:
    """The weighted cloud of a state (equally weighted under birth–death)."""
    return Particles(state.theta, None if birth_death else state.log_weight)


# Above this per-step kill/clone probability the jumps stop resolving the rate (a particle
# with twice the rate is not killed twice as often) and clones sweep the population.
_JUMP_PROBABILITY_WARN = 0.5


def _warn_if_jumps_saturate(traj: Trajectory, birth_death) -> None:
    p = traj.observables.get("max_jump_probability")
    if birth_death is None or p is None or isinstance(p, jax.core.Tracer):
        return
    p = np.asarray(p)
    if np.any(p > _JUMP_PROBABILITY_WARN):
        first = float(np.asarray(traj.ts)[np.argmax(np.any(p.reshape(-1, p.shape[-1]) > _JUMP_PROBABILITY_WARN, axis=0))])
        warnings.warn(f"wfr: the kill/clone probability alpha * dt0 * |Lambda - mean| reached {float(p.max()):.2f} "
                      f"per step (first above {_JUMP_PROBABILITY_WARN} at t = {first:.4g}); the jumps then no longer "
                      "follow the rate and a few particles' clones take over the population. Take a smaller dt0 or "
                      "alpha.", RuntimeWarning, stacklevel=3)


def _weighted_trajectory(traj: Trajectory, birth_death) -> Trajectory:
    """The driver's trajectory with its state as ``Particles`` and per-save event counts."""
    particles = _measure(traj.particles, birth_death)
    obs = dict(traj.observables)
    for name in ("births", "deaths"):
        if name in obs:
            c = obs[name]
            obs[name] = jnp.concatenate([jnp.zeros_like(c[..., :1]), jnp.diff(c, axis=-1)], axis=-1)
    return traj._replace(particles=particles, observables=obs)
