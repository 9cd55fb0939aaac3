"""Is a particle cloud the stationary law? A self-consistency test that is exact at finite N.

Write U(θ, θ') = ⟨σ(θ), σ(θ')⟩ (⟨u, v⟩ = (1/P) Σ_p u_p v_p: ``FreeEnergy.interaction``),
a = β/P, and G[f] ∝ π₀ exp(−βΨ(·; f)). Under the N-particle stationary law p_N
(``mfsde.particle_posterior``) each particle's conditional law given the others is exactly

    G_i(θ) ∝ G[f_N](θ) · exp((β/N) [U(θ_i, θ) − ½ U(θ, θ)]),

(expand βN·½R(f_N) with f_N = F_i + σ(θ_i)/N around the others' F_i). Hence, for any test
function h, E_{p_N}[(1/N) Σ_i h(θ_i) − (1/N) Σ_i E_{G_i}[h]] = 0: the residual
r_h = h̄_N − E_mix[h], mix = (1/N) Σ_i G_i, has mean zero at every N. E_mix is computed from
draws of G[f_N] by importance weights (the exact mixture, not an expansion in 1/N). Its
difference from E_{G[f_N]}[h], the plain mean-field residual, is the O(β/N) self-interaction
term that separates the N-particle law from ρ*.

Its fluctuation (linear response around the fixed point; exact for the linear unit, where
Var(θ̄ − E_{G[f_N]}θ) = (s²/N)(I + βs²Σ̂)): for a vector of test functions Φ,

    Cov(r_Φ) = (1/N) [Cov(Φ) + a Σ_p Cov(Φ, σ_p) Cov(σ_p, Φ)] + Σ_MC,

Σ_MC the Monte Carlo error of E_mix from the draws (Cov(Φ)/ESS per component). The second
term is why a threshold of sd/√N is wrong: the Gibbs map amplifies output fluctuations
along the stiff directions of the data by up to 1 + aλ_max(Cov σ). The test statistic
T = rᵀ Cov(r)⁻¹ r is χ² with dim(Φ) degrees of freedom under the null.

Φ: the particles' output along the top principal directions of Cov_G(σ) (what the data
constrain), every unconstrained coordinate θ_j (16 random projections when D > 32), and each
site's mean square ‖θ_s‖² (what slow marginals move).
"""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._blocks import row_blocks, unblock
from ._checks import finite, particle_array, positive_int, positive_number
from ._keys import single_key
from .diagnostics import OptimalityCertificate, convergence, optimality_certificate, to_inference_data
from .diagnostics._arviz import check_tree, result_tree
from .diagnostics._convergence import _ess, _uniform_saves, diagnostic_series
from .dynamics import Run, Trajectory, max_curvature
from .fixed_point import sample_gibbs
from .free_energy import FreeEnergy
from .particle_posterior import stein_residual
from .particles import Particles

__all__ = ["SelfConsistency", "self_consistency", "SteinTest", "stein_test", "FixedPointCheck", "check_fixed_point",
           "CurvatureDefect", "curvature_defect", "CAUSES", "MAX_COORDINATES", "NUM_PROJECTIONS", "DT_SHRINK",
           "DT_CONTRADICTS", "DT_KEEPS"]

# Every coordinate is a test function up to this D; above it, NUM_PROJECTIONS random ones.
MAX_COORDINATES = 32
NUM_PROJECTIONS = 16
# Draws used for the covariance terms and the principal directions of the output.
_COVARIANCE_DRAWS = 1000
# Particle rows per block when forming the (N, S) importance log-weights.
_WEIGHT_BLOCK = 512
# What check_fixed_point can name as the cause of its verdict.
CAUSES = ("passes", "finite-N", "not stationary", "time-step bias", "unexplained")
# A snapshot failure is put down to the time step when halving dt0 shrinks the worst |z| by
# this factor; a Stein failure is, unless after halving dt0 the temperature excess stays above
# DT_KEEPS of itself by more than DT_CONTRADICTS s.e. (a time-step bias of any order >= 1
# at least halves; DT_KEEPS < 1 leaves room for steps outside the asymptotic regime).
DT_SHRINK = 1.5
DT_CONTRADICTS = 2.0
DT_KEEPS = 0.8
# Central-difference step of the smoothness probe, relative to the particles' rms size.
_KINK_STEP = 1e-2
# The probe voids the Stein test when the curvature autodiff misses is this share of it.
_KINK_SHARE = 0.01


