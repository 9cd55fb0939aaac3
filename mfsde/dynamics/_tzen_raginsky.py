"""Tzen–Raginsky's McKean–Vlasov SDEs on t ∈ [0, 1] from the prior mean (docs/design.md §1, 2–3).

Both need a Gaussian prior π₀ = N(m, Σ) with independent coordinates (Σ diagonal) and
start every particle at W_0 = m; without control W_1 ~ π₀.

- Greedy:   dW = −β Σ ∇Ψ(W; Law W_t) dt + Σ^{1/2} dB.
- Optimal (Schrödinger bridge / Föllmer process to ρ*): dW = u*(W, t) dt + Σ^{1/2} dB with
      u*(w, t) = Σ ∇_w log h(w, t),   h(w, t) = ∫ N(v; w, (1 − t)Σ) e^{−βΨ(v; ρ*)} dv
               = −β Σ E_{Q_{w,t}}[∇Ψ(v; ρ*)] = (E_{Q_{w,t}}[v] − w)/(1 − t),
      Q_{w,t}(dv) ∝ N(v; w, (1 − t)Σ) e^{−βΨ(v; ρ*)}.
  Its terminal law is ρ* (= π₀ e^{−βΨ*}/Z), its control cost E ½∫‖Σ^{-1/2}u*‖² dt equals
  KL(ρ*‖π₀), and J = cost + (β/2) R(Law W_1) = β F_β(ρ*) = min J (Tzen–Raginsky).

The control cost is integrated along the path as one extra state column,
dc_i = ½‖Σ^{-1/2} u(W_i, t)‖² dt (no noise), so the same diffrax core solves (N, D + 1).

The bridge's inner expectation E_Q[∇Ψ] is estimated by self-normalised multiple importance
sampling (balance heuristic) over two proposals, num_inner draws per particle and step:
  (g) a Gaussian N(μ, (1 − t)Σ) with μ = w − β(1 − t)Σ∇Ψ(w; ρ*), Q's Laplace-type centre:
      exact in the linear case (Ψ linear in v makes Q this Gaussian), and accurate as
      t → 1 where Q narrows to N(w, (1 − t)Σ);
  (r) draws of ρ* itself (a pool from MCMC), weighted by N(v; w, (1 − t)Σ)/π₀(v): exact at
      t = 0 (Q_{m,0} = ρ*), degenerate as t → 1.
The mixture density needs ρ*'s normaliser Z = E_π₀[e^{−βΨ*}] (tempered SMC). The gradient
form of u* is used because its variance stays bounded as t → 1, where (E_Q[v] − w)/(1 − t)
divides Monte Carlo noise of size sqrt(1 − t) by 1 − t. At t ≥ 1 the drift is
−βΣ∇Ψ(w; ρ*) (Q = δ_w).
"""

from __future__ import annotations

import math
import os
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import finite, is_traced, particle_array, positive_int
from ..fixed_point import FixedPoint, gibbs_log_normalizer, sample_gibbs
from ..free_energy import FreeEnergy
from .._memory import particle_run_bytes
from ._checkpoint import array_digest, data_fingerprint
from ._sharding import run_sharding
from ._core import Trajectory, drive
from ._engine import num_fixed_steps
from ._saves import default_save_steps
from ._sde import ParticleSDE
from .._keys import as_keys, single_key
from .._blocks import row_blocks, unblock
from .._trajectory import Run

__all__ = ["mckean_vlasov", "schrodinger_bridge", "value_function", "ValueFunction", "GibbsFlow", "gaussian_prior",
           "time_grid", "BridgeOptions", "ControlledState", "GreedyDrift", "BridgeDrift"]


class BridgeOptions(NamedTuple):
    """A bridge run's settings (``Trajectory.run.options``): the inner estimator of the
    drift, its inner draws per particle and the log-normaliser log Z it used (0: none given)."""

    estimator: str
    num_inner: int
    log_normalizer: float

ESTIMATORS = ("mis", "gaussian", "fixed_point")
# Inner points (particles x num_inner) handled at once; the data are chunked within that.
_INNER_POINTS_CPU = 1 << 14
_INNER_POINTS_ACCEL = 1 << 18
# Smallest 1 − t used in the inner Gaussian (Q is δ_w at t = 1).
_MIN_REMAINING_TIME = 1e-12


