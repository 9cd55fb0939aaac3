"""A run's start: the families' one entry check, and overdispersed starting clouds for
replicate runs, so that R-hat across them has power."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._checks import finite, particle_array, positive_int
from .._keys import as_keys, single_key
from ..free_energy import FreeEnergy
from ..particles import Particles

__all__ = ["overdispersed_starts", "run_start"]


def run_start(fe: FreeEnergy, key, particles0, *, broadcast: bool = False, cast: bool = False,
              key_optional: bool = False, measures: bool = False):
    """(keys, batched, Θ_0): every family's entry check of ``(fe, key, particles0)``.

    ``key``: one key or R of them (``as_keys``; None allowed with ``key_optional``, an ODE).
    ``particles0``: (N, D), or (R, N, D) with R keys (one start per replicate), or the θ
    of a ``Particles`` where the family moves measures (``measures``); every error (shape,
    N = 0, non-finite values) names the argument.
    ``broadcast``: R keys and an (N, D) start give (R, N, D) copies (the jump chains' state
    is per replicate). ``cast``: the start cast to the data's dtype."""
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be a mfsde.FreeEnergy, got {type(fe).__name__}")
    key, batched = (None, False) if key is None and key_optional else as_keys(key)
    if isinstance(particles0, Particles) and not measures:
        raise TypeError("particles0 must be an (N, D) array: this family moves equally weighted particles "
                        "(a weighted start runs in mfsde.wfr; or Particles.resample)")
    theta = jnp.asarray(particles0.theta if isinstance(particles0, Particles) else particles0)
    if batched and theta.ndim == 3:
        if theta.shape[0] != key.shape[0]:
            raise ValueError(f"particles0 has {theta.shape[0]} replicates for {key.shape[0]} keys")
        particle_array("particles0", theta[0], fe.dim)
    else:
        theta = particle_array("particles0", theta, fe.dim)
    # Under an outer jit/vmap the values are not known here; they are checked when concrete.
    finite("particles0", theta)
    if broadcast and batched:
        theta = jnp.broadcast_to(theta, (key.shape[0], *theta.shape[-2:]))
    return key, batched, theta.astype(fe.x.dtype) if cast else theta


# Prior draws used to locate the prior's centre when it is not Gaussian.
_CENTRE_DRAWS = 4096


def overdispersed_starts(fe: FreeEnergy, key: PRNGKeyArray, num_replicates: int, num_particles: int,
                         *, spread: float = 2.0) -> Float[Array, "r n d"]:
    """Starting clouds (R, N, D) whose laws differ across replicates: prior draws scaled about
    the prior's centre c (its mean for Gaussian sites, else the coordinate-wise median of
    prior draws) by factors s_r = spread^(2r/(R−1) − 1), r = 0..R−1, from 1/spread to spread:

        θ_{r,i} = c + s_r (θ̃_{r,i} − c),   θ̃_{r,i} ~ π₀ (unconstrained coordinates).

    A drift that every replicate shares (e.g. a slow marginal relaxing from the prior) then
    shows as disagreement between replicates, which R-hat measures; from one start law it
    cannot. Pass the result as ``particles0`` with a batch of R keys to ``mfsde.langevin``.

    Examples:
        >>> import jax, jax.numpy as jnp, mfsde
        >>> lg = mfsde.load_model("linear_gaussian")      # linear units: a closed-form fixed point
        >>> fe = lg.free_energy(num_data=64, dim=2, beta=4.0)
        >>> mfsde.overdispersed_starts(fe, jax.random.key(1), 4, 32).shape   # (replicates, N, D)
        (4, 32, 2)
    """

    positive_int("num_replicates", num_replicates)
    positive_int("num_particles", num_particles)
    if not (isinstance(spread, (int, float)) and math.isfinite(spread) and spread >= 1.0):
        raise ValueError(f"spread must be a number >= 1, got {spread!r}")
    r = int(num_replicates)
    moments = fe.unit.gaussian_prior_moments()
    k_centre, k_draw = jax.random.split(single_key(key, replicates="one key makes all the replicates' starts"))
    if moments is not None:
        centre = jnp.asarray(moments[0], fe.x.dtype)
    else:
        centre = jnp.median(fe.prior_sample(k_centre, _CENTRE_DRAWS), axis=0)
    scales = spread ** (np.linspace(-1.0, 1.0, r) if r > 1 else np.zeros(1))
    draws = jax.vmap(lambda k: fe.prior_sample(k, int(num_particles)))(jax.random.split(k_draw, r))
    return centre + jnp.asarray(scales, draws.dtype)[:, None, None] * (draws - centre)


def start_dispersion(particles0) -> float:
    """How differently R replicate starting clouds (R, N, D) are distributed: the largest,
    over coordinates j and the moments θ_j and θ_j², of the F-like ratio

        N · Var_r(mean over the cloud r) / mean_r(variance within the cloud r),

    about 1 when the clouds are independent draws of one law, large when their laws
    differ (``overdispersed_starts``). NaN for fewer than two replicates or particles.
    """
    p = np.asarray(particles0, np.float64)
    if p.ndim != 3 or p.shape[0] < 2 or p.shape[1] < 2:
        return float("nan")
    ratios = []
    for moment in (p, p**2):
        within = moment.var(axis=1, ddof=1).mean(0)
        between = moment.mean(axis=1).var(axis=0, ddof=1)
        ratios.append(p.shape[1] * between / np.maximum(within, 1e-300))
    return float(np.max(ratios))
