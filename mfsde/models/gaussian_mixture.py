"""Mei–Montanari–Nguyen's Gaussian-mixture classification and its reductions.

Full model: y = ±1 with probability ½ each; x | y ~ N(0, Σ_y) with Σ_± = s_±² I_d
(isotropic; s_± = 1 ± Δ, or any pair ``(s_plus, s_minus)`` given as ``delta``) or
Σ_± = diag(s_±² I_{s0}, I_{d−s0}) (anisotropic). Unit σ(x; w) = σ_*(⟨w, x⟩) with a
piecewise-linear activation (MMN's truncated ReLU by default, ``PiecewiseLinear``) or any
other; prior / initialisation w ~ N(0, (κ²/d) I_d), κ = 0.8 in their experiments.

The reductions are free energies of a *reduced unit* on *reduced data*, so they are
ordinary ``mfsde.FreeEnergy``s and run through ``mfsde.langevin`` (β = ∞: the ODE
dr/dt = −∂_r Ψ̄; finite β: Langevin in r):

1. Isotropic, d → ∞ (``reduced_problem(delta)``). For a rotation-invariant ρ (w = r u, u
   uniform on the sphere), ⟨w, x⟩ | y ~ N(0, r² s_±²), and the projections of two
   independent units are independent, so with v_±(r) = E_G σ_*(r s_± G):

       f_± = ∫ v_±(r) ρ̄(dr),   R(ρ) = ½ Σ_± (y_± − f_±)²,   Ψ(w; ρ) = ½ Σ_± (f_± − y_±) v_±(‖w‖):

   the reduced unit v(x̄; r) = E_G σ_*(r x̄ G) on two data points x̄ = s_±, ȳ = ±1.
2. Isotropic at finite d, exact (``reduced_problem(delta, dim=d)``). ⟨w, x⟩ = r x̄ T with
   x̄ = ‖x‖/√d and T = √d ⟨u, x/‖x‖⟩, the scaled first coordinate of a uniform unit vector
   (density ∝ (1 − t²/d)^{(d−3)/2} on |t| < √d), independent of x̄. For population data
   (a rotation-invariant law of x), F(ρ) restricted to rotation-invariant ρ is exactly the
   free energy of v_d(x̄; r) = E_T σ_*(r x̄ T) on data x̄ ~ s_± χ_d/√d (``num_radii``
   quantiles per class), with the prior of r the radial law of N(0, τ I_d), τ = κ²/d:
   π̄₀(r) ∝ |r|^{d−1} e^{−r²/2τ} (``SignedChi``). Its Langevin drift is therefore
   −∂_r Ψ̄ + β⁻¹((d − 1)/r − r/τ): the Itô drift (d − 1)/(βr) of the radius of an isotropic
   diffusion is the prior's score. As d → ∞, x̄ → s_± and T → G: item 1.
3. Anisotropic, d → ∞ (``anisotropic_reduced_problem(delta, s0_fraction)``), s0 = γd. For ρ
   invariant under O(s0) × O(d − s0) (w = (r₁ u₁, r₂ u₂)), ⟨w, x⟩ | y ~ N(0, r₁² s_±² + r₂²):
   the reduced unit v(x̄; r₁, r₂) = E_G σ_*(√(r₁² x̄₁² + r₂² x̄₂²) G) on x̄ = (s_±, 1), ȳ = ±1.

(The sign of a radius is immaterial: every reduced unit is even in it.)
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.special import gammaln
from numpyro.distributions import constraints
from scipy.special import betainc as scipy_betainc
from scipy.special import betaln, roots_jacobi
from scipy.stats import chi2

import mfsde

DEFAULTS = dict(dim=40, delta=0.8, num_particles=800, init_scale=0.8, num_nodes=128, num_radii=64)


@dataclasses.dataclass(frozen=True)
class PiecewiseLinear:
    """σ(t) = s + Σ_j k_j relu(t − t_j): a continuous piecewise-linear activation, constant
    s below the first kink, slope Σ_{j ≤ i} k_j after kink i (bounded when Σ_j k_j = 0).

    Its Gaussian and projection expectations have closed forms (``gaussian_expectation``,
    ``projection_expectation``)."""

    offset: float
    slopes: tuple[float, ...]
    kinks: tuple[float, ...]

    def __call__(self, t):
        return self.offset + sum(k * jnp.maximum(t - a, 0.0) for k, a in zip(self.slopes, self.kinks))

    @classmethod
    def through(cls, points):
        """The activation through ``points`` ((t_0, σ_0), (t_1, σ_1), ...), t increasing,
        constant before the first and after the last point."""
        ts, vs = zip(*points)
        slopes = np.diff(vs) / np.diff(ts)
        changes = np.diff(np.r_[0.0, slopes, 0.0])
        return cls(float(vs[0]), tuple(float(k) for k in changes), tuple(float(t) for t in ts))


# MMN's truncated ReLU: s1 = −2.5 for t ≤ t1 = 0.5, s2 = 7.5 for t ≥ t2 = 1.5, linear between.
truncated_relu = PiecewiseLinear.through(((0.5, -2.5), (1.5, 7.5)))
relu = PiecewiseLinear(0.0, (1.0,), (0.0,))


# "Predicting failure" (MMN's talk: s0 = d, σ₊² = 1.5, σ₋² = 0.5, a non-monotone activation
# and two initialisation scales). This activation (found by a search over piecewise-linear
# ones, tutorials/mmn_anisotropic.py) gives the d → ∞ reduction a stable bad stationary point
# at r ≈ 0.2 (risk 1.156) beside the global minimum r ≈ 4.7 (risk 3e-4), split at r ≈ 1.55:
# κ = 0.4 stalls, κ = 2.5 converges.
FAILURE_ACTIVATION = PiecewiseLinear.through(((0.0, -0.5), (0.5, 0.0), (2.0, -9.0), (6.5, 12.0)))
FAILURE_SCALES = (float(np.sqrt(1.5)), float(np.sqrt(0.5)))


def class_std(delta) -> tuple[float, float]:
    """(s_+, s_−): the classes' per-coordinate s.d. on the informative coordinates; a number
    Δ means (1 + Δ, 1 − Δ), a pair is taken as it is."""
    if np.ndim(delta) == 0:
        return 1.0 + float(delta), 1.0 - float(delta)
    s_plus, s_minus = (float(s) for s in delta)
    return s_plus, s_minus


def make_unit(dim: int = DEFAULTS["dim"], init_scale: float = DEFAULTS["init_scale"], activation=truncated_relu):
    """Unit σ_*(⟨w, x⟩), w ~ N(0, (κ²/d) I_d) (the prior is MMN's initialisation)."""

    def unit(x):
        w = numpyro.sample("w", dist.Normal(0.0, init_scale / np.sqrt(dim)).expand([dim]).to_event(1))
        return activation(x @ w)

    return unit


def class_scales(dim: int, delta, s0: int | None = None):
    """Per-coordinate s.d. of x for y = +1 and y = −1: s_± on the first s0 (default all), 1 after."""
    s0 = dim if s0 is None else s0
    s_plus, s_minus = class_std(delta)
    plus = np.concatenate([np.full(s0, s_plus), np.ones(dim - s0)])
    minus = np.concatenate([np.full(s0, s_minus), np.ones(dim - s0)])
    return plus, minus


def make_sampler(dim: int = DEFAULTS["dim"], delta=DEFAULTS["delta"], s0: int | None = None):
    """sampler(key, B) -> (x (B, d), y (B,)): fresh pairs of the mixture (population data)."""
    plus, minus = (jnp.asarray(s) for s in class_scales(dim, delta, s0))

    def sampler(key, batch_size):
        ky, kx = jax.random.split(key)
        y = jnp.where(jax.random.bernoulli(ky, 0.5, (batch_size,)), 1.0, -1.0)
        scale = jnp.where(y[:, None] > 0, plus, minus)
        return scale * jax.random.normal(kx, (batch_size, dim)), y

    return sampler


def init_radii(key, n: int, dim: int = DEFAULTS["dim"], init_scale: float = DEFAULTS["init_scale"]):
    """r = ‖w‖ for w ~ N(0, (κ²/d) I_d): κ χ_d/√d, shape (n, 1) (the reduced particles)."""
    g = jax.random.normal(key, (n, dim))
    return init_scale * jnp.linalg.norm(g, axis=1, keepdims=True) / np.sqrt(dim)


def quantile_radii(n: int, dim: int = DEFAULTS["dim"], init_scale: float = DEFAULTS["init_scale"]):
    """The n mid-quantiles of r = ‖w‖, w ~ N(0, (κ²/d) I_d): κ √(χ²_d quantile((i − ½)/n) / d),
    shape (n, 1): a deterministic start for the reduced dynamics, with no Monte Carlo error in
    ∫f dρ₀ beyond O(1/n²) for smooth f (a reference for SGD at large N)."""
    return jnp.asarray(init_scale * np.sqrt(chi2.ppf((np.arange(n) + 0.5) / n, dim) / dim))[:, None]


def init_block_radii(key, n: int, dim: int, s0: int, init_scale: float = DEFAULTS["init_scale"]):
    """(r₁, r₂) = (‖w_{1..s0}‖, ‖w_{s0+1..d}‖) for w ~ N(0, (κ²/d) I_d), shape (n, 2)."""
    g = jax.random.normal(key, (n, dim)) * init_scale / np.sqrt(dim)
    return jnp.stack([jnp.linalg.norm(g[:, :s0], axis=1), jnp.linalg.norm(g[:, s0:], axis=1)], axis=1)


def lift(key, radii, dim: int, s0: int | None = None):
    """Units w ∈ R^d with the given block norms and uniform directions: w = |r| u for radii
    (n, 1), w = (|r₁| u₁, |r₂| u₂) on the first s0 and last d − s0 coordinates for (n, 2)."""
    radii = jnp.abs(jnp.asarray(radii))
    u = jax.random.normal(key, (radii.shape[0], dim))
    if radii.shape[1] == 1:
        return radii * u / jnp.linalg.norm(u, axis=1, keepdims=True)
    u1, u2 = u[:, :s0], u[:, s0:]
    return jnp.concatenate([radii[:, :1] * u1 / jnp.linalg.norm(u1, axis=1, keepdims=True),
                            radii[:, 1:] * u2 / jnp.linalg.norm(u2, axis=1, keepdims=True)], axis=1)


class SignedChi(dist.Distribution):
    """The law of ±‖w‖ (a fair sign) for w ~ N(0, s² I_d), on the real line:

        π̄(r) = |r|^{d−1} e^{−r²/(2s²)} / ((2s²)^{d/2} Γ(d/2)).

    The radial law of an isotropic Gaussian prior, symmetrised so that the reduced particle
    lives on R (its score (d − 1)/r − r/s² keeps it off 0 for d ≥ 2)."""

    arg_constraints = {"scale": constraints.positive}
    support = constraints.real
    reparametrized_params = ["scale"]
    pytree_aux_fields = ("dim",)

    def __init__(self, dim: int, scale=1.0, *, validate_args=None):
        self.dim, self.scale = int(dim), scale
        super().__init__(batch_shape=jnp.shape(scale), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        kc, ks = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        radius = jnp.sqrt(2.0 * jax.random.gamma(kc, self.dim / 2.0, shape))
        return jnp.where(jax.random.bernoulli(ks, 0.5, shape), 1.0, -1.0) * radius * self.scale

    def log_prob(self, value):
        d, s2 = self.dim, jnp.square(self.scale)
        return (d - 1) * jnp.log(jnp.abs(value)) - value**2 / (2 * s2) - d / 2 * jnp.log(2 * s2) - gammaln(d / 2)


def _relu_gaussian(c, a):
    """E relu(cG − a) for G ~ N(0, 1), c ≥ 0: c φ(a/c) − a (1 − Φ(a/c))."""
    c = jnp.maximum(jnp.abs(c), 1e-30)
    z = a / c
    return c * jax.scipy.stats.norm.pdf(z) - a * jax.scipy.stats.norm.sf(z)


_TAIL_TABLE = 8193
# The tail is tabulated for |z| ≤ min(√d, this): beyond, P(T > z) < 10⁻³⁰ (or T cannot reach z).
_TAIL_RANGE = 12.0


@functools.lru_cache(maxsize=None)
def _projection_tail_table(dim: int) -> tuple[float, np.ndarray]:
    """(L, P(T > z) on an even grid of z ∈ [−L, L]), L = min(√d, ``_TAIL_RANGE``): T = √d U,
    U the first coordinate of a uniform unit vector of R^d, P(T > z) = 1 − I_{(1+z/√d)/2}(α, α),
    α = (d − 1)/2."""
    half = min(np.sqrt(dim), _TAIL_RANGE)
    z = np.linspace(-half, half, _TAIL_TABLE)
    alpha = (dim - 1) / 2
    return half, 1.0 - scipy_betainc(alpha, alpha, (1.0 + z / np.sqrt(dim)) / 2.0)


def _projection_density(z, dim: int):
    """The density of T at z: (1 − z²/d)^{(d−3)/2} / (√d B(½, (d − 1)/2)) on |z| < √d."""
    u2 = z * z / dim
    inside = u2 < 1.0
    power = jnp.power(jnp.where(inside, 1.0 - u2, 1.0), (dim - 3) / 2)
    return jnp.where(inside, power, 0.0) / (np.sqrt(dim) * np.exp(betaln(0.5, (dim - 1) / 2)))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _projection_tail(z, dim: int):
    """P(T > z), interpolated in a table (jax's betainc is a long continued fraction per
    element, several times the rest of a reduced step); its derivative is the exact −density."""
    half, tail = _projection_tail_table(dim)
    tail = jnp.asarray(tail, z.dtype)
    pos = (jnp.clip(z, -half, half) + half) * ((_TAIL_TABLE - 1) / (2.0 * half))  # even grid: no search
    i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, _TAIL_TABLE - 2)
    frac = pos - i
    return tail[i] * (1.0 - frac) + tail[i + 1] * frac


@_projection_tail.defjvp
def _projection_tail_jvp(dim, primals, tangents):
    (z,), (dz,) = primals, tangents
    return _projection_tail(z, dim), -_projection_density(z, dim) * dz


def _relu_projection(c, a, dim: int):
    """E relu(cT − a), c ≥ 0, T = √d U with U the first coordinate of a uniform unit vector of
    R^d: c E[T; T > z] − a P(T > z), z = a/c, with (u = z/√d, α = (d − 1)/2)

        P(T > z) = 1 − I_{(1+u)/2}(α, α),   E[T; T > z] = √d (1 − u²)^α / ((d − 1) B(½, α)).

    As d → ∞ these tend to 1 − Φ(z) and φ(z): ``_relu_gaussian``."""
    c = jnp.maximum(jnp.abs(c), 1e-30)
    alpha = (dim - 1) / 2
    z = a / c
    u2 = jnp.minimum(z * z / dim, 1.0)
    inside = u2 < 1.0
    # where |u| = 1 the power is 0 (and its gradient too; guarded for α < 1, i.e. d = 2)
    power = jnp.where(inside, jnp.power(jnp.where(inside, 1.0 - u2, 1.0), alpha), 0.0)
    partial = np.sqrt(dim) * power / ((dim - 1) * np.exp(betaln(0.5, alpha)))
    return c * partial - a * _projection_tail(z, dim)


def gaussian_expectation(activation, c, num_nodes: int = DEFAULTS["num_nodes"]):
    """E_G σ_*(c G), G ~ N(0, 1): closed form for a ``PiecewiseLinear`` σ_*, else num_nodes-point
    Gauss–Hermite (whose error at a kink decays only like 1/num_nodes)."""
    if isinstance(activation, PiecewiseLinear):
        return activation.offset + sum(k * _relu_gaussian(c, a) for k, a in zip(activation.slopes, activation.kinks))
    nodes, weights = np.polynomial.hermite_e.hermegauss(num_nodes)
    return activation(c[..., None] * jnp.asarray(nodes)) @ jnp.asarray(weights / np.sqrt(2 * np.pi))


def projection_expectation(activation, c, dim: int | None, num_nodes: int = DEFAULTS["num_nodes"]):
    """E_T σ_*(c T) with T = √d U, U the first coordinate of a uniform unit vector of R^d
    (density ∝ (1 − t²/d)^{(d−3)/2} on |t| < √d); ``dim=None`` is d = ∞ (T = G,
    ``gaussian_expectation``). Closed form for a ``PiecewiseLinear`` σ_*, else num_nodes-point
    Gauss–Jacobi in U."""
    if dim is None:
        return gaussian_expectation(activation, c, num_nodes)
    if isinstance(activation, PiecewiseLinear):
        return activation.offset + sum(k * _relu_projection(c, a, dim) for k, a in zip(activation.slopes, activation.kinks))
    nodes, weights = roots_jacobi(num_nodes, (dim - 3) / 2, (dim - 3) / 2)
    t = jnp.asarray(np.sqrt(dim) * nodes)
    return activation(c[..., None] * t) @ jnp.asarray(weights / weights.sum())


def make_reduced_unit(activation=truncated_relu, num_nodes: int = DEFAULTS["num_nodes"],
                      init_scale: float = DEFAULTS["init_scale"], dim: int | None = None):
    """Reduced unit v(x̄; r) = E σ_*(r x̄ T) (``projection_expectation``; T = G at d = ∞).

    Prior of r: N(0, κ²) at d = ∞ (it only draws starts there: the d = ∞ reduction is
    noiseless), the radial law ``SignedChi(d, κ/√d)`` of N(0, (κ²/d) I_d) at finite d."""

    def unit(x):
        prior = dist.Normal(0.0, init_scale) if dim is None else SignedChi(dim, init_scale / np.sqrt(dim))
        r = numpyro.sample("r", prior)
        return projection_expectation(activation, r * x[:, 0], dim, num_nodes)

    return unit


def reduced_data(delta=DEFAULTS["delta"], dim: int | None = None, num_radii: int = DEFAULTS["num_radii"]):
    """The reduction's data (x̄ (P, 1), ȳ (P,)), equally weighted: at d = ∞ the two points
    x̄ = s_±, ȳ = ±1; at finite d, per class, the ``num_radii`` mid-quantiles
    x̄ = s_± √(χ²_d quantile((k − ½)/K) / d) of ‖x‖/√d."""
    s_plus, s_minus = class_std(delta)
    if dim is None:
        return jnp.asarray([[s_plus], [s_minus]]), jnp.asarray([1.0, -1.0])
    q = np.sqrt(chi2.ppf((np.arange(num_radii) + 0.5) / num_radii, dim) / dim)
    x = np.concatenate([s_plus * q, s_minus * q])[:, None]
    return jnp.asarray(x), jnp.asarray(np.repeat([1.0, -1.0], num_radii))


def reduced_problem(delta=DEFAULTS["delta"], activation=truncated_relu, beta: float = float("inf"),
                    num_nodes: int = DEFAULTS["num_nodes"], dim: int | None = None,
                    init_scale: float = DEFAULTS["init_scale"], num_radii: int = DEFAULTS["num_radii"]):
    """``mfsde.FreeEnergy`` of the isotropic reduction on r (risk, Ψ, ∇Ψ): d = ∞ by default,
    the exact finite-d reduction with ``dim=d`` (its noisy dynamics at finite β carry the
    Itô drift (d − 1)/(βr) through the ``SignedChi`` prior)."""
    if dim is None and beta != float("inf"):
        raise ValueError("the d = ∞ reduction is noiseless (beta = inf): at finite beta the radial law of an "
                         "isotropic d-dimensional diffusion concentrates as d grows; give dim=d")
    x, y = reduced_data(delta, dim, num_radii)
    return mfsde.FreeEnergy(make_reduced_unit(activation, num_nodes, init_scale, dim), x, y, beta)


def make_anisotropic_reduced_unit(activation=truncated_relu, num_nodes: int = DEFAULTS["num_nodes"],
                                  init_scale: float = DEFAULTS["init_scale"], s0_fraction: float = 0.5):
    """Reduced unit v(x̄; r₁, r₂) = E_G σ_*(√(r₁² x̄₁² + r₂² x̄₂²) G); priors r₁ ~ N(0, κ²γ),
    r₂ ~ N(0, κ²(1 − γ)) (the block norms' scales at initialisation; they only draw starts)."""

    def unit(x):
        r1 = numpyro.sample("r1", dist.Normal(0.0, init_scale * np.sqrt(s0_fraction)))
        r2 = numpyro.sample("r2", dist.Normal(0.0, init_scale * np.sqrt(1.0 - s0_fraction)))
        return gaussian_expectation(activation, jnp.hypot(r1 * x[:, 0], r2 * x[:, 1]), num_nodes)

    return unit


def anisotropic_reduced_data(delta=DEFAULTS["delta"]):
    """x̄ = (s_±, 1) as (2, 2) (the two blocks' scales), ȳ = ±1."""
    s_plus, s_minus = class_std(delta)
    return jnp.asarray([[s_plus, 1.0], [s_minus, 1.0]]), jnp.asarray([1.0, -1.0])


def anisotropic_reduced_problem(delta=DEFAULTS["delta"], s0_fraction: float = 0.5, activation=truncated_relu,
                                num_nodes: int = DEFAULTS["num_nodes"], init_scale: float = DEFAULTS["init_scale"]):
    """``mfsde.FreeEnergy`` of the anisotropic d → ∞ reduction on (r₁, r₂), β = ∞."""
    x, y = anisotropic_reduced_data(delta)
    return mfsde.FreeEnergy(make_anisotropic_reduced_unit(activation, num_nodes, init_scale, s0_fraction), x, y,
                            float("inf"))