def gaussian_prior(fe: FreeEnergy) -> tuple[np.ndarray, np.ndarray]:
    """(m, diag Σ) of π₀ = N(m, Σ) in flat coordinates; ValueError unless Σ is diagonal."""
    moments = fe.unit.gaussian_prior_moments()
    if moments is None:
        raise ValueError(
            "Tzen–Raginsky dynamics need a Gaussian prior N(m, Σ): every sample site of the unit model "
            f"must be a Normal distribution; sites: {', '.join(fe.unit.site_names)}")
    mean, cov = moments
    if np.any(np.abs(cov - np.diag(np.diag(cov))) > 0):
        raise ValueError("Tzen–Raginsky dynamics need a prior with independent coordinates (diagonal Σ); "
                         "a MultivariateNormal site with correlations is not supported")
    return mean, np.diag(cov).copy()


def _cost_rate(u, var):
    return 0.5 * jnp.sum(u * u / var, axis=1)


# Saves of a default grid on [0, 1]: the bridge's observables cost inner draws.
_BRIDGE_NUM_SAVES = 21


class ControlledState(NamedTuple):
    """The state of a Tzen–Raginsky run: the particles ``w`` (N, D) and each one's control
    cost accumulated so far, ``cost`` (N,), c_t = ∫_0^t ½‖Σ^{-1/2}u‖² ds."""

    w: Float[Array, "n d"]
    cost: Float[Array, " n"]


class _ConstantNoise(eqx.Module):
    scale: ControlledState

    def __call__(self, t):
        return self.scale


class GreedyDrift(eqx.Module):
    """d/dt of the ``ControlledState``: (u, ½‖Σ^{-1/2}u‖²) with u_i = −β Σ ∇Ψ(W_i; ρ^N_t)."""

    fe: FreeEnergy
    prior_var: Array

    def __call__(self, t, state: ControlledState, args=None) -> ControlledState:
        u = -self.fe.beta * self.prior_var * self.fe.grad_potential(state.w)
        return ControlledState(u, _cost_rate(u, self.prior_var))


def _step_key(key, t):
    # One set of inner draws per time: the key is folded with the bits of t (float32).
    bits = jax.lax.bitcast_convert_type(jnp.asarray(t, jnp.float32), jnp.uint32)
    return jax.random.fold_in(key, bits)


class GibbsFlow(NamedTuple):
    """The Gibbs flow Q_{w,t}(dv) ∝ N(v; w, (1 − t)Σ) e^{−βΨ(v; ρ*)} at n points w, by the
    bridge's inner Monte Carlo (``BridgeDrift``); each field per point:

    - ``log_h`` (n,): log h(w, t), h = ∫ N(v; w, (1 − t)Σ) e^{−βΨ(v; ρ*)} dv
      = E[e^{−βΨ(B_1; ρ*)} | B_t = w] (B with covariance Σ per unit time); the log of an
      unbiased estimate, so biased down by about its relative variance / 2;
    - ``control`` (n, D): u*(w, t) = −βΣ E_Q[∇Ψ(v; ρ*)] = −Σ∇V*(w, t);
    - ``spread`` (n,): E_Q‖v − w‖², which Tzen–Raginsky bound by κ(β_TR + τd)(1 − t);
    - ``greedy_gap`` (n,): ‖E_Q[∇Ψ(v; ρ*)] − ∇Ψ(w; ρ*)‖, what the greedy SDE drops;
    - ``ess`` (n,): the inner effective sample size, summed over the two halves.
    """

    log_h: Float[Array, " n"]
    control: Float[Array, "n d"]
    spread: Float[Array, " n"]
    greedy_gap: Float[Array, " n"]
    ess: Float[Array, " n"]


