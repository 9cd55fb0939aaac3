"""KL and W2 of a particle cloud to the prior: the two distances the theory talks about.

- ``kl_to_prior``: KL(ρ‖π₀) = −H(ρ) − E_ρ[log π₀], with H the Kozachenko–Leonenko k-NN
  entropy estimate and log π₀ exact (unconstrained coordinates; KL is invariant under the
  constraining bijection, so this is the KL of the constrained laws as well).
- ``w2``: exact optimal transport (POT's network simplex) for clouds up to
  ``EXACT_MAX`` points, a debiased Sinkhorn divergence (ott-jax, jit-compiled, no N × M
  matrix when it would not fit) above that.
- ``w2_gaussian``: the Gelbrich bound W2(μ, ν) ≥ W2(N(m_μ, Σ_μ), N(m_ν, Σ_ν)) (Bures
  formula), exact for Gaussian laws; ``w2_to_prior_bound`` uses the prior's exact moments.
"""

from __future__ import annotations

import functools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln
from jaxtyping import Array, Float, PRNGKeyArray

from .. import _checks
from .._blocks import row_blocks, unblock
from .._memory import available_bytes
from .._ott import ott_modules
from .._keys import single_key
from ..particles import Particles, as_measure

__all__ = ["entropy_knn", "kl_to_prior", "w2", "w2_gaussian", "w2_to_prior", "w2_to_prior_bound",
           "gaussian_prior_moments", "EXACT_MAX"]

# Exact OT (O(N³) network simplex, O(N²) memory) up to this many points; Sinkhorn above.
EXACT_MAX = 3000
# Rows of the pairwise-distance matrix formed at once by the k-NN search.
_KNN_CHUNK = 1024
# Sinkhorn: entries of one (rows × M) block of the cost or plan formed at once (4 MB in f32:
# a block that stays in cache is faster than larger ones, bench/README.md).
_OT_BLOCK_ENTRIES = 1 << 20
# Dense (the (N, M) cost kept) up to this many pairs, if _OT_DENSE_COPIES such float32 arrays
# fit in half the memory; online (rows in blocks) above, where dense is no faster.
_OT_DENSE_MAX_PAIRS = 1 << 27
_OT_DENSE_COPIES = 4
_SINKHORN_THRESHOLD = 1e-3  # ott's stopping rule: ‖P1 − a‖₁ + ‖Pᵀ1 − b‖₁ of the iterate
_SINKHORN_MAX_ITER = 5000


def knn_log_distances(x: Float[Array, "n d"], k: int) -> Float[Array, " n"]:
    """log of each point's distance to its k-th nearest other point, O(chunk · N) memory."""
    n = x.shape[0]
    sq = jnp.sum(x * x, axis=1)
    idx, _ = row_blocks(jnp.arange(n), _KNN_CHUNK)

    def rows(ix):
        xi = x[ix]
        d2 = sq[ix, None] + sq[None, :] - 2.0 * xi @ x.T
        d2 = jnp.where(ix[:, None] == jnp.arange(n)[None, :], jnp.inf, d2)
        kth = -jax.lax.top_k(-d2, k)[0][:, -1]
        # Coincident points would give log 0: floor at float resolution of the scale.
        return 0.5 * jnp.log(jnp.maximum(kth, jnp.finfo(x.dtype).tiny))

    return unblock(jax.lax.map(rows, idx), n)