class CurvatureDefect(eqx.Module):
    """``curvature_defect``: curvature of Ψ that finite differences see and autodiff does not.

    mean, se: per-particle average of m_i = vᵀ[∇Ψ(θ_i + hv) − ∇Ψ(θ_i − hv)]/(2h) − vᵀ∇²Ψ(θ_i)v
    (Rademacher v, f_N frozen) and its standard error over particles; z = mean/se.
    share: mean / the curvature c of ``stein_residual`` (the temperature's denominator). For a C² potential m_i =
    O(h²); at a kink of the unit (ReLU, truncated ReLU) autodiff's Hessian is zero where the
    true one has a point mass, which the difference quotient picks up with weight O(1).
    """

    mean: float
    se: float
    z: float
    share: float

    def kinked(self, z_crit: float) -> bool:
        return abs(self.z) > z_crit and abs(self.share) > _KINK_SHARE


@eqx.filter_jit
def _curvature_parts(fe: FreeEnergy, theta, key, rel_step, num_probes: int):
    """(v·[∇Ψ(θ + hv) − ∇Ψ(θ − hv)]/(2h) − vᵀ∇²Ψ v per probe, the Stein curvature scale)."""
    _, f = fe.grad_potential_and_output(theta)
    probes = jnp.tile(theta, (num_probes, 1))
    v = jax.random.rademacher(key, probes.shape, theta.dtype)
    h = rel_step * jnp.sqrt(jnp.mean(theta**2))
    h = jnp.where(h > 0, h, rel_step)

    def grad(th):
        return fe.potential_and_grad(th, f)[1]

    hvp = jnp.sum(v * jax.jvp(grad, (probes,), (v,))[1], axis=1)
    difference = jnp.sum(v * (grad(probes + h * v) - grad(probes - h * v)), axis=1) / (2.0 * h)
    return difference - hvp, stein_residual(fe, theta, jax.random.fold_in(key, 1))[1]