class BridgeDrift(eqx.Module):
    """(û*, ½ û_a·Σ^{-1}û_b) with û* = (û_a + û_b)/2, two independent importance-sampling
    estimates of the optimal control from num_inner/2 draws each.

    ``estimate(t, w, key)`` is the estimator on its own; its ``ess`` is each particle's
    inner effective sample size Σ_halves (Σ_j ω_j)² / Σ_j ω_j², out of num_inner.
    ``num_gaussian`` and ``num_pool`` count the draws of each proposal per half.
    """

    fe: FreeEnergy
    output: Array
    pool: Array
    log_z: Array
    prior_mean: Array
    prior_var: Array
    key: PRNGKeyArray
    num_gaussian: int = eqx.field(static=True)
    num_pool: int = eqx.field(static=True)
    particle_chunk: int = eqx.field(static=True)

    def _weights_chunk(self, s2, w, key):
        # Q_{w,t}'s self-normalised importance weights (n, 2, m) in two independent halves,
        # with the draws v, the log weights log ω = log[N(v; w, s2 Σ) e^{−βΨ(v)} / q(v)]
        # (E_q ω = h(w, t), q the proposals' mixture), ∇Ψ(v), ∇Ψ(w) and each half's ESS.
        fe, beta, var, m_g, m_r = self.fe, self.fe.beta, self.prior_var, self.num_gaussian, self.num_pool
        n, d = w.shape
        _, grad_w = fe.potential_and_grad(w, self.output)
        mu = w - beta * s2 * var * grad_w
        kz, ki = jax.random.split(key)
        parts = []
        if m_g:
            parts.append(mu[:, None, None, :] + jnp.sqrt(s2 * var) * jax.random.normal(kz, (n, 2, m_g, d), w.dtype))
        if m_r:
            parts.append(self.pool[jax.random.randint(ki, (n, 2, m_r), 0, self.pool.shape[0])])
        v = jnp.concatenate(parts, axis=2)                                   # (n, 2, m, D)
        psi, grad = fe.potential_and_grad(v.reshape(-1, d), self.output)
        psi, grad = psi.reshape(v.shape[:3]), grad.reshape(v.shape)

        def log_normal(x, mean, scale2):
            return -0.5 * jnp.sum((x - mean) ** 2 / scale2 + jnp.log(2 * jnp.pi * scale2), axis=-1)

        log_target = log_normal(v, w[:, None, None], s2 * var) - beta * psi
        m = m_g + m_r
        log_q = []
        if m_g:
            log_q.append(math.log(m_g / m) + log_normal(v, mu[:, None, None], s2 * var))
        if m_r:
            log_q.append(math.log(m_r / m) + log_normal(v, self.prior_mean, var) - beta * psi - self.log_z)
        log_w = log_target - jax.nn.logsumexp(jnp.stack(log_q), axis=0)
        weights = jax.nn.softmax(log_w, axis=2)                              # (n, 2, m)
        ess = jnp.sum(1.0 / jnp.sum(weights**2, axis=2), axis=1)
        return v, log_w, weights, grad, grad_w, ess

    def _estimate_chunk(self, s2, w, key):
        # Two independent half-estimates: their mean drives W, their inner product gives an
        # unbiased ‖Σ^{-1/2}u‖² (the square of one estimate is biased up by its variance).
        beta, var = self.fe.beta, self.prior_var
        _, _, weights, grad, _, ess = self._weights_chunk(s2, w, key)
        halves = -beta * var * jnp.einsum("nhj,nhjd->nhd", weights, grad)    # (n, 2, D)
        rate = 0.5 * jnp.sum(halves[:, 0] * halves[:, 1] / var, axis=1)
        return halves.mean(1), rate, ess

    def _gibbs_flow_chunk(self, s2, w, key):
        v, log_w, weights, grad, grad_w, ess = self._weights_chunk(s2, w, key)
        n, halves, m = log_w.shape
        log_h = jax.nn.logsumexp(log_w.reshape(n, -1), axis=1) - math.log(halves * m)
        spread = jnp.einsum("nhj,nhj->n", weights, jnp.sum((v - w[:, None, None]) ** 2, axis=-1)) / halves
        mean_grad = jnp.einsum("nhj,nhjd->nd", weights, grad) / halves
        return GibbsFlow(log_h, -self.fe.beta * self.prior_var * mean_grad, spread,
                         jnp.linalg.norm(mean_grad - grad_w, axis=1), ess)

    def _by_chunks(self, chunk_fn, t, w, key):
        s2 = jnp.maximum(1.0 - jnp.asarray(t, w.dtype), _MIN_REMAINING_TIME)
        blocks, _ = row_blocks(w, self.particle_chunk)
        keys = jax.random.split(key, blocks.shape[0])
        return unblock(jax.lax.map(lambda a: chunk_fn(s2, a[0], a[1]), (blocks, keys)), w.shape[0])

    def estimate(self, t, w: Float[Array, "n d"], key: PRNGKeyArray
                 ) -> tuple[Float[Array, "n d"], Float[Array, " n"], Float[Array, " n"]]:
        """(û*(w_i, t), unbiased estimate of ½‖Σ^{-1/2}u*‖², inner ESS) for each particle."""
        return self._by_chunks(self._estimate_chunk, t, w, key)

    def gibbs_flow(self, t, w: Float[Array, "n d"], key: PRNGKeyArray) -> GibbsFlow:
        """The Gibbs flow Q_{w_i,t} at each point from the inner draws of ``estimate``, the
        two halves pooled (``GibbsFlow``)."""
        return self._by_chunks(self._gibbs_flow_chunk, t, w, key)

    def __call__(self, t, state: ControlledState, args=None) -> ControlledState:
        u, rate, _ = self.estimate(t, state.w, _step_key(self.key, t))
        return ControlledState(u, rate)