def entropy_knn(x: Float[Array, "n d"], k: int = 1) -> Float[Array, ""]:
    """Kozachenko–Leonenko entropy estimate of the law of the rows of x.

        Ĥ = ψ(N) − ψ(k) + log V_D + (D/N) Σ_i log ε_i,

    ε_i the distance from x_i to its k-th nearest neighbour, V_D = π^{D/2}/Γ(D/2 + 1).
    Consistent for N → ∞ at fixed k; its bias at finite N grows with D (tests and
    bench/README.md give numbers; for Gaussians it is below 0.05 nats at D ≤ 8, N ≥ 2000).

    Examples:
        >>> import jax, mfsde
        >>> h = mfsde.entropy_knn(jax.random.normal(jax.random.key(0), (4000, 2)))   # N(0, I_2): log(2 pi e)
        >>> bool(abs(h - 2.8379) < 0.1)
        True
    """
    x = jnp.asarray(x)
    k = _checks.positive_int("k", k)
    if x.ndim != 2:
        raise ValueError(f"x must be points of shape (N, D), got {x.shape}")
    n, d = x.shape
    if n <= k:
        raise ValueError(f"x has {n} points: entropy_knn needs more than k = {k} (a k-th nearest neighbour)")
    _checks.finite("x", x)
    return _knn_entropy_offset(n, d, k) + d * jnp.mean(knn_log_distances(x, k))


def _knn_entropy_offset(n: int, d: int, k: int):
    # ψ(N) − ψ(k) + log V_D, V_D = π^{D/2}/Γ(D/2 + 1): Kozachenko–Leonenko's constant
    log_vd = 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1.0)
    return digamma(float(n)) - digamma(float(k)) + log_vd


def kl_to_prior_terms(theta: Float[Array, "n d"], fe, k: int = 1) -> Float[Array, " n"]:
    """The per-particle terms of ``kl_to_prior`` for an equally weighted cloud,
    −[ψ(N) − ψ(k) + log V_D + D log ε_i] − log π₀(θ_i), whose mean is the estimate (for a
    standard error or a sum with other per-particle terms)."""
    n, d = theta.shape
    return -(_knn_entropy_offset(n, d, k) + d * knn_log_distances(theta, k)) - fe.prior_logdensity(theta)


def kl_to_prior(particles: Float[Array, "n d"] | Particles, fe, k: int = 1) -> Float[Array, ""]:
    """KL(ρ‖π₀) ≈ −Ĥ_kNN(ρ) − (1/N) Σ_i log π₀(θ_i) for the empirical cloud of ρ.

    For a weighted measure ``Particles`` (ρ = Σ w_i δ_{θ_i}, the points θ_i drawn from some
    q and w_i ∝ ρ(θ_i)/q(θ_i)) the k-NN density of the points, q̂(θ_i) = k / ((N − 1) V_D
    ε_i^D) in the Kozachenko–Leonenko form, is reweighted to ρ̂(θ_i) = N w_i q̂(θ_i):

        KL ≈ Σ_i w_i [log(N w_i) + ψ(k) − ψ(N) − log V_D − D log ε_i − log π₀(θ_i)],

    which is the unweighted estimate when w_i = 1/N. The points must be distinct draws
    (particles are): MCMC output with repeated states (rejections), or a resampled cloud,
    has zero nearest-neighbour distances and overestimates KL badly.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> kl = mfsde.kl_to_prior(fe.prior_sample(jax.random.key(2), 2000), fe)   # KL(prior || prior) = 0
        >>> bool(abs(kl) < 0.1)
        True
    """
    theta, w = as_measure(particles)
    theta = _checks.particle_array("particles", theta, fe.dim, at_least=k + 1,
                                   why=f"kl_to_prior uses each point's k-th nearest neighbour (k = {k})")
    if w is None:
        return -entropy_knn(theta, k) - jnp.mean(fe.prior_logdensity(theta))
    n, d = theta.shape
    log_vd = 0.5 * d * math.log(math.pi) - gammaln(0.5 * d + 1.0)
    log_rho = (jnp.log(n * w) + digamma(float(k)) - digamma(float(n)) - log_vd
               - d * knn_log_distances(theta, k))
    return jnp.sum(w * (log_rho - fe.prior_logdensity(theta)))