def curvature_defect(fe: FreeEnergy, particles: Float[Array, "n d"], key: PRNGKeyArray,
                     rel_step: float = _KINK_STEP, num_probes: int = 16) -> CurvatureDefect:
    """Is Ψ(·; f_N) twice differentiable along the particles? (``CurvatureDefect``)

    Stein's identity behind the configurational temperature (``stein_residual``) integrates
    by parts twice, so it holds only for a C² potential; a kinked unit makes the autodiff
    Laplacian miss the kinks' point masses and the temperature meaningless, whatever the
    time step. h = rel_step · rms(θ); ``num_probes`` probes per particle (a kink is crossed
    by few data points per probe, so one probe is noisy); about 3·num_probes gradient-sized
    passes over the data.

    Examples:
        >>> import jax, jax.numpy as jnp, numpyro, numpyro.distributions as dist, mfsde
        >>> x = jax.random.normal(jax.random.key(0), (256, 2)); y = jnp.sign(x[:, 0])
        >>> def unit(x):
        ...     w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
        ...     return jnp.maximum(x @ w, 0.0)
        >>> fe = mfsde.FreeEnergy(unit, x, y, beta=10.0)
        >>> probe = mfsde.curvature_defect(fe, fe.prior_sample(jax.random.key(1), 64), jax.random.key(2))
        >>> bool(probe.kinked(3.5))  # ReLU: autodiff's Hessian misses the kink
        True
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    theta = particle_array("particles", particles, fe.dim)
    finite("particles", theta)
    n = theta.shape[0]
    if n < 2:
        raise ValueError(f"particles must hold at least 2 particles (a standard error over them), got {n}")
    rel_step = positive_number("rel_step", rel_step)
    num_probes = positive_int("num_probes", num_probes)
    key = single_key(key, replicates="one probe set per call")
    defect, scale = _curvature_parts(fe, theta, key, jnp.asarray(rel_step, theta.dtype), num_probes)
    m = np.asarray(defect, np.float64).reshape(num_probes, n).mean(axis=0)
    mean, se = float(m.mean()), float(m.std(ddof=1) / math.sqrt(n))
    scale = float(scale)
    return CurvatureDefect(mean, se, mean / se if se > 0 else 0.0, mean / scale if scale != 0 else float("inf"))


class SelfConsistency(eqx.Module):
    """The finite-N self-consistency statistic of a particle cloud against draws of G[f_N].

    statistic, p_value: T = rᵀ Cov(r)⁻¹ r and its χ²(dof) tail probability, with r the
    exact finite-N residual; mean_field_statistic, mean_field_p_value: the same for the
    plain residual h̄_N − E_{G[f_N]}[h] (which carries the O(β/N) self-interaction term).
    z, mean_field_z: per-component z-scores, named by ``components``. output_error:
    ‖f_N − E_mix[σ]‖ over the data; output_scale: its null root-mean-square. weight_ess:
    the smallest effective sample size of the N importance weightings (of S draws).
    mc_fraction: per component, the share of Var(r) that is the Monte Carlo error of
    E_mix from the draws (the rest is the particles' own finite-N fluctuation); more
    draws shrink only this share. sd: per component, the null standard deviation of r
    (z = r / sd).
    """

    statistic: float
    dof: int = eqx.field(static=True)
    p_value: float
    mean_field_statistic: float
    mean_field_p_value: float
    components: tuple[str, ...] = eqx.field(static=True)
    z: np.ndarray
    mean_field_z: np.ndarray
    output_error: float
    output_scale: float
    weight_ess: float
    mc_fraction: np.ndarray
    sd: np.ndarray


def _self_interaction(fe: FreeEnergy, thetas: Array) -> Array:
    """U(θ, θ) = ⟨σ(θ), σ(θ)⟩ for each row, chunked over the data: shape (M,)."""
    xc, _, wc = fe._chunked(thetas.shape[0], fe.x)

    def chunk(acc, batch):
        xb, wb = batch
        return acc + jnp.sum(fe.features(thetas, xb) ** 2 * wb, axis=1), None

    return jax.lax.scan(chunk, jnp.zeros(thetas.shape[0], thetas.dtype), (xc, wc))[0] / fe.num_data


def _mixture_weights(fe: FreeEnergy, particles: Array, draws: Array) -> tuple[Array, Array]:
    """W_s = (1/N) Σ_i w_is with w_i ∝ exp((β/N)[U(θ_i, θ_s) − ½U(θ_s, θ_s)]) normalised over s;
    and the effective sample size 1/Σ_s w_is² of each row, shape (N,)."""
    n = particles.shape[0]
    c = fe.beta / n
    half_self = 0.5 * _self_interaction(fe, draws)
    rows, valid = row_blocks(particles, _WEIGHT_BLOCK)

    def block(args):
        theta, ok = args
        w = jax.nn.softmax(c * (fe.interaction(theta, draws) - half_self[None]), axis=1)
        return jnp.sum(w * ok[:, None], axis=0), 1.0 / jnp.sum(w**2, axis=1)

    total, ess = jax.lax.map(block, (rows, valid))
    return total.sum(0) / n, unblock(ess, n)


def _max_abs_normal_p(t: float, m: int) -> float:
    """Bonferroni p-value of max_j |z_j| = t over m standard normal components."""
    return float(min(1.0, m * math.erfc(t / math.sqrt(2.0))))


@eqx.filter_jit
def _output_directions(fe: FreeEnergy, sub: Array) -> tuple[Array, Array, Array]:
    """Principal directions of Cov_G(σ) from the centred interaction matrix of the draws
    (for a centred eigenvector α, α ⊥ 1, the output's component is αᵀ U(sub, θ)):
    (U_c, eigenvalues ascending, eigenvectors)."""
    m_sub = sub.shape[0]
    centre = jnp.eye(m_sub, dtype=sub.dtype) - 1.0 / m_sub
    u_centred = centre @ fe.interaction(sub, sub) @ centre
    lam, vec = jnp.linalg.eigh(u_centred)
    return u_centred, lam, vec


@eqx.filter_jit
def _residual_parts(fe: FreeEnergy, particles: Array, flat: Array, sub: Array, u_centred: Array, alpha: Array,
                    proj: Array, site_cols: tuple[tuple[int, ...], ...]):
    """The test functions Φ on the draws, the exact and mean-field residuals, the two
    covariance terms of Var(r), the importance weights' ESS, f_N and E_mix[σ]."""
    cols = [np.asarray(c) for c in site_cols]
    # log(1 + ‖θ_s‖²/c_s), c_s the draws' median of ‖θ_s‖²: the spread of a site, with
    # log tails (‖θ_s‖² itself is heavy-tailed when a marginal is a wide mixture, and its
    # mean over N particles or S draws is then far from Gaussian).
    spread_scale = jnp.stack([jnp.median(jnp.sum(flat[:, c] ** 2, axis=1)) for c in cols])

    def phi(z):
        sq = jnp.stack([jnp.sum(z[:, c] ** 2, axis=1) for c in cols], axis=1)
        return jnp.concatenate([fe.interaction(z, sub) @ alpha, z @ proj, jnp.log1p(sq / spread_scale)], axis=1)

    m_sub = sub.shape[0]
    phi_p, phi_d = phi(particles), phi(flat)
    weights, weight_ess = _mixture_weights(fe, particles, flat)
    mean_p = phi_p.mean(0)
    r = mean_p - weights @ phi_d
    r_mf = mean_p - phi_d.mean(0)
    phi_sub = phi(sub)
    pc = phi_sub - phi_sub.mean(0)
    cov = pc.T @ pc / m_sub
    amplified = fe.beta * (pc.T @ u_centred @ pc) / m_sub**2
    return (phi_d, r, r_mf, cov, amplified, weight_ess, fe.output(particles),
            _mixture_output(fe, flat, weights))


def self_consistency(fe: FreeEnergy, particles: Float[Array, "n d"], draws: Float[Array, "c s d"], *,
                     key: PRNGKeyArray | None = None, num_output_components: int = 4) -> SelfConsistency:
    """The finite-N self-consistency statistic of ``particles`` given draws of G[f_particles].

    ``draws`` (chains, draws, D) must sample G[f_N] with f_N = ``fe.output(particles)``
    (MCMC chains, or exact independent draws as one chain); their autocorrelation enters
    through ArviZ's effective sample size of each test function. See the module docstring
    for the statistic and its null distribution. ``key`` picks the random projections
    used when D > ``MAX_COORDINATES``.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> traj = mfsde.langevin(fe, jax.random.key(2), p0, t1=4.0, dt0=0.1, progress=False)
        >>> g = mfsde.sample_gibbs(fe, jax.random.key(3), fe.output(traj.particles), traj.particles[:2],
        ...                       num_warmup=100, num_samples=200)
        >>> test = mfsde.self_consistency(fe, traj.particles, g.samples, key=jax.random.key(4))
        >>> bool(0.0 <= test.p_value <= 1.0)
        True
    """
    if key is not None:
        key = single_key(key, replicates="a key picks the projections of one statistic")
    from arviz_stats import ess

    particles = particle_array("particles", particles, fe.dim, at_least=2, why="the test needs a covariance")
    draws = jnp.asarray(draws, particles.dtype)
    if draws.ndim != 3 or draws.shape[-1] != fe.dim:
        raise ValueError(f"draws must have shape (chains, draws, {fe.dim}), got {draws.shape}")
    n = particles.shape[0]
    chains, per_chain, d = draws.shape
    flat = draws.reshape(-1, d)
    s = flat.shape[0]
    sub = flat[np.unique(np.linspace(0, s - 1, min(s, _COVARIANCE_DRAWS)).astype(int))]
    m_sub = sub.shape[0]

    u_centred, lam, vec = _output_directions(fe, sub)
    keep = np.flatnonzero(np.asarray(lam) > 1e-10 * float(lam[-1]))[::-1][:num_output_components]
    alpha = vec[:, keep]

    if d <= MAX_COORDINATES:
        proj = jnp.eye(d, dtype=particles.dtype)
        proj_names = fe.unit.coordinate_names()
    else:
        key = jax.random.key(0) if key is None else key
        proj = jnp.linalg.qr(jax.random.normal(key, (d, NUM_PROJECTIONS), particles.dtype))[0]
        proj_names = [f"projection[{j}]" for j in range(NUM_PROJECTIONS)]
    sites = fe.unit.site_indices()
    names = tuple([f"output PC{j + 1}" for j in range(len(keep))] + proj_names
                  + [f"spread of {k}" for k in sites])
    site_cols = tuple(tuple(int(i) for i in np.atleast_1d(idx).reshape(-1)) for idx in sites.values())
    phi_d, r, r_mf, cov, amplified, weight_ess, f_n, g_mix = _residual_parts(fe, particles, flat, sub, u_centred,
                                                                           alpha, proj, site_cols)
    ess_j = np.asarray(ess(np.asarray(phi_d).reshape(chains, per_chain, -1), method="mean"), np.float64)
    ess_j = np.clip(np.nan_to_num(ess_j, nan=1.0), 1.0, s)
    var_mc = jnp.diag(cov) / jnp.asarray(ess_j, cov.dtype)
    var = (jnp.diag(cov) + jnp.diag(amplified)) / n + var_mc
    sd = np.sqrt(np.asarray(var))
    z, z_mf = np.asarray(r) / sd, np.asarray(r_mf) / sd
    m = len(names)
    t, t_mf = float(np.max(np.abs(z))), float(np.max(np.abs(z_mf)))

    out_var = (jnp.trace(u_centred) / m_sub + fe.beta * jnp.sum(u_centred**2) / m_sub**2) * fe.num_data / n
    return SelfConsistency(t, m, _max_abs_normal_p(t, m), t_mf, _max_abs_normal_p(t_mf, m), names, z, z_mf,
                           float(jnp.linalg.norm(f_n - g_mix)), float(jnp.sqrt(out_var)),
                           float(jnp.min(weight_ess)), np.asarray(var_mc / var), sd)


def _mixture_output(fe: FreeEnergy, draws: Array, weights: Array) -> Array:
    """Σ_s W_s σ(x; θ_s) on the data, chunked: E_mix[σ], shape (P,)."""
    xc, _, _ = fe._chunked(draws.shape[0], fe.x)
    out = jax.lax.map(lambda xb: weights @ fe.features(draws, xb), xc)
    return out.reshape(-1)[: fe.num_data]



class SteinTest(eqx.Module):
    """Time average of the in-run Stein residual over a run's stationary part (second half).

    mean ± se (ESS-based, pooled over replicate runs), z = mean / se, and the
    configurational temperature 1 + mean / mean(curvature) along the data's directions
    (1 under the exact stationary law), and its standard error ``temperature_se`` = se /
    mean(curvature). dt0: the run's step size.
    """

    mean: float
    se: float
    z: float
    temperature: float
    ess: float
    dt0: float
    temperature_se: float = float("nan")

    def detectable_excess(self, z_crit: float, power: float = 0.95) -> float:
        """The temperature excess a two-sided test at |z| > z_crit catches with probability
        ``power``: (z_crit + Φ⁻¹(power)) · temperature_se."""
        return (z_crit + _normal_isf(1.0 - power)) * self.temperature_se


class FixedPointCheck(eqx.Module):
    """``check_fixed_point``: is a particle cloud the stationary law of its dynamics, and why not.

    passed: consistent with the exact N-particle stationary law (and, given a trajectory,
    the run shows stationarity and no integrator bias). cause: one of ``CAUSES``. reason:
    the verdict in words, with the numbers. test: the snapshot ``SelfConsistency``
    statistic; stein: the trajectory's ``SteinTest`` (None without one); convergence: the
    run's ``mfsde.convergence`` verdict (None without a trajectory); half_step: the
    ``SteinTest`` (or, when only the snapshot failed, the ``SelfConsistency``) after
    continuing the run at dt0/2, when that diagnosis ran. samples: the MCMC draws of
    G[f_N] (chains, draws, D). curvature: the ``curvature_defect`` probe of a trajectory's
    final particles (None without Stein residuals); when it finds Ψ kinked, ``stein`` is None
    and the verdict rests on the snapshot. certificate: the particles'
    ``optimality_certificate`` when asked for (``certificate=True``), else None.
    """

    passed: bool
    cause: str = eqx.field(static=True)
    reason: str = eqx.field(static=True)
    test: SelfConsistency
    stein: SteinTest | None
    convergence: object = eqx.field(static=True)
    half_step: object
    samples: Array
    curvature: CurvatureDefect | None = None
    certificate: OptimalityCertificate | None = None

    @property
    def output_error(self) -> float:
        return self.test.output_error


result_tree.register(FixedPointCheck, check_tree)


def _draws_for(fe, key, particles, num_chains, num_warmup, num_samples, kernel):
    f = fe.output(particles)
    init = particles[np.linspace(0, particles.shape[0] - 1, num_chains).astype(int)]
    return sample_gibbs(fe, key, f, init, num_warmup=num_warmup, num_samples=num_samples, kernel=kernel).samples


def _worst(test: SelfConsistency, mean_field: bool = False) -> str:
    z = test.mean_field_z if mean_field else test.z
    j = int(np.argmax(np.abs(z)))
    return f"{test.components[j]}: z = {z[j]:+.2f}"


def stein_test(traj, burn_in: float = 0.5) -> SteinTest | None:
    """``SteinTest`` of a trajectory that saved ``stein_residual`` (langevin's diagnostics).

    Uses the saves after the first ``burn_in`` of the run's final equally spaced stretch
    (the stationary part ``mfsde.convergence`` judges), all replicate runs pooled; the
    standard error is sd/√ESS with ArviZ's ESS. None when the run did not record it.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> traj = mfsde.langevin(fe, jax.random.key(2), p0, t1=10.0, dt0=0.1, diagnostics=True, progress=False)
        >>> st = mfsde.stein_test(traj)                        # time average of the residual, 0 at p_N
        >>> bool(st.ess > 0), bool(abs(st.z) < 10)
        (True, True)
    """
    if not isinstance(traj, Trajectory):
        raise TypeError(f"traj must be a mfsde.Trajectory (of mfsde.langevin with diagnostics), got "
                        f"{type(traj).__name__}")
    burn_in = float(burn_in)
    if not 0.0 <= burn_in < 1.0:
        raise ValueError(f"burn_in must be a fraction of the run in [0, 1), got {burn_in!r}")
    obs = traj.observables
    if "stein_residual" not in obs:
        return None
    ts = np.asarray(traj.ts, np.float64)
    res = np.asarray(obs["stein_residual"], np.float64)
    curv = np.asarray(obs["stein_curvature"], np.float64)
    res, curv = (a[None] if a.ndim == 1 else a for a in (res, curv))
    every = traj.run.diagnostics_every
    (res, _), (curv, ts) = diagnostic_series(res, ts, every), diagnostic_series(curv, ts, every)
    keep = _uniform_saves(ts, traj.run.dt0 if math.isfinite(traj.run.dt0) else 0.0)
    ts, res, curv = ts[keep], res[:, keep], curv[:, keep]
    part = ts >= ts[0] + burn_in * (ts[-1] - ts[0])
    res, curv = res[:, part], curv[:, part]
    if res.shape[1] < 4 or not np.all(np.isfinite(res)):
        return None
    ess = _ess(res)
    mean, se = float(res.mean()), float(res.std(ddof=1) / math.sqrt(ess))
    z = mean / se if se > 0 else 0.0
    scale = float(curv.mean())
    return SteinTest(mean, se, z, 1.0 + mean / scale, ess, traj.run.dt0,
                     se / abs(scale))


def check_fixed_point(fe: FreeEnergy, key: PRNGKeyArray, particles, *, num_chains: int = 4, num_warmup: int = 400,
                      num_samples: int = 500, kernel: str = "nuts", level: float = 0.01, replicate: int = 0,
                      diagnose: bool = True, diagnose_time: float | None = None,
                      num_output_components: int = 4, certificate: bool = False) -> FixedPointCheck:
    """Is a particle cloud the stationary law of the mean-field dynamics at its N? If not, why?

    Two exact finite-N tests, Bonferroni-combined at ``level``:

    - snapshot (``self_consistency``): samples G[f_N] (f_N the particles' output) with
      BlackJAX; z-scores of the residuals h̄_N − E_mix[h] of a set of test functions,
      exactly mean zero under the N-particle stationary law p_N, standard deviations from
      linear response. Sees particles whose marginals or output are off (runs stopped
      early, wrong dynamics);
    - given a trajectory with langevin's diagnostics: the time average of the Stein
      residual (``stein_test``, ``mfsde.stein_residual``) over the run's stationary part,
      exactly zero under p_N. Sees the integrator's bias, which heats the stiff data
      directions without breaking self-consistency.

    ``particles`` is an (N, D) array or a ``Trajectory`` (its final particles, replicate
    ``replicate`` of a batched run). Given a trajectory the verdict also needs the run to
    show stationarity (``mfsde.convergence``). The cause named is

    - "passes": consistent with p_N, and the plain residual against G[f_N] (the mean-field
      fixed point's self-consistency) is within noise too;
    - "finite-N": consistent with p_N (``passed``), but the plain residual is not: the
      O(β/N) self-interaction term separates the N-particle law from ρ*;
    - "not stationary": the run has not shown stationarity (slowest observable, its
      integrated autocorrelation time and the run's length in the reason);
    - "time-step bias": the run is stationary but its Stein residual is not zero (only the
      invariant law of the discretised dynamics, not a transient, can do that), unless
      continuing it for ``diagnose_time`` (default half its length) at dt0/2 leaves the
      temperature excess above ``DT_KEEPS`` of itself by more than ``DT_CONTRADICTS``
      s.e. (a time-step bias of order >= 1 at least halves); or its snapshot fails and
      that continuation shrinks the worst |z| by a factor ``DT_SHRINK`` (the constants
      of ``mfsde._validation``). The reason gives the temperature excess at dt0 and
      dt0/2, their ratio (2 for order 1, 4 for order 2) and dt0 · λ_max (``max_curvature``);
    The Stein test needs a C² potential: a trajectory's final particles are first probed by
    ``curvature_defect``, and when Ψ is kinked along them (ReLU-type units) the temperature
    test is dropped and the verdict rests on the snapshot (the reason says so).

    - "unexplained": it fails and none of the above is shown (a bare particle array
      cannot be diagnosed; halving dt0 that does not help points elsewhere).

    With ``certificate=True`` the check also bounds how far the particles are from the
    minimiser, F(ρ) − F(ρ*) ≤ β⁻¹KL(ρ‖G[ρ]) (``optimality_certificate``, tempered SMC
    runs), and its reason ends "F(ρ) is within X ± se of its minimum".

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> traj = mfsde.langevin(fe, jax.random.key(2), p0, t1=4.0, dt0=0.1, progress=False)
        >>> check = mfsde.check_fixed_point(fe, jax.random.key(3), traj.particles, num_warmup=200, num_samples=200)
        >>> check.cause in ("passes", "finite-N", "not stationary", "time-step bias", "unexplained")
        True
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    if not fe.finite_beta:
        raise ValueError("check_fixed_point needs a finite beta (the Gibbs measure is degenerate at beta = inf)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")
    traj = particles if isinstance(particles, Trajectory) else None
    state = traj.particles if traj is not None else particles
    if isinstance(state, Particles):
        if state.log_weight is not None:
            raise ValueError("check_fixed_point tests an equally weighted particle cloud (the N-particle law is a "
                             "law of exchangeable particles); resample a weighted one first (Particles.resample)")
        state = state.theta
    batched = traj is not None and jnp.ndim(state) == 3
    if traj is not None:
        theta = jnp.asarray(state)
        if batched:
            if not 0 <= replicate < theta.shape[0]:
                raise ValueError(f"replicate must be in [0, {theta.shape[0]}), got {replicate}")
            theta = theta[replicate]
    else:
        theta = state
    theta = particle_array("particles", theta, fe.dim, at_least=2, why="the test needs a covariance")
    if not bool(jnp.all(jnp.isfinite(theta))):
        raise ValueError("particles contain non-finite values")
    k_mcmc, k_test, k_half = jax.random.split(
        single_key(key, replicates="it checks the replicate runs of one trajectory (replicate=)"), 3)

    def snapshot(th, k):
        draws = _draws_for(fe, k, th, num_chains, num_warmup, num_samples, kernel)
        return self_consistency(fe, th, draws, key=k_test, num_output_components=num_output_components), draws

    ev = _evidence(fe, traj, theta, level, *snapshot(theta, k_mcmc), k_test)
    run = traj.run if traj is not None else None
    half = continued = None
    if _needs_continuation(ev, run, diagnose):
        span = diagnose_time if diagnose_time is not None else 0.5 * (run.t1 - run.t0)
        final = jnp.asarray(state)
        keys = jax.random.split(k_half, final.shape[0]) if batched else k_half
        cont = run.continuation(fe, keys, final, run.t1, run.t1 + span, 0.5 * run.dt0)
        if not ev.stein_ok:
            half = stein_test(cont)
        else:
            half = snapshot(cont.particles[replicate] if batched else cont.particles, jax.random.fold_in(k_mcmc, 1))[0]
        continued = _Continued(half, span, run.dt0, float(max_curvature(fe, theta)))
    passed, cause, reason = _verdict(ev, run, traj is not None, continued, float(fe.beta))
    cert = None
    if certificate:
        # its own stream: the tests' keys are those of a check without a certificate
        cert = optimality_certificate(fe, jax.random.fold_in(k_test, 1), theta)
        reason = f"{reason} {cert}."
    return FixedPointCheck(passed, cause, reason, ev.test, ev.stein, ev.convergence, half, ev.draws, ev.defect, cert)


class _Evidence(NamedTuple):
    """What check_fixed_point's tests found, before any continuation: the snapshot test
    and its draws, the Stein test (None when absent or dropped for a kinked Ψ), the
    curvature probe, the run's convergence, the Bonferroni limit and the statistics' text."""

    test: SelfConsistency
    draws: Array
    stein: SteinTest | None
    defect: CurvatureDefect | None
    convergence: object
    z_crit: float
    snap_ok: bool
    stein_ok: bool
    num_particles: int
    stats: str


class _Continued(NamedTuple):
    """The run continued at dt0/2 for ``span``: its ``SteinTest`` (when the Stein test
    failed) or snapshot ``SelfConsistency``, and the drift's largest curvature."""

    half: object
    span: float
    dt0: float
    curvature: float


def _evidence(fe: FreeEnergy, traj, theta, level: float, test: SelfConsistency, draws, k_test) -> _Evidence:
    """The statistics: the snapshot, the Stein test (dropped when ``curvature_defect`` finds Ψ
    kinked), Bonferroni over both at ``level``, the run's convergence, and their text."""
    stein = stein_test(traj) if traj is not None else None
    defect = None
    if stein is not None:
        defect = curvature_defect(fe, theta, jax.random.fold_in(k_test, 1))
        if defect.kinked(float(_normal_isf(0.5 * level / (test.dof + 1)))):
            stein = None
    z_crit = float(_normal_isf(0.5 * level / (test.dof + (stein is not None))))
    snap = (f"snapshot max |z| {test.statistic:.2f} over {test.dof} test functions ({_worst(test)})")
    temp = "" if stein is None else (f"; configurational temperature along the data directions "
                                     f"{stein.temperature:.4f} (Stein residual z = {stein.z:+.2f}; an excess of "
                                     f"{stein.detectable_excess(z_crit):.2g} would be caught with probability 0.95)")
    if defect is not None and stein is None:
        temp = (f"; no configurational-temperature (time-step) test: Psi is not twice differentiable along the "
                f"particles (finite differences of its gradient see {100 * defect.share:+.3g}% of the autodiff "
                f"curvature more, z = {defect.z:+.1f}: a kinked unit), so the Stein identity behind it does not hold; "
                f"the verdict rests on the snapshot")
    elif traj is not None and stein is None:
        k = traj.run.diagnostics_every
        why = ("" if k == 1 else (" (it computed no in-run diagnostics: diagnostics=False, or too short a run for the "
                                                 "default budget)") if k == 0
               else f" (the default diagnostics budget computed them at every {k}-th save)")
        temp = (f"; no configurational-temperature (time-step) test: the run saved too few Stein residuals{why}; "
                f"run langevin with diagnostics=True for it")
    limit = f"; Bonferroni limit |z| <= {z_crit:.2f} at level {level:g}"
    conv = convergence(to_inference_data(traj, fe)) if traj is not None else None
    return _Evidence(test, draws, stein, defect, conv, z_crit, test.statistic <= z_crit,
                     stein is None or abs(stein.z) <= z_crit, int(theta.shape[0]), snap + temp + limit)


def _needs_continuation(ev: _Evidence, run: Run | None, diagnose: bool) -> bool:
    """Whether the verdict rests on continuing the run at dt0/2: a stationary run that failed,
    whose family offers a continuation."""
    stationary = ev.convergence is None or ev.convergence.converged
    return (stationary and not (ev.snap_ok and ev.stein_ok) and diagnose and run is not None
            and run.continuation is not None)


def _verdict(ev: _Evidence, run: Run | None, from_trajectory: bool, continued: _Continued | None,
             beta: float) -> tuple[bool, str, str]:
    """(passed, cause, reason): the verdict's words from the evidence and, when it ran, the
    continuation at dt0/2 (thresholds DT_KEEPS, DT_CONTRADICTS, DT_SHRINK)."""
    test, stein, stats, n, z_crit = ev.test, ev.stein, ev.stats, ev.num_particles, ev.z_crit
    conv = ev.convergence
    if conv is not None and not conv.converged:
        return False, "not stationary", f"FAIL (not stationary yet): {conv.reason}. Final particles: {stats}"
    if ev.snap_ok and ev.stein_ok:
        if test.mean_field_statistic <= z_crit:
            return True, "passes", (f"PASS: consistent with the N = {n} stationary law ({stats}); the mean-field "
                                    f"residual is within noise too (max |z| {test.mean_field_statistic:.2f})")
        return True, "finite-N", (f"PASS (finite-N): consistent with the N = {n} stationary law ({stats}), but not "
                                  f"with the mean-field fixed point itself: the plain residual against G[f_N] reaches "
                                  f"max |z| {test.mean_field_statistic:.2f} ({_worst(test, True)}), the O(beta/N) "
                                  f"self-interaction term (beta/N = {beta / n:.3g}); more particles shrink it")
    failed = f"FAIL: not consistent with the N = {n} stationary law ({stats})"
    if continued is None:
        if run is not None and not ev.stein_ok:
            step = (f"step {run.option('step_size'):.3g}" if run.option("step_size") is not None
                    else f"dt0 = {run.dt0:.3g}")
            return False, "time-step bias", (f"FAIL (time-step bias): {stats}; the run is stationary, and its "
                                             f"configurational temperature is not 1: the invariant law of the "
                                             f"discrete chain ({step}) is biased")
        hint = ("pass the Trajectory to check_fixed_point to diagnose the cause" if not from_trajectory
                else f"the run looks stationary; its family ({run.family or 'drive'}) offers no run to continue at dt0/2")
        return False, "unexplained", f"{failed}; {hint}"
    half, span, dt0, curvature = continued
    stiffness = f"dt0 * lambda_max = {dt0 * curvature:.3g} (largest drift curvature {curvature:.3g})"
    if not ev.stein_ok:
        se_diff = math.hypot(stein.se, half.se)
        drop = (stein.mean - half.mean) / se_diff if se_diff > 0 else 0.0
        ratio = stein.mean / half.mean if half.mean != 0 else float("inf")
        se_keep = math.hypot(DT_KEEPS * stein.se, half.se)
        kept = (math.copysign(half.mean, stein.mean) - DT_KEEPS * abs(stein.mean)) / se_keep if se_keep > 0 else 0.0
        detail = (f"the temperature excess {stein.temperature - 1:+.3g} (z = {stein.z:+.2f}) at dt0 = {dt0:.3g} is "
                  f"{half.temperature - 1:+.3g} (z = {half.z:+.2f}) after continuing for {span:.4g} at dt0/2: "
                  f"ratio {ratio:.3g}, drop {drop:+.2f} s.e. (order 1: ratio 2, order 2: ratio 4); {stiffness}")
        if kept > DT_CONTRADICTS:
            return False, "unexplained", (f"{failed}; the run is stationary, but halving dt0 does not reduce the bias "
                                          f"({detail}; a time-step bias of order >= 1 would at least halve): not the "
                                          f"time step (a wrong drift, or a potential that is not C^2)")
        return False, "time-step bias", (f"FAIL (time-step bias): {stats}; a stationary run whose configurational "
                                         f"temperature is not 1 has a biased invariant law; {detail}")
    j = int(np.argmax(np.abs(test.z)))
    z0, z1 = float(test.z[j]), float(half.z[j])
    if half.statistic <= z_crit or abs(z1) * DT_SHRINK <= abs(z0):
        return False, "time-step bias", (f"FAIL (time-step bias): {stats}; continued for {span:.4g} at dt0/2 = "
                                         f"{0.5 * dt0:.3g}, {test.components[j]} goes from z = {z0:+.2f} to {z1:+.2f} "
                                         f"(max |z| {half.statistic:.2f}); {stiffness}")
    return False, "unexplained", (f"{failed}; the run is stationary and halving dt0 does not shrink the residual "
                                  f"({test.components[j]}: z = {z0:+.2f} -> {z1:+.2f})")


def _normal_isf(p: float) -> float:
    """z with P(Z > z) = p for a standard normal Z."""
    return -statistics.NormalDist().inv_cdf(p)