class TzenRaginskyObservables(eqx.Module):
    """risk R(ρ^N_t), control_cost (mean accumulated ½∫‖Σ^{-1/2}u‖²) and its s.e. over the
    particles (control_cost_se), total_cost
    = control_cost + (β/2) risk (J at t = 1); for the bridge also, over the first
    ``num_ess`` particles with fresh inner draws, the inner ESS (mean and min), and the Gibbs
    flow's mean spread E_Q‖v − W_t‖² (gibbs_spread) and greedy gap
    ‖E_Q∇Ψ − ∇Ψ(W_t)‖ (greedy_gap; ``GibbsFlow``)."""

    fe: FreeEnergy
    drift: BridgeDrift | None = None
    num_ess: int = eqx.field(static=True, default=256)

    def __call__(self, t, state: ControlledState, start=None):
        w, cost = state
        out = {"risk": self.fe.risk(w), "control_cost": jnp.mean(cost),
               "control_cost_se": jnp.std(cost) / math.sqrt(cost.shape[0])}
        out["total_cost"] = out["control_cost"] + 0.5 * self.fe.beta * out["risk"]
        if self.drift is not None:
            flow = self.drift.gibbs_flow(t, w[: self.num_ess], jax.random.fold_in(_step_key(self.drift.key, t), 1))
            out["inner_ess"] = jnp.mean(flow.ess)
            out["inner_ess_min"] = jnp.min(flow.ess)
            out["gibbs_spread"] = jnp.mean(flow.spread)
            out["greedy_gap"] = jnp.mean(flow.greedy_gap)
        return out


TIME_GRIDS = ("uniform", "quadratic")


def time_grid(dt0: float, kind: str = "uniform") -> np.ndarray:
    """Step times on [0, 1]: n = ⌈1/dt0⌉ steps, t_k = k/n ("uniform") or
    t_k = 1 − (1 − k/n)² ("quadratic": steps shrink like 2 sqrt(1 − t)/n towards t = 1).

    The bridge's drift stiffens near t = 1 (its Lipschitz constant grows like
    min(1/(1 − t), ‖ΣH‖), H the curvature of βΨ*), which the quadratic grid resolves; but
    with a multimodal ρ* the early steps, where particles leave the saddle at m and pick a
    mode, matter more: on the scalar tanh model the uniform grid passes ``check_fixed_point``
    where the quadratic one fails (bench/README.md, "Numbers moved out of docstrings").
    Hence "uniform" is the default.
    """
    if kind not in TIME_GRIDS:
        raise ValueError(f"time_grid must be one of {TIME_GRIDS}, got {kind!r}")
    n = num_fixed_steps(0.0, 1.0, dt0)
    s = np.arange(n + 1) / n
    return s if kind == "uniform" else 1.0 - (1.0 - s) ** 2


def _inner_block_bytes(fe, points: int) -> int:
    # one block of inner draws: their (points, D) coordinates and weights, and the (points,
    # chunk) unit outputs of one data chunk with their cotangents
    return (points * (fe.dim + 2) + 2 * points * fe.chunk_for(points)) * fe.x.dtype.itemsize


class _GreedySDE(eqx.Module):
    """The greedy SDE's terms and observables (the same for every replicate)."""

    drift: GreedyDrift
    noise: _ConstantNoise

    def __call__(self, key):
        return ParticleSDE(self.drift, self.noise), key, TzenRaginskyObservables(self.drift.fe)


class _BridgeSDE(eqx.Module):
    """The bridge's terms for one replicate key: its inner draws (and the inner-ESS probes
    of its observables) from the key's third split, its Brownian motion from the fourth."""

    drift: BridgeDrift
    noise: _ConstantNoise
    num_ess: int = eqx.field(static=True)

    def __call__(self, key):
        _, _, k_inner, k_bm = jax.random.split(key, 4)
        drift = eqx.tree_at(lambda d: d.key, self.drift, k_inner)
        return ParticleSDE(drift, self.noise), k_bm, TzenRaginskyObservables(drift.fe, drift, self.num_ess)