def _as_cloud(name: str, a) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, D), weights (N,) summing to one) of an array or ``Particles``, in float64."""
    theta, w = as_measure(a)
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 2 or theta.shape[0] < 1:
        raise ValueError(f"{name} must be a particle array of shape (N, D), got {theta.shape}")
    if not np.all(np.isfinite(theta)):
        raise ValueError(f"{name} contains non-finite values")
    if w is None:
        return theta, np.full(len(theta), 1.0 / len(theta))
    w = np.asarray(w, np.float64)
    return theta, w / w.sum()


def w2(p, q, method: str = "auto", reg: float | None = None) -> float:
    """W2 between the empirical measures of two clouds p (N, D) and q (M, D), either of
    which may be a weighted ``Particles`` (its weights are the OT marginal).

    method:

    - "exact": POT's network simplex on the (N, M) squared-distance matrix (``emd2``);
    - "sinkhorn": the debiased Sinkhorn divergence of the transport cost,

          S_ε(p, q) = ⟨γ_pq, C⟩ − ½⟨γ_pp, C⟩ − ½⟨γ_qq, C⟩,   W2 ≈ √S_ε,

      γ the entropic plans at regularisation ε (C the squared Euclidean cost), solved by
      ott-jax in float32 (its rounding is far below the O(ε) bias), jit-compiled, with
      Anderson acceleration and a Gaussian start on the cross term; above
      ``_OT_DENSE_MAX_PAIRS`` pairs, or the memory for ``_OT_DENSE_COPIES`` (N, M) arrays,
      it runs online (rows in blocks of ``_OT_BLOCK_ENTRIES`` entries, no N × M array);
    - "auto": exact up to ``EXACT_MAX`` points, Sinkhorn above.

    ``reg`` (ε) defaults to 1% of the mean squared distance between the clouds. Speed and
    accuracy per size are in bench/README.md ("Optimal transport").

    Examples:
        >>> import jax, mfsde
        >>> p = jax.random.normal(jax.random.key(0), (500, 2))
        >>> round(mfsde.w2(p, p + 1.0), 4)                     # a shift by (1, 1): W2 = sqrt(2)
        1.4142
    """
    import ot

    (p, a), (q, b) = _as_cloud("p", p), _as_cloud("q", q)
    if p.shape[1] != q.shape[1]:
        raise ValueError(f"clouds live in different dimensions: {p.shape} vs {q.shape}")
    if method == "auto":
        method = "exact" if max(len(p), len(q)) <= EXACT_MAX else "sinkhorn"
    if method == "exact":
        cost = ot.dist(p, q, metric="sqeuclidean")
        return float(math.sqrt(max(ot.emd2(a, b, cost, numItermax=10_000_000), 0.0)))
    if method == "sinkhorn":
        if reg is None:
            # mean squared distance without forming the N x M matrix
            mean_sq = a @ (p**2).sum(1) + b @ (q**2).sum(1) - 2 * (a @ p) @ (b @ q)
            reg = 0.01 * float(mean_sq)
        if not (math.isfinite(reg) and reg > 0):
            raise ValueError(f"reg must be a positive number, got {reg}")
        s, converged = _debiased_sinkhorn(p, a, q, b, reg)
        if not converged:
            warnings.warn(f"Sinkhorn did not converge in {_SINKHORN_MAX_ITER} iterations at reg={reg:.3g}: "
                          "W2 is approximate; a larger reg converges faster", RuntimeWarning, stacklevel=2)
        return float(math.sqrt(max(s, 0.0)))
    raise ValueError(f"method must be 'auto', 'exact' or 'sinkhorn', got {method!r}")


def _online_rows(n: int, m: int) -> int | None:
    """Rows per block of an online point cloud, or None (dense) up to ``_OT_DENSE_MAX_PAIRS``
    pairs when ``_OT_DENSE_COPIES`` float32 (n, m) arrays take at most half of the memory."""
    limit = available_bytes()
    if n * m <= _OT_DENSE_MAX_PAIRS and (limit is None or _OT_DENSE_COPIES * 4 * n * m <= limit // 2):
        return None
    return max(1, _OT_BLOCK_ENTRIES // max(n, m))


def _plan_cost(f, g, x, y, eps, block_rows: int):
    """⟨γ, C⟩ = Σ_ij exp((f_i + g_j − C_ij)/ε) C_ij of the entropic plan of dual potentials
    (f, g) (ott's convention: the marginals are inside f and g), C_ij = ‖x_i − y_j‖², swept
    over blocks of rows."""
    rows, valid = row_blocks(jnp.arange(x.shape[0]), block_rows)
    sy = jnp.sum(y * y, axis=1)

    def block(args):
        ix, ok = args
        c = jnp.sum(x[ix] ** 2, axis=1)[:, None] + sy[None, :] - 2.0 * x[ix] @ y.T
        c = jnp.maximum(c, 0.0)
        return jnp.where(ok, jnp.sum(jnp.exp((f[ix, None] + g[None, :] - c) / eps) * c, axis=1), 0.0)

    return jnp.sum(jax.lax.map(block, (rows, valid)))


@functools.partial(jax.jit, static_argnames=("online_rows",))
def _sinkhorn_terms(x, a, y, b, eps, online_rows: int | None):
    """(S_ε, converged) of the three ott-jax Sinkhorn problems (x, y), (x, x), (y, y)."""
    ott = ott_modules()
    pointcloud, linear, acceleration, initializers = ott.pointcloud, ott.linear, ott.acceleration, ott.initializers
    kw = dict(threshold=_SINKHORN_THRESHOLD, max_iterations=_SINKHORN_MAX_ITER)
    # Feydy et al.'s symmetric updates for the self terms, as ott's sinkhorn_divergence does
    self_kw = dict(kw, parallel_dual_updates=True, momentum=acceleration.Momentum(start=0, value=0.5))
    cross_kw = dict(kw, anderson=acceleration.AndersonAcceleration(memory=5))
    if min(x.shape[0], y.shape[0]) > 2 * x.shape[1]:
        # the Brenier potential between the clouds' Gaussian fits (needs full-rank covariances)
        cross_kw["initializer"] = initializers.GaussianInitializer()
    block = online_rows or max(1, _OT_BLOCK_ENTRIES // max(x.shape[0], y.shape[0]))

    def solve(u, wu, v, wv, **solver_kw):
        geom = pointcloud.PointCloud(u, v, epsilon=eps, batch_size=online_rows)
        out = linear.solve(geom, a=wu, b=wv, **solver_kw)
        return _plan_cost(out.f, out.g, u, v, eps, block), out.converged

    (cxy, okxy), (cxx, okxx), (cyy, okyy) = (solve(x, a, y, b, **cross_kw), solve(x, a, x, a, **self_kw),
                                            solve(y, b, y, b, **self_kw))
    return cxy - 0.5 * (cxx + cyy), okxy & okxx & okyy


def _debiased_sinkhorn(p: np.ndarray, a: np.ndarray, q: np.ndarray, b: np.ndarray, reg: float) -> tuple[float, bool]:
    """(S_ε(p, q), converged): the debiased entropic transport cost of ``w2``'s "sinkhorn"
    method between the weighted clouds (p (N, D), a (N,)) and (q (M, D), b (M,))."""
    # float32 throughout, also where the caller enabled x64 (ott-jax mixes dtypes there)
    with jax.enable_x64(False):
        f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
        s, ok = _sinkhorn_terms(f32(p), f32(a), f32(q), f32(b), f32(reg), _online_rows(len(p), len(q)))
        return float(s), bool(ok)


def _sqrtm_psd(s):
    lam, v = jnp.linalg.eigh(s)
    return (v * jnp.sqrt(jnp.clip(lam, 0.0))) @ v.T


def _bures(m1, s1, m2, s2):
    r2 = _sqrtm_psd(s2)
    cross = _sqrtm_psd(r2 @ s1 @ r2)
    b2 = jnp.sum((m1 - m2) ** 2) + jnp.trace(s1) + jnp.trace(s2) - 2.0 * jnp.trace(cross)
    return jnp.sqrt(jnp.maximum(b2, 0.0))


def _moments(particles) -> tuple[Array, Array]:
    """(mean, covariance) of an array (unbiased, as ``jnp.cov``) or of a ``Particles``
    (its weights as reliability weights, ``jnp.cov(aweights=...)``)."""
    theta, w = as_measure(particles)
    d = theta.shape[1]
    if w is None:
        return theta.mean(0), jnp.cov(theta.T).reshape(d, d)
    return w @ theta, jnp.cov(theta.T, aweights=w).reshape(d, d)


def w2_gaussian(p: Float[Array, "n d"] | Particles, q: Float[Array, "m d"] | Particles) -> Float[Array, ""]:
    """Gelbrich lower bound on W2(p, q): the Bures distance between their Gaussian fits.

    W2² ≥ ‖m_p − m_q‖² + tr(S_p + S_q − 2 (S_p^{1/2} S_q S_p^{1/2})^{1/2}), with (m, S) the
    (weighted) mean and covariance of each cloud; p (n, D), q (m, D) arrays or ``Particles``.

    Examples:
        >>> import jax, mfsde
        >>> p = jax.random.normal(jax.random.key(0), (500, 2))
        >>> w = mfsde.w2_gaussian(p, 2.0 * p)                  # fits N(m, S), N(2m, 4S): (|m|² + tr S)^(1/2)
        >>> bool(abs(w - 1.414) < 0.1)
        True
    """
    for name, a in (("p", p), ("q", q)):
        theta = as_measure(a)[0]
        if theta.ndim != 2 or theta.shape[0] < 2:
            raise ValueError(f"{name} must be at least 2 points of shape (N, D) (a covariance), got {theta.shape}")
        _checks.finite(name, theta)
    if as_measure(p)[0].shape[1] != as_measure(q)[0].shape[1]:
        raise ValueError(f"p and q must have the same dimensions D, got {as_measure(p)[0].shape[1]} and "
                         f"{as_measure(q)[0].shape[1]}")
    return _bures(*_moments(p), *_moments(q))


def gaussian_prior_moments(fe) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, covariance) of π₀ in flat coordinates if every site is Gaussian, else None
    (``UnitModel.gaussian_prior_moments`` of ``fe.unit``)."""
    return fe.unit.gaussian_prior_moments()


def w2_to_prior_bound(particles: Float[Array, "n d"], fe, moments=None) -> Float[Array, ""]:
    """Gelbrich lower bound W2(ρ, π₀) ≥ Bures((m_ρ, Σ_ρ), (m₀, Σ₀)) with π₀'s exact moments.

    Exact when ρ is Gaussian too (e.g. the linear model's fixed point). Gaussian priors only;
    ``moments`` = ``gaussian_prior_moments(fe)`` can be passed in (e.g. inside jit).

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> shifted = p0 + 1.0
        >>> bool(mfsde.w2_to_prior_bound(shifted, fe) > 1.0)  # Gelbrich: the mean shift alone is sqrt(2)
        True
    """
    moments = gaussian_prior_moments(fe) if moments is None else moments
    if moments is None:
        raise ValueError("w2_to_prior_bound needs a Gaussian prior (Normal / MultivariateNormal sites)")
    _checks.particle_array("particles", particles, fe.dim, at_least=2, why="the bound needs a covariance")
    mean, cov = _moments(particles)
    m0, s0 = (jnp.asarray(a, mean.dtype) for a in moments)
    return _bures(mean, cov, m0, s0)


def w2_to_prior(particles: Float[Array, "n d"], fe, key: PRNGKeyArray | None = None, method: str = "auto") -> float:
    """W2(ρ^N, π₀) estimated as ``w2(particles, prior sample of the same size)``.

    The empirical estimate is biased upwards by the W2 between two independent N-samples of
    the same law (≈ N^{-1/D} for D > 4); ``w2_to_prior_bound`` is a bias-free lower bound
    when the prior is Gaussian.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> bool(mfsde.w2_to_prior(p0, fe, jax.random.key(2)) < 1.0)   # prior draws: only sampling error
        True
    """
    n = _checks.particle_array("particles", particles, fe.dim).shape[0]
    _as_cloud("particles", particles)
    key = jax.random.key(0) if key is None else single_key(key, replicates="one prior sample to compare with")
    return w2(particles, fe.prior_sample(key, n), method=method)
