"""Tzen–Raginsky's transport map: ρ* = T#π₀ with T Lipschitz, estimated from samples.

Brenier–McCann: the W2-optimal map T from π₀ to ρ* is the gradient of a convex function.
With π₀ = N(m, Σ) (−∇² log π₀ = Σ⁻¹ ≼ I/σ²_min) and ρ* ∝ π₀ e^{−βΨ(·; ρ*)}
(−∇² log ρ* = Σ⁻¹ + β∇²Ψ ≽ α I, α = 1/σ²_max + β κ_min, κ_min the least eigenvalue of
∇²Ψ(·; ρ*)), Caffarelli's contraction theorem in its two-sided form bounds T's Lipschitz
constant by sqrt((1/σ²_min)/α) whenever α > 0 (small β); Chewi–Pooladian (2022) show the
same bound for the entropic maps used here.

The estimator is ott-jax's entropic map (Pooladian–Niles-Weed 2021): Sinkhorn between n
prior draws x_i and the target cloud y_j (weights b_j) at regularisation ε, and

    T_ε(w) = w − ½∇f_ε(w) = Σ_j π_j(w) y_j,   π_j(w) ∝ b_j exp((g_j − ‖w − y_j‖²)/ε),

the barycentric projection of the entropic plan (ott's ``DualPotentials.transport`` for the
squared Euclidean cost). Its bias is a shrinkage of order ε: between N(a, s²I) and
N(a', s²I) T_ε is affine with slope c/s² < 1, c = (−ε + sqrt(ε² + 16 s⁴))/4 (so
1 − ε/(4s²) to first order), and the mean displacement is exact (a' − a). With finitely many
target points T_ε maps into their convex hull; its sampling error grows as ε shrinks.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ._blocks import row_blocks, unblock
from ._checks import finite, particle_array, positive_int, positive_number
from ._keys import single_key
from ._ott import ott_modules
from .dynamics import Trajectory, gaussian_prior
from .fixed_point import FixedPoint
from .free_energy import FreeEnergy
from .particles import Particles

__all__ = ["TransportMap", "transport_map", "CaffarelliBound", "caffarelli_bound", "potential_curvature"]

# Entries of one (rows, M) block of the map's Gibbs weights.
_BLOCK_ENTRIES = 1 << 22
# Default ε: the least of s²·0.1 (a slope bias ε/(4s²) = 2.5%) and what lets the map's
# Gibbs kernel (variance ε/2 per coordinate) cover _KERNEL_POINTS target points at the centre,
# (ε/(2s²))^{D/2} M = _KERNEL_POINTS; fewer make the empirical map's Jacobian rough.
_EPSILON_FRACTION = 0.1
_KERNEL_POINTS = 50
_SINKHORN_THRESHOLD = 1e-4
_SINKHORN_MAX_ITER = 20_000


class TransportMap(eqx.Module):
    """An entropic estimate T_ε of the transport map from π₀ to a target cloud (module
    docstring): ``T(w)`` maps (n, D) to (n, D); ``T.jacobian(w)`` is (n, D, D);
    ``T.lipschitz(w)`` the largest singular value of the Jacobian over the points.

    Fields: the target cloud ``target`` (M, D), its ``log_weight`` (M,) (log b_j), ott's
    dual vector ``dual`` (M,) (g_j), ``epsilon``, and whether Sinkhorn ``converged``.
    """

    target: Float[Array, "m d"]
    log_weight: Float[Array, " m"]
    dual: Float[Array, " m"]
    epsilon: Float[Array, ""]
    converged: Array

    def _potentials(self):
        ott = ott_modules()
        # ott's f potential of the target side: only the target cloud, b and g enter it
        geom = ott.pointcloud.PointCloud(self.target[:1], self.target, epsilon=self.epsilon)
        prob = ott.linear_problem.LinearProblem(geom, b=jnp.exp(self.log_weight))
        f = prob.potential_fn_from_dual_vec(self.dual, epsilon=self.epsilon, axis=1)
        return ott.potentials.DualPotentials(f, None, cost_fn=geom.cost_fn)

    def __call__(self, w: Float[Array, "n d"]) -> Float[Array, "n d"]:
        return _map_rows(self, particle_array("w", w, self.target.shape[1], at_least=0), False)

    def jacobian(self, w: Float[Array, "n d"]) -> Float[Array, "n d d"]:
        """∇T_ε(w_i) = (2/ε) Cov_{π(w_i)}(y), symmetric positive semi-definite, by autodiff."""
        return _map_rows(self, particle_array("w", w, self.target.shape[1], at_least=0), True)

    def lipschitz(self, w: Float[Array, "n d"], quantile: float = 1.0) -> Float[Array, ""]:
        """The ``quantile`` of ‖∇T_ε(w_i)‖₂ over the points (1: the max, a lower estimate of
        T_ε's Lipschitz constant). Where the kernel covers few target points (the tails) the
        empirical map is rough and its Jacobian noisy: a quantile below 1 discounts them."""
        return jnp.quantile(jnp.linalg.norm(self.jacobian(w), ord=2, axis=(1, 2)), quantile)


@eqx.filter_jit
def _map_rows(tmap: TransportMap, w, jacobian: bool):
    """T_ε (or its Jacobian) at the rows of w, in row blocks of ``_BLOCK_ENTRIES`` weights;
    one compiled program per map shape, point count and kind."""
    pot = tmap._potentials()

    def one(v):
        return pot.transport(v[None])[0]

    fn = jax.vmap(jax.jacfwd(one)) if jacobian else pot.transport
    blocks, _ = row_blocks(w, max(1, _BLOCK_ENTRIES // tmap.target.shape[0]))
    return unblock(jax.lax.map(fn, blocks), w.shape[0])


def _target_cloud(target, dim: int) -> tuple[Array, Array]:
    """(points (M, D), log weights (M,)) of a FixedPoint, a Trajectory, Particles or an array."""
    if isinstance(target, FixedPoint):
        points, log_w = jnp.asarray(target.samples).reshape(-1, dim), None
    elif isinstance(target, Trajectory):
        return _target_cloud(target.particles, dim)
    elif isinstance(target, Particles):
        points, log_w = target.theta, target.log_weight
        if points.ndim == 3:
            points, log_w = points.reshape(-1, dim), log_w.reshape(-1) - math.log(points.shape[0])
    else:
        points, log_w = jnp.asarray(target), None
        if points.ndim == 3:                              # replicate runs: one pooled cloud
            points = points.reshape(-1, points.shape[-1])
    points = particle_array("target", points, dim, at_least=2, why="a map needs a cloud to map onto")
    finite("target", points)
    if log_w is None:
        log_w = jnp.full(points.shape[0], -math.log(points.shape[0]), points.dtype)
    return points, log_w - jax.nn.logsumexp(log_w)


def transport_map(fe: FreeEnergy, target, key: PRNGKeyArray, *, num_source: int | None = None,
                  epsilon: float | None = None) -> TransportMap:
    """The entropic transport map T_ε from the prior π₀ to ``target`` (module docstring):
    ott-jax's Sinkhorn between ``num_source`` prior draws and the target cloud.

    Args:
        fe: the free energy whose prior is the source (any prior; Caffarelli's bound needs a
            Gaussian one).
        target: ρ* as a ``FixedPoint`` (its MCMC draws), a ``Trajectory`` (its final
            particles, e.g. of ``schrodinger_bridge`` or ``langevin``; replicates pooled),
            weighted ``Particles`` or an (M, D) array.
        key: PRNG key of the prior draws.
        num_source: prior draws n (default M).
        epsilon: ε. Default s² max(0.1, 2 (50/M)^{2/D}), s² the prior draws' mean
            per-coordinate variance: at least a slope shrinkage of 2.5% between equal
            Gaussians, and large enough that the map's Gibbs kernel (variance ε/2) covers
            about 50 of the M target points at the centre, below which its Jacobian is rough.
            In more than about 10 dimensions that needs many points or a large ε.

    Returns:
        ``TransportMap``; a RuntimeWarning if Sinkhorn did not converge.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: rho* = N(m*, I), T(w) = w + m*
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> m_star = lg.fixed_point_mean(fe.x, fe.y, 4.0)
        >>> rho = m_star + jax.random.normal(jax.random.key(1), (2000, 2))
        >>> T = mfsde.transport_map(fe, rho, jax.random.key(2))
        >>> w = fe.prior_sample(jax.random.key(3), 500)
        >>> bool(jnp.all(jnp.abs((T(w) - w).mean(0) - m_star) < 0.2))
        True
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    key = single_key(key, replicates="one map")
    points, log_b = _target_cloud(target, fe.dim)
    n = points.shape[0] if num_source is None else positive_int("num_source", num_source, minimum=2)
    source = fe.prior_sample(key, n).astype(points.dtype)
    if epsilon is None:
        s2, m, d = float(jnp.mean(jnp.var(source, axis=0))), points.shape[0], fe.dim
        epsilon = s2 * max(_EPSILON_FRACTION, 2.0 * (_KERNEL_POINTS / m) ** (2.0 / d))
    epsilon = positive_number("epsilon", epsilon)
    g, converged = _sinkhorn_dual(source, points, jnp.exp(log_b), jnp.asarray(epsilon, points.dtype))
    if not bool(converged):
        warnings.warn(f"Sinkhorn did not converge in {_SINKHORN_MAX_ITER} iterations at epsilon={epsilon:.3g}: "
                      "the map is approximate; a larger epsilon converges faster", RuntimeWarning, stacklevel=2)
    return TransportMap(points, log_b, g, jnp.asarray(epsilon, points.dtype), converged)


@jax.jit
def _sinkhorn_dual(x, y, b, eps):
    """(g, converged) of ott's Sinkhorn between x (uniform weights) and y (weights b)."""
    ott = ott_modules()
    geom = ott.pointcloud.PointCloud(x, y, epsilon=eps)
    out = ott.linear.solve(geom, b=b, threshold=_SINKHORN_THRESHOLD, max_iterations=_SINKHORN_MAX_ITER,
                           anderson=ott.acceleration.AndersonAcceleration(memory=5))
    return out.g, out.converged


def potential_curvature(fe: FreeEnergy, particles_or_output, points: Float[Array, "n d"]
                        ) -> tuple[Float[Array, " n"], Float[Array, " n"]]:
    """(λ_min, λ_max) of the Hessian ∇²_v Ψ(v; ρ) at each point, ρ frozen (particles or its
    output f_ρ (P,)): Ψ(v; ρ) = (1/P) Σ_p r_p σ(x_p; v), r = f_ρ − y.

    This is the curvature of the Gibbs tilt that Caffarelli's bound needs, not
    ``max_curvature``'s (the N-particle Langevin drift's Jacobian, which adds the
    interaction through f_ρ). One (D, D) Hessian per point by autodiff, in row blocks.

    Examples:
        >>> import jax, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: Ψ is linear, ∇²Ψ = 0
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> lo, hi = mfsde.potential_curvature(fe, fe.prior_sample(jax.random.key(0), 32), fe.prior_sample(jax.random.key(1), 4))
        >>> lo.shape, float(abs(hi).max()) < 1e-6
        ((4,), True)
    """
    points = particle_array("points", points, fe.dim)
    return _curvature(fe, fe.residual(particles_or_output), points)


@eqx.filter_jit
def _curvature(fe: FreeEnergy, r, points):
    def psi(v):
        return jnp.mean(r * fe.unit.apply(v, fe.x))

    hess = jax.vmap(jax.hessian(psi))
    blocks, _ = row_blocks(points, max(1, (1 << 20) // max(1, fe.num_data * fe.dim)))
    eig = unblock(jax.lax.map(lambda b: jnp.linalg.eigvalsh(hess(b)), blocks), points.shape[0])
    return eig[:, 0], eig[:, -1]


class CaffarelliBound(NamedTuple):
    """Caffarelli's bound on the Lipschitz constant of the map from π₀ = N(m, Σ) to ρ*:
    ``lipschitz_bound`` = sqrt((1/σ²_min)/α) with the strong-convexity constant
    ``strong_convexity`` α = 1/σ²_max + β ``kappa_min`` of −log ρ* (inf if α <= 0: no
    bound); ``kappa_min`` and ``kappa_max`` the extreme Hessian eigenvalues of Ψ(·; ρ*) over
    the points (an estimate of its infimum and supremum over R^D from those points)."""

    lipschitz_bound: float
    strong_convexity: float
    kappa_min: float
    kappa_max: float


def caffarelli_bound(fe: FreeEnergy, particles_or_output, points: Float[Array, "n d"]) -> CaffarelliBound:
    """``CaffarelliBound`` of ρ* (given by particles or its output f* (P,)) from the
    curvature of Ψ(·; ρ*) at ``points`` (e.g. draws of ρ* and of the prior).

    Examples:
        >>> import jax, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # Ψ linear: κ = 0, T a shift, bound 1
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> m_star = lg.fixed_point_mean(fe.x, fe.y, 4.0)
        >>> round(mfsde.caffarelli_bound(fe, fe.x @ m_star, fe.prior_sample(jax.random.key(0), 8)).lipschitz_bound, 6)
        1.0
    """
    _, var = gaussian_prior(fe)
    lo, hi = potential_curvature(fe, particles_or_output, points)
    kappa_min, kappa_max = float(jnp.min(lo)), float(jnp.max(hi))
    alpha = 1.0 / float(np.max(var)) + float(fe.beta) * kappa_min
    bound = math.sqrt((1.0 / float(np.min(var))) / alpha) if alpha > 0 else math.inf
    return CaffarelliBound(bound, alpha, kappa_min, kappa_max)