def _solve_on_unit_interval(fe, family, key, num_particles, dt0, ts, solver, progress, mean, var, grid,
                            checkpoint_every, checkpoint_path, fingerprint, run: Run, inner_bytes=None, mesh=None):
    """``drive`` on t ∈ [0, 1] from the ``ControlledState`` W_0 = m, c_0 = 0;
    ``family(noise)`` is the family's ``sde_of`` module for the noise Σ^{1/2} (the bridge's
    drift depends on the replicate's key)."""
    positive_int("num_particles", num_particles)
    steps = time_grid(float(dt0), grid)
    if ts is None:
        n = len(steps) - 1
        ts = steps[default_save_steps(n, _BRIDGE_NUM_SAVES)]
    dtype = fe.x.dtype
    y0 = ControlledState(jnp.broadcast_to(jnp.asarray(mean, dtype), (num_particles, fe.dim)),
                         jnp.zeros(num_particles, dtype))
    noise = _ConstantNoise(ControlledState(jnp.sqrt(jnp.asarray(var, dtype)), jnp.zeros((), dtype)))

    sde = family(noise)

    controller = None if grid == "uniform" else diffrax.StepTo(ts=jnp.asarray(steps, dtype))
    traj = drive(sde, key, y0, t0=0.0, t1=1.0, dt0=float(dt0), solver=diffrax.Euler() if solver is None else solver,
                 observables=None, ts=ts, stepsize_controller=controller, progress=progress,
                 checkpoint_every=checkpoint_every, checkpoint_path=checkpoint_path,
                 fingerprint=dict(data_fingerprint(fe), time_grid=grid, **fingerprint), run=run,
                 memory=particle_run_bytes(fe, fe.dim + 1, inner_bytes), sharding=run_sharding(mesh, y0.w))
    return traj._replace(particles=traj.particles.w)


def _check_fe(fe):
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    if not fe.finite_beta:
        raise ValueError("Tzen–Raginsky dynamics need a finite beta (the prior's noise is part of them)")


def mckean_vlasov(fe: FreeEnergy, key: PRNGKeyArray, num_particles: int, *, dt0: float = 0.01, ts: Array | None = None,
                  solver: diffrax.AbstractSolver | None = None, time_grid: str = "uniform",
                  progress: bool | None = None, checkpoint_every: int | None = None,
                  checkpoint_path: str | os.PathLike | None = None, mesh: Mesh | None = None) -> Trajectory:
    """Tzen–Raginsky's greedy McKean–Vlasov SDE on N particles, t ∈ [0, 1]:

        W_0 = m,  dW_i = −β Σ ∇Ψ(W_i; ρ^N_t) dt + Σ^{1/2} dB_i,   π₀ = N(m, Σ).

    Its drift is the steepest descent of the risk at each instant, not the optimal control;
    its total cost J = ½∫‖Σ^{-1/2}u‖² + (β/2)R(Law W_1) is ≥ β F_β(ρ*) (attained by
    ``schrodinger_bridge``). In Tzen–Raginsky's units (prior N(0, τI), their β_TR) mfsde's
    β is β_TR/τ, so βΣ = β_TR I.

    Args:
        fe: free energy with a Gaussian prior with independent coordinates; finite β.
        key: PRNG key of the Brownian motion, or a batch of R keys (shape (R,); raw
            ``PRNGKey`` keys too) for R replicate runs, vmapped.
        num_particles: N. dt0: step (default Euler–Maruyama, weak order 1).
        ts: save times in [0, 1] (default 21 points on the step grid).
        time_grid: "uniform" (default; the greedy drift is no stiffer near t = 1) or
            "quadratic" (``mfsde.dynamics.time_grid``).
        checkpoint_every, checkpoint_path: write the state every this many steps to an .npz
            and resume from it (uniform time grid; ``mfsde.dynamics.drive``).
        mesh: a ``jax.sharding.Mesh`` with an axis "particles": split the N particles over
            its devices (N a multiple of its size). Default: one device.

    Returns:
        ``Trajectory`` with particles W_1 (N, D) ((R, N, D) for R keys) and observables
        risk, control_cost, total_cost at ``ts`` ((R, T) for R keys).

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> traj = mfsde.mckean_vlasov(fe, jax.random.key(1), 64, dt0=0.1, progress=False)
        >>> traj.particles.shape                               # W_1 for 64 particles, W_0 = prior mean
        (64, 2)
    """
    _check_fe(fe)
    mean, var = gaussian_prior(fe)
    drift = GreedyDrift(fe, jnp.asarray(var, fe.x.dtype))
    return _solve_on_unit_interval(fe, lambda noise: _GreedySDE(drift, noise), key, num_particles, dt0, ts,
                                   solver, progress, mean, var, time_grid, checkpoint_every, checkpoint_path,
                                   {}, Run(family="mckean_vlasov"), mesh=mesh)


