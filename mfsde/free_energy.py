"""The free energy F_β(ρ) = ½R(ρ) + β⁻¹ KL(ρ‖π₀) of a unit model on a data set.

Everything here is a pure function of an (N, D) particle array Θ whose empirical measure is
ρ^N = (1/N) Σ_i δ_{θ_i}, or of a weighted measure ``Particles(theta, log_weight)``,
ρ = Σ_i w_i δ_{θ_i}. The particles interact only through the network output
f_ρ(x_p) = Σ_i w_i σ(x_p; θ_i) on the P data points, so every quantity is one sweep over
the data, optionally in chunks of ``chunk_size`` points: memory O(N · chunk), never O(N · P).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._blocks import row_blocks
from ._checks import finite, is_traced, particle_array
from ._layout import particle_axis_first
from .model import UnitModel
from .particles import Particles, as_measure, weighted_mean

__all__ = ["FreeEnergy"]

# "auto" chunking: (N, chunk) intermediates of about this many elements. On CPU they stay
# in cache (the optimum measured in bench/README.md). On accelerators a sequential scan
# over chunks is slower than one large chunk (bench/README.md), so chunks are as large as
# the device memory allows, counting 24 bytes an element (a float32 step keeps
# about four (N, chunk) arrays alive).
_AUTO_CHUNK_ELEMENTS_CPU = 1 << 20
_AUTO_CHUNK_ELEMENTS_ACCEL_DEFAULT = 1 << 28
_AUTO_CHUNK_MIN = 64


def _in_every_row(r: Float[Array, " p"], feats: Float[Array, "n p"]) -> Float[Array, "n p"]:
    """The cotangent r in every row of the (N, P) features, with the features' sharding:
    a plain ``broadcast_to`` is replicated, which a VJP over particles sharded on a mesh
    with explicit axes rejects."""
    sharding = jax.typeof(feats).sharding
    if sharding.mesh.empty:  # one device: a plain broadcast (out_sharding costs a third of a step)
        return jnp.broadcast_to(r, feats.shape)
    return jnp.broadcast_to(r, feats.shape, out_sharding=sharding)


def _auto_chunk_elements() -> int:
    if jax.default_backend() == "cpu":
        return _AUTO_CHUNK_ELEMENTS_CPU
    try:
        limit = jax.devices()[0].memory_stats()["bytes_limit"]
    except Exception:  # backends without memory_stats
        return _AUTO_CHUNK_ELEMENTS_ACCEL_DEFAULT
    return max(_AUTO_CHUNK_ELEMENTS_CPU, int(limit) // 24)


class FreeEnergy(eqx.Module):
    """Free energy F_β(ρ) = ½R(ρ) + β⁻¹ KL(ρ‖π₀) of one unit model on a fixed data set.

    With f_ρ(x) = ∫σ(x; θ) ρ(dθ) and data (x_p, y_p), p = 1..P:

    - risk        R(ρ) = (1/P) Σ_p (y_p − f_ρ(x_p))²;
    - potential   Ψ(θ; ρ) = (1/P) Σ_p (f_ρ(x_p) − y_p) σ(x_p; θ)   (first variation of ½R);
    - Gibbs       G[ρ] (dθ) ∝ π₀(dθ) exp(−β Ψ(θ; ρ)); its fixed point ρ* = G[ρ*] minimises F_β.

    Args:
        unit: numpyro model of one hidden unit, ``unit(x) -> (P,)``.
        x: inputs, shape (P, ...). y: targets, shape (P,). Both finite.
        beta: inverse temperature, ``0 < beta <= inf`` (``inf``: the noiseless gradient flow).
            Held as a 0-d array of the data's dtype, a traced value of every compiled
            program (``finite_beta`` is the static part).
        chunk_size: data are swept in chunks of this many points, so that no (N, P) array
            is formed (memory O(N · chunk)); results equal the unchunked ones to float
            tolerance. ``None``: one chunk. ``"auto"`` (default): chosen per particle count
            N at each call, ``chunk_for(N)``: on CPU about 2^20 / N points, which keeps the
            (N, chunk) intermediates in cache and is 1.2x faster than one chunk at
            N = P = 4096 (bench/README.md); on accelerators as many as the
            device memory holds, since there chunking only serialises the work.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> p0 = fe.prior_sample(jax.random.key(1), 128)
        >>> fe.dim, fe.output(p0).shape                       # D, f_rho on the P data points
        (2, (64,))
        >>> bool(fe.risk(p0) > 0), fe.potential(p0[0], p0).shape    # R(rho) and Psi(theta; rho)
        (True, ())
    """

    unit: UnitModel
    x: Array
    y: Array
    # β is a traced value (a sweep over β reuses compiled programs); whether it is finite
    # decides which terms exist (noise, the prior's drift), so that part is static
    beta: Array
    finite_beta: bool = eqx.field(static=True)
    chunk_size: int | str | None = eqx.field(static=True)
    num_data: int = eqx.field(static=True)
    sampler: Callable | None = eqx.field(static=True, default=None)

    def __init__(self, unit: Callable | UnitModel, x, y, beta: float, chunk_size: int | str | None = "auto",
                 sampler: Callable | None = None):
        x = jnp.asarray(x, dtype=float)
        y = jnp.asarray(y, dtype=float)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"x must have shape (P, ...) with P >= 1, got {x.shape}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape (P,) = ({x.shape[0]},) to match x {x.shape}, got {y.shape}")
        finite("x", x)
        finite("y", y)
        try:
            beta = float(beta)
        except (TypeError, ValueError):
            raise ValueError(f"beta must be a positive number (inf allowed), got {beta!r}") from None
        if math.isnan(beta) or beta <= 0:
            raise ValueError(f"beta must be > 0 (inf allowed for the noiseless flow), got {beta}")
        if chunk_size is not None and chunk_size != "auto":
            if not isinstance(chunk_size, (int, float)) or int(chunk_size) != chunk_size or chunk_size < 1:
                raise ValueError(f"chunk_size must be a positive integer, 'auto' or None, got {chunk_size!r}")
            chunk_size = int(chunk_size)
        self.unit = unit if isinstance(unit, UnitModel) else UnitModel(unit, x)
        self.x, self.y = x, y
        self.beta = jnp.asarray(beta, x.dtype)
        self.finite_beta = not math.isinf(beta)
        self.chunk_size = chunk_size
        self.num_data = int(x.shape[0])
        if sampler is not None and not callable(sampler):
            raise TypeError(f"sampler must be a function (key, batch_size) -> (x, y), got {type(sampler).__name__}")
        self.sampler = sampler

    @classmethod
    def from_sampler(cls, unit: Callable | UnitModel, sampler: Callable, beta: float, key: PRNGKeyArray,
                     num_eval: int = 4096, chunk_size: int | str | None = "auto") -> "FreeEnergy":
        """Population (one-pass) free energy: pairs come fresh from ``sampler(key, B) -> (x, y)``.

        ``mfsde.sgd`` draws every minibatch from the sampler (one pass, no pair reused), so
        it descends the population risk R(ρ) = E_{(x, y)}[(y − f_ρ(x))²]. Everything that
        needs R, Ψ or ∇Ψ as a deterministic function (risk, langevin, fixed points) uses a
        fixed evaluation sample of ``num_eval`` pairs drawn once from ``key``: a Monte
        Carlo estimate of the population quantities with error O(num_eval^{-1/2}).
        """
        if not callable(sampler):
            raise TypeError(f"sampler must be a function (key, batch_size) -> (x, y), got {type(sampler).__name__}")
        if int(num_eval) != num_eval or num_eval < 1:
            raise ValueError(f"num_eval must be a positive integer, got {num_eval!r}")
        x, y = sampler(key, int(num_eval))
        x, y = jnp.asarray(x), jnp.asarray(y)
        if x.shape[:1] != (num_eval,) or y.shape != (num_eval,):
            raise ValueError(f"sampler(key, {num_eval}) must return x of shape ({num_eval}, ...) and y of shape "
                             f"({num_eval},), got {x.shape} and {y.shape}")
        return cls(unit, x, y, beta, chunk_size=chunk_size, sampler=sampler)

    # Identity hash/eq (a FreeEnergy holds data arrays): makes bound methods hashable, so
    # ``jax.jit(fe.risk)`` works as for any function. Passed as a jit argument, it is still
    # a pytree whose arrays are traced.
    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other

    # -- data chunking -------------------------------------------------------------------
    def chunk_for(self, n: int) -> int:
        """Data points per chunk when sweeping the data for n particles."""
        p = self.num_data
        if self.chunk_size is None:
            return p
        if self.chunk_size == "auto":
            c_max = max(_AUTO_CHUNK_MIN, _auto_chunk_elements() // max(n, 1))
            k = -(-p // c_max)
            return -(-p // k)  # k equal chunks: the least padding
        return min(self.chunk_size, p)

    def _chunked(self, n: int, x: Array, y: Array | None = None) -> tuple[Array, Array, Array]:
        """(x, y, w) reshaped to (chunks, c, ...) (``row_blocks``); padding rows repeat row 0 with
        weight w = 0."""
        p = x.shape[0]
        c = self.chunk_for(n)
        xc, valid = row_blocks(x, c)
        yc, _ = row_blocks(jnp.zeros(p, x.dtype) if y is None else y, c)
        return xc, yc, valid.astype(x.dtype)

    # -- the network -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        """D, the number of unconstrained parameters of one unit."""
        return self.unit.dim

    def _measure(self, particles) -> tuple[Array, Array | None]:
        """(θ (N, D), normalised weights or None) of an (N, D) array or a ``Particles``."""
        theta, w = as_measure(particles)
        return particle_array("particles", theta, self.dim), w

    def features(self, particles: Float[Array, "n d"], x: Array) -> Float[Array, "n p"]:
        """σ(x_p; θ_i) for all particles and inputs, shape (N, P). Memory O(N·P): for chunks.

        The unit is vmapped over particles with its contractions rewritten θ-first
        (``_layout.particle_axis_first``), so ``x @ w`` and ``w @ x.T`` give the same
        particle-first program."""
        return jax.vmap(particle_axis_first(self.unit.apply), in_axes=(0, None))(particles, x)

    def output(self, particles: Float[Array, "n d"] | Particles, x: Array | None = None) -> Float[Array, " p"]:
        """f_ρ(x_p) = Σ_i w_i σ(x_p; θ_i) on the data (or on new inputs ``x``), shape (P,);
        w_i = 1/N for an (N, D) array."""
        particles, w = self._measure(particles)
        if x is None:
            x = self.x
        else:
            x = jnp.asarray(x, dtype=self.x.dtype)
            if x.ndim != self.x.ndim or x.shape[1:] != self.x.shape[1:]:
                raise ValueError(f"x must have shape (P, {', '.join(map(str, self.x.shape[1:]))}), got {x.shape}")
        if is_traced(particles) or is_traced(x) or (w is not None and is_traced(w)):
            return self._output(particles, w, x)
        # called eagerly: one compiled program per structure (an eager scan over the data
        # chunks would be traced and compiled again for every FreeEnergy)
        return _jit_output(self, particles, w, x)

    def _output(self, particles, w, x):
        xc, _, _ = self._chunked(particles.shape[0], x)
        f = jax.lax.map(lambda xb: weighted_mean(self.features(particles, xb), w), xc)
        return f.reshape(-1)[: x.shape[0]]

    def risk(self, particles: Float[Array, "n d"] | Particles) -> Float[Array, ""]:
        """R(ρ) = (1/P) Σ_p (y_p − f_ρ(x_p))²."""
        return jnp.mean((self.output(particles) - self.y) ** 2)

    def _check_output(self, output, name: str = "output") -> Array:
        """``output`` as an array after checking it is a finite output f of shape (P,)."""
        if is_traced(output):
            return output
        a = jnp.asarray(output, self.x.dtype)
        if a.shape != (self.num_data,):
            raise ValueError(f"{name} must be an output f of shape (P,) = ({self.num_data},), one value per data "
                             f"point, got {a.shape}")
        finite(name, a)
        return a

    def residual(self, particles_or_output: Array) -> Float[Array, " p"]:
        """r_p = f_ρ(x_p) − y_p, from particles (N, D), ``Particles`` or an output f (P,)."""
        if isinstance(particles_or_output, Particles):
            return self.output(particles_or_output) - self.y
        a = jnp.asarray(particles_or_output)
        if a.ndim == 1:
            if a.shape != (self.num_data,):
                raise ValueError(f"an output must have shape (P,) = ({self.num_data},), got {a.shape}")
            return a - self.y
        return self.output(a) - self.y

    def potential(self, theta: Float[Array, " d"], particles: Array) -> Float[Array, ""]:
        """Ψ(θ; ρ) = (1/P) Σ_p (f_ρ(x_p) − y_p) σ(x_p; θ); ρ given by particles or by f_ρ."""
        r = self.residual(particles)
        return jnp.mean(r * self.unit.apply(theta, self.x))

    def grad_potential(self, particles: Float[Array, "n d"] | Particles) -> Float[Array, "n d"]:
        """∇_θ Ψ(θ_i; ρ) at every particle of ρ = Σ_i w_i δ_{θ_i} (w_i = 1/N for an array),
        shape (N, D). The weights enter through f_ρ only: Ψ(·; ρ) is one function of θ.

        One forward pass for f_ρ and one vjp over the (N, D) array per data chunk:
        ∇Ψ(θ_i) = (1/P) Σ_p r_p ∇σ(x_p; θ_i) is the vjp of Θ ↦ σ(x; Θ) ∈ R^{N×P} with the
        cotangent r/P in every row; f_ρ on a chunk needs only that chunk.
        """
        return self.grad_potential_and_output(particles)[0]

    def grad_potential_and_output(self, particles: Float[Array, "n d"] | Particles, x: Array | None = None,
                                  y: Array | None = None) -> tuple[Float[Array, "n d"], Float[Array, " p"]]:
        """(∇Ψ(θ_i; ρ^N) for all i, f_ρ on the data) from the same forward pass.

        With ``x, y`` (a minibatch of B pairs) instead of the data set, Ψ is the batch's
        (1/B) Σ_b (f_ρ(x_b) − y_b) σ(x_b; θ): the stochastic gradient of SGD.
        """
        particles, w = self._measure(particles)
        if x is None:
            x, y = self.x, self.y
        p = x.shape[0]

        def chunk(xb, yb, wb):
            feats, vjp = jax.vjp(lambda th: self.features(th, xb), particles)
            f = weighted_mean(feats, w)
            r = (f - yb) * (wb / p)
            return vjp(_in_every_row(r, feats))[0], f

        xc, yc, wc = self._chunked(particles.shape[0], x, y)
        if xc.shape[0] == 1:
            g, f = chunk(xc[0], yc[0], wc[0])
            return g, f[:p]

        def body(g, batch):
            dg, f = chunk(*batch)
            return g + dg, f

        g, f = jax.lax.scan(body, jnp.zeros_like(particles), (xc, yc, wc))
        return g, f.reshape(-1)[:p]

    def potentials_grads_and_output(self, particles: Float[Array, "n d"] | Particles
                                    ) -> tuple[Float[Array, " n"], Float[Array, "n d"], Float[Array, " p"]]:
        """(Ψ(θ_i; ρ), ∇Ψ(θ_i; ρ), f_ρ) at every particle of ρ = Σ_i w_i δ_{θ_i}, from one
        forward pass and one vjp per data chunk (as ``grad_potential_and_output``):
        Ψ(θ_i) = (1/P) Σ_p r_p σ(x_p; θ_i) is the row sum of the features against the same
        cotangent r/P, so the potentials cost O(N · chunk) on top. What reweighting and
        birth–death dynamics need: the rate V(θ_i) − V̄ and the transport −∇V together."""
        particles, w = self._measure(particles)
        p = self.num_data

        def chunk(xb, yb, wb):
            feats, vjp = jax.vjp(lambda th: self.features(th, xb), particles)
            f = weighted_mean(feats, w)
            r = (f - yb) * (wb / p)
            return feats @ r, vjp(_in_every_row(r, feats))[0], f

        xc, yc, wc = self._chunked(particles.shape[0], self.x, self.y)
        if xc.shape[0] == 1:
            v, g, f = chunk(xc[0], yc[0], wc[0])
            return v, g, f[:p]

        def body(acc, batch):
            dv, dg, f = chunk(*batch)
            return (acc[0] + dv, acc[1] + dg), f

        init = (jnp.zeros(particles.shape[0], particles.dtype), jnp.zeros_like(particles))
        (v, g), f = jax.lax.scan(body, init, (xc, yc, wc))
        return v, g, f.reshape(-1)[:p]

    def potential_and_grad(self, thetas: Float[Array, "m d"], particles_or_output: Array
                           ) -> tuple[Float[Array, " m"], Float[Array, "m d"]]:
        """(Ψ(v_j; ρ), ∇Ψ(v_j; ρ)) at M points v_j for a frozen ρ (particles or f_ρ), chunked.

        Ψ(v; ρ) = (1/P) Σ_p r_p σ(x_p; v) with r = f_ρ − y fixed, so the points do not
        interact: one forward and one vjp per data chunk, memory O(M · chunk).
        """
        thetas = particle_array("thetas", thetas, self.dim, at_least=0)
        r = self.residual(particles_or_output)
        p = self.num_data

        def chunk(acc, batch):
            xb, rb, wb = batch
            feats, vjp = jax.vjp(lambda th: self.features(th, xb), thetas)
            cot = _in_every_row(rb * (wb / p), feats)
            return (acc[0] + jnp.sum(feats * cot, axis=1), acc[1] + vjp(cot)[0]), None

        xc, rc, wc = self._chunked(thetas.shape[0], self.x, r)
        init = (jnp.zeros(thetas.shape[0], thetas.dtype), jnp.zeros_like(thetas))
        if xc.shape[0] == 1:
            return chunk(init, (xc[0], rc[0], wc[0]))[0]
        return jax.lax.scan(chunk, init, (xc, rc, wc))[0]

    def interaction(self, a: Float[Array, "m d"], b: Float[Array, "k d"]) -> Float[Array, "m k"]:
        """U(a_i, b_j) = (1/P) Σ_p σ(x_p; a_i) σ(x_p; b_j), the interaction kernel of the risk
        R(ρ) = R_# + 2∫V dρ + ∫∫U dρ dρ between two sets of units, shape (M, K).

        One pass over the data in chunks: memory O((M + K) · chunk + M · K).
        """
        a, b = particle_array("a", a, self.dim, at_least=0), particle_array("b", b, self.dim, at_least=0)
        xc, _, wc = self._chunked(max(a.shape[0], b.shape[0]), self.x)

        def chunk(acc, batch):
            xb, wb = batch
            return acc + (self.features(a, xb) * wb) @ self.features(b, xb).T, None

        init = jnp.zeros((a.shape[0], b.shape[0]), a.dtype)
        return jax.lax.scan(chunk, init, (xc, wc))[0] / self.num_data

    def grad_prior_logdensity(self, particles: Float[Array, "n d"]) -> Float[Array, "n d"]:
        """∇ log π₀(θ_i) (unconstrained coordinates, Jacobian included), shape (N, D)."""
        return jax.vmap(jax.grad(self.unit.prior_logdensity))(particles)

    def prior_logdensity(self, particles: Float[Array, "n d"]) -> Float[Array, " n"]:
        """log π₀(θ_i) in unconstrained coordinates (Jacobian included), shape (N,)."""
        return jax.vmap(self.unit.prior_logdensity)(particle_array("particles", particles, self.dim, at_least=0))

    def prior_sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """n independent draws θ ~ π₀ as unconstrained flat particles, shape (n, D)."""
        return self.unit.prior_sample(key, n)

    def gibbs_logdensity(self, particles_or_output: Array) -> Callable[[Array], Array]:
        """θ ↦ log π₀(θ) − β Ψ(θ; ρ), the unnormalised log-density of G[ρ].

        ρ is given by particles (N, D) or directly by its output f_ρ on the data (P,);
        either way it is frozen: the returned function depends on ρ only through f_ρ.
        """
        tilt, prior = self.gibbs_log_tilt(particles_or_output), self.unit.prior_logdensity

        def logdensity(theta):
            return prior(theta) + tilt(theta)

        return logdensity

    def gibbs_log_tilt(self, particles_or_output: Array) -> Callable[[Array], Array]:
        """θ ↦ −β Ψ(θ; ρ) = −β (1/P) Σ_p (f_ρ(x_p) − y_p) σ(x_p; θ), G[ρ]'s tilt of the prior
        (ρ frozen, as in ``gibbs_logdensity``): what tempering from π₀ to G[ρ] raises to a power."""
        if not self.finite_beta:
            raise ValueError("the Gibbs measure exp(-beta * Psi) is degenerate at beta = inf")
        r = self.residual(particles_or_output)
        beta, x, unit = self.beta, self.x, self.unit

        def log_tilt(theta):
            return -beta * jnp.mean(r * unit.apply(theta, x))

        return log_tilt

    def unflatten(self, particles: Float[Array, "n d"]) -> dict[str, Array]:
        """Named, constrained values per sample site: site -> (N, *site_shape)."""
        return self.unit.unflatten(particles)


@eqx.filter_jit
def _jit_output(fe: FreeEnergy, particles, w, x):
    return fe._output(particles, w, x)