def _bridge_drift(fe: FreeEnergy, fixed_point_or_output, key: PRNGKeyArray, num_inner: int, estimator: str,
                  samples: Array | None, log_normalizer: float | None, particle_chunk: int | str
                  ) -> tuple[BridgeDrift, float]:
    """The bridge's inner estimator for ρ* given as a ``FixedPoint`` or its output f* (P,):
    its pool of ρ* draws (``samples``, the FixedPoint's, else NUTS on G[f*]) and log Z
    (``log_normalizer``, else tempered SMC) from one key's first two splits; its own key is
    a placeholder that each caller replaces. Returns it and log Z as a float (0: none)."""
    _check_fe(fe)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    smallest = 4 if estimator == "mis" else 2
    if not (isinstance(num_inner, (int, np.integer)) and num_inner >= smallest and num_inner % smallest == 0):
        raise ValueError(f"num_inner must be a multiple of {smallest} (two halves{' of two proposals' if smallest == 4 else ''})"
                         f" for estimator {estimator!r}, got {num_inner!r}")
    mean, var = gaussian_prior(fe)
    dtype = fe.x.dtype
    k_pool, k_z, _, _ = jax.random.split(key, 4)
    if isinstance(fixed_point_or_output, FixedPoint):
        output = jnp.asarray(fixed_point_or_output.output, dtype)
        if samples is None:
            samples = fixed_point_or_output.samples
    else:
        output = jnp.asarray(fixed_point_or_output, dtype)
    output = fe._check_output(output)
    half = num_inner // 2
    n_g = {"mis": half // 2, "gaussian": half, "fixed_point": 0}[estimator]
    n_r = half - n_g
    if n_r and samples is None:
        init = fe.prior_sample(k_pool, 4)
        samples = sample_gibbs(fe, jax.random.fold_in(k_pool, 1), output, init, num_samples=1000).samples
    pool = jnp.zeros((1, fe.dim), dtype) if samples is None else jnp.asarray(samples, dtype).reshape(-1, fe.dim)
    if pool.shape[-1] != fe.dim:
        raise ValueError(f"samples of ρ* must have last axis D = {fe.dim}, got shape {pool.shape}")
    finite("samples", pool)
    if n_r and n_g and log_normalizer is None:
        log_normalizer = gibbs_log_normalizer(fe, k_z, output, samples=pool).log_z
    log_z_value = 0.0 if log_normalizer is None else float(log_normalizer)
    if particle_chunk == "auto":
        cap = _INNER_POINTS_CPU if jax.default_backend() == "cpu" else _INNER_POINTS_ACCEL
        particle_chunk = max(1, cap // num_inner)
    if not (isinstance(particle_chunk, (int, np.integer)) and particle_chunk >= 1):
        raise ValueError(f"particle_chunk must be a positive integer or 'auto', got {particle_chunk!r}")
    drift = BridgeDrift(fe, output, pool, jnp.asarray(log_z_value, dtype), jnp.asarray(mean, dtype),
                        jnp.asarray(var, dtype), jax.random.key(0), n_g, n_r, int(particle_chunk))
    return drift, log_z_value


def schrodinger_bridge(fe: FreeEnergy, fixed_point_or_output, key: PRNGKeyArray, num_particles: int, *,
                       dt0: float = 0.01, num_inner: int = 32, estimator: str = "mis", samples: Array | None = None,
                       log_normalizer: float | None = None, ts: Array | None = None,
                       solver: diffrax.AbstractSolver | None = None, time_grid: str = "uniform",
                       particle_chunk: int | str = "auto",
                       num_ess: int = 256, progress: bool | None = None, checkpoint_every: int | None = None,
                       checkpoint_path: str | os.PathLike | None = None, mesh: Mesh | None = None) -> Trajectory:
    """Tzen–Raginsky's optimally controlled McKean–Vlasov SDE (Schrödinger bridge to ρ*):

        W_0 = m,  dW_i = u*(W_i, t) dt + Σ^{1/2} dB_i,   u*(w, t) = −β Σ E_{Q_{w,t}}[∇Ψ(v; ρ*)],
        Q_{w,t}(dv) ∝ N(v; w, (1 − t)Σ) exp(−β Ψ(v; ρ*)),   t ∈ [0, 1].

    Law(W_1) = ρ*, control cost ½E∫‖Σ^{-1/2}u*‖² dt = KL(ρ*‖π₀) and J = β F_β(ρ*).
    The inner expectation is estimated per particle and step from ``num_inner`` draws by
    multiple importance sampling (module docstring), in chunks of particles so that at most
    ``particle_chunk`` x num_inner inner points (and one data chunk) are alive at once.

    Args:
        fe: free energy with a Gaussian prior with independent coordinates; finite β.
        fixed_point_or_output: ``mfsde.FixedPoint`` (its output f* and draws of ρ* are
            used) or the output f* (P,) of ρ* on the data.
        key: PRNG key (Brownian motion, inner draws, and the MCMC / SMC run if needed), or a
            batch of R keys (raw ``PRNGKey`` keys too) for R replicate runs: each its own
            Brownian motion and inner draws, the pool and log Z shared (from the first key),
            so with ``samples`` and ``log_normalizer`` given, replicate r is the run with key r.
        num_particles, dt0, num_inner: N, the step, inner draws per particle and step.
        estimator: "mis" (default; half the draws from each proposal), "gaussian" (only
            the Gaussian proposal) or "fixed_point" (only ρ* draws).
        samples: draws of ρ* (any leading shape, last axis D) for the pool; default the
            FixedPoint's draws, else 4 NUTS chains of 1000 draws of G[f*].
        log_normalizer: log Z = log E_π₀[exp(−βΨ(θ; ρ*))]; default adaptive tempered SMC
            (``gibbs_log_normalizer``). Only "mis" needs it.
        ts: save times (default 21 on the step grid).
        time_grid: "uniform" (default) or "quadratic" (⌈1/dt0⌉ steps refined towards
            t = 1, where the drift is stiff; ``mfsde.dynamics.time_grid``).
        particle_chunk: particles per chunk
            ("auto": 2^14 inner points on CPU, 2^18 on accelerators).
        num_ess: the inner ESS is reported on this many particles at each save time.
        checkpoint_every, checkpoint_path: write the state every this many steps to an .npz
            and resume from it (uniform time grid; ``mfsde.dynamics.drive``).
        mesh: a ``jax.sharding.Mesh`` with an axis "particles": split the N particles over
            its devices (N a multiple of its size). Default: one device.

    Returns:
        ``Trajectory``: particles W_1 (N, D); observables risk, control_cost, total_cost,
        inner_ess (mean), inner_ess_min, gibbs_spread and greedy_gap at ``ts``.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> m_star = lg.fixed_point_mean(fe.x, fe.y, 4.0)             # the closed-form rho* = N(m*, I)
        >>> br = mfsde.schrodinger_bridge(fe, fe.x @ m_star, jax.random.key(1), 64, dt0=0.1, num_inner=4, progress=False)
        >>> br.particles.shape                                 # W_1 ~ rho*
        (64, 2)
    """

    _check_fe(fe)
    key, batched = as_keys(key)
    # replicates share the pool of ρ* draws and log Z, made from the first key
    drift, log_z_value = _bridge_drift(fe, fixed_point_or_output, key[0] if batched else key, num_inner, estimator,
                                       samples, log_normalizer, particle_chunk)
    output, pool, mean, var = drift.output, drift.pool, drift.prior_mean, drift.prior_var

    fingerprint = {}
    if checkpoint_path is not None:
        fingerprint.update(output_sha256=array_digest(output), pool_sha256=array_digest(pool))
    return _solve_on_unit_interval(fe, lambda noise: _BridgeSDE(drift, noise, int(num_ess)), key, num_particles, dt0, ts, solver, progress, mean, var, time_grid,
                                   checkpoint_every, checkpoint_path, fingerprint,
                                   Run(family="schrodinger_bridge",
                                       options=BridgeOptions(estimator, int(num_inner), log_z_value)),
                                   inner_bytes=lambda n: _inner_block_bytes(fe, min(n, drift.particle_chunk) * num_inner),
                                   mesh=mesh)


@eqx.filter_jit
def _gibbs_flow(drift: BridgeDrift, w, t, key) -> GibbsFlow:
    return drift.gibbs_flow(t, w, key)


class ValueFunction(eqx.Module):
    """Tzen–Raginsky's value function of the bridge, in mfsde's convention (π₀ = N(m, Σ)):

        V*(w, t) = −log h(w, t),   h(w, t) = E[exp(−βΨ(B_1; ρ*)) | B_t = w],

    B a Brownian motion with covariance Σ per unit time (B_1 | B_t = w ~ N(w, (1 − t)Σ)).
    h solves the backward heat equation ∂_t h + ½ tr(Σ∇²h) = 0, so

        u*(w, t) = Σ∇log h = −Σ∇V*,   V*(w, 1) = βΨ(w; ρ*),
        ∂_t V* + ½ tr(Σ∇²V*) − ½ ∇V*ᵀ Σ ∇V* = 0   (HJB).

    Tzen–Raginsky's V (their prior N(0, τI), their β_TR = τβ) is τV*: multiplying by τ
    gives their (1b), ∂_t V = −(τ/2)ΔV + ½‖∇V‖², and V(w, 1) = β_TR Ψ(w; ρ*).

    ``V(w, t)`` (w (n, D), t a scalar in [0, 1]) is V* at each point, ``V.control(w, t)``
    u* (n, D), ``V.gibbs_flow(w, t)`` the ``GibbsFlow`` of Q_{w,t}. All are the bridge's
    inner Monte Carlo (``BridgeDrift``) with the same draws at every call unless a ``key``
    is given: a smooth function of (w, t), so its finite differences and autodiff are
    those of one fixed estimator, not of fresh noise. log h is the log of an unbiased
    estimate: V* is biased up by about half the relative variance of ĥ (``GibbsFlow``).
    """

    drift: BridgeDrift

    def gibbs_flow(self, w: Float[Array, "n d"], t, key: PRNGKeyArray | None = None) -> GibbsFlow:
        w = particle_array("w", w, self.drift.fe.dim)
        if not is_traced(t) and not 0.0 <= float(t) <= 1.0:
            raise ValueError(f"t must be in [0, 1], got {t!r}")
        key = self.drift.key if key is None else single_key(key)
        return _gibbs_flow(self.drift, w, jnp.asarray(t, w.dtype), key)

    def __call__(self, w: Float[Array, "n d"], t, key: PRNGKeyArray | None = None) -> Float[Array, " n"]:
        return -self.gibbs_flow(w, t, key).log_h

    def control(self, w: Float[Array, "n d"], t, key: PRNGKeyArray | None = None) -> Float[Array, "n d"]:
        return self.gibbs_flow(w, t, key).control


def value_function(fe: FreeEnergy, fixed_point_or_output, key: PRNGKeyArray, *, num_inner: int = 256,
                   estimator: str = "mis", samples: Array | None = None, log_normalizer: float | None = None,
                   particle_chunk: int | str = "auto") -> ValueFunction:
    """The bridge's value function V*(w, t) = −log E[e^{−βΨ(B_1; ρ*)} | B_t = w] and its
    Gibbs flow Q_{w,t} (``ValueFunction``), by the inner Monte Carlo of
    ``schrodinger_bridge`` with ``num_inner`` draws per point.

    Args:
        fe: free energy with a Gaussian prior with independent coordinates; finite β.
        fixed_point_or_output, samples, log_normalizer, estimator, particle_chunk: as for
            ``schrodinger_bridge`` (the pool of ρ* draws and log Z; "mis" and "gaussian"
            estimate h itself, "fixed_point" needs ``log_normalizer`` for it).
        key: one PRNG key: the pool and log Z if they are made, and the inner draws.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> m_star = lg.fixed_point_mean(fe.x, fe.y, 4.0)             # rho* = N(m*, I), u* = m*
        >>> V = mfsde.value_function(fe, fe.x @ m_star, jax.random.key(0), estimator="gaussian")
        >>> bool(jnp.allclose(V.control(jnp.zeros((3, 2)), 0.5), m_star, atol=1e-5))
        True
    """
    key = single_key(key, replicates="one value function")
    if estimator == "fixed_point" and log_normalizer is None:
        raise ValueError("the value function needs h itself: with estimator='fixed_point' pass log_normalizer")
    drift, _ = _bridge_drift(fe, fixed_point_or_output, key, num_inner, estimator, samples, log_normalizer,
                             particle_chunk)
    return ValueFunction(eqx.tree_at(lambda d: d.key, drift, jax.random.split(key, 4)[2]))
