"""One hidden unit as a numpyro model: its prior, its unit function, flat coordinates.

A unit model is a numpyro model ``unit(x) -> (P,)`` whose sample sites are the parameters
θ of ONE hidden unit and whose return value is σ(x; θ) for a batch of P inputs, row by row.
mfsde works on a flat vector θ ∈ R^D in the unconstrained space of the prior, obtained with
numpyro's own machinery (``initialize_model``, ``constrain_fn``, ``unconstrain_fn``); names
and constrained values come back only at the edges (``unflatten``).

Example (the lecture's planted-neuron student)::

    def unit(x):                                   # x: (P, d)
        a = numpyro.sample("a", dist.Normal(0.0, 1.0))
        w = numpyro.sample("w", dist.Normal(0.0, 1.0 / d**0.5).expand([d]).to_event(1))
        return a * jnp.tanh(x @ w)                 # (P,)

Performance: mfsde evaluates all N units at once by ``jax.vmap`` over the particles, with
each contraction of data against θ rewritten θ-first at trace time (``mfsde._layout``), so
``x @ w``, ``w @ x.T`` and ``einsum("d,pd->p", w, x)`` all keep the particle axis first in
every (N, P) intermediate and run the same program.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
import types
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Float, PRNGKeyArray
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer import init_to_sample
from numpyro.infer.util import constrain_fn, initialize_model, unconstrain_fn

__all__ = ["UnitModel", "load_model"]

# The example models shipped inside the package (mfsde/models/<name>.py).
_MODELS_DIR = pathlib.Path(__file__).resolve().parent / "models"
EXAMPLE_MODELS = ("linear_gaussian", "single_neuron", "gaussian_mixture", "scalar_tanh", "gaussian_bumps", "three_spin")
# Parameters are checked finite at this many prior draws when a model is traced.
_N_PRIOR_CHECK = 16


class _Site(NamedTuple):
    """What validation needs of one traced site: numpyro's site dict without its values."""

    type: str
    is_observed: bool
    discrete: bool
    shape: tuple[int, ...]


def _trace(unit: Callable, x: Array, seed: int = 0) -> tuple[dict[str, _Site], tuple[int, ...] | None]:
    """(the sample and param sites of one prior draw of ``unit(x)``, the output's shape).

    Traced abstractly (``jax.eval_shape``): only shapes and site kinds are read, so no
    operation of the model is compiled or run here (eagerly, each new shape of each
    operation would cost an XLA compile, seconds for a constrained prior).
    """
    sites, shape = {}, []

    def run():
        with handlers.block(), handlers.trace() as tr:
            out = handlers.seed(unit, seed)(x)
        for name, site in tr.items():
            if site["type"] in ("sample", "param"):
                discrete = site["type"] == "sample" and bool(site["fn"].support.is_discrete)
                sites[name] = _Site(site["type"], bool(site.get("is_observed", False)), discrete,
                                    tuple(jnp.shape(site["value"])))
        shape.append(None if out is None else tuple(jnp.shape(out)))
        return 0

    jax.eval_shape(run)
    return sites, shape[0]


def _validate_sites(tr: dict[str, _Site]) -> list[str]:
    """Return the latent sample-site names of a trace; raise for what mfsde cannot treat."""
    names = []
    for name, site in tr.items():
        if site.type == "param":
            raise ValueError(
                f"unit model has a param site {name!r}: mfsde needs every parameter of the "
                "unit as a sample site with a prior (numpyro.sample)"
            )
        if site.type != "sample":
            continue
        if site.is_observed:
            raise ValueError(
                f"unit model has an observed site {name!r}: a unit model describes one hidden "
                "unit's parameters only; the data enter through FreeEnergy(unit, x, y)"
            )
        if site.discrete:
            raise ValueError(
                f"unit model site {name!r} has a discrete support: the mean-field dynamics "
                "need continuous parameters"
            )
        names.append(name)
    if not names:
        raise ValueError("unit model has no sample sites: it must declare its parameters with numpyro.sample")
    return names


def _potential(unit: Callable, probe: Array, names: list[str]) -> tuple[Callable, dict[str, Any]]:
    """(numpyro's potential_fn of the unit model on ``probe``, zeros shaped as its
    unconstrained sites), from ``initialize_model`` run abstractly (``jax.eval_shape``): the
    potential it builds reads the model afresh at each call and holds no traced value, and
    only the shapes of the initial parameters are kept (the prior draws are checked finite
    by ``UnitModel`` itself)."""
    box = []

    def run():
        info = initialize_model(jax.random.key(0), unit, model_args=(probe,), init_strategy=init_to_sample)
        box.append(info.potential_fn)
        return {k: info.param_info.z[k] for k in names}

    shapes = jax.eval_shape(run)
    return box[0], jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _prior_draw_checks(unit: "UnitModel", x: Array, m: int):
    """(θ, log π₀(θ), σ(x; θ), σ(x[:m]; θ)) at _N_PRIOR_CHECK prior draws θ."""
    thetas = unit.prior_sample(jax.random.key(0), _N_PRIOR_CHECK)
    logp = jax.vmap(unit.prior_logdensity)(thetas)
    outs = jax.vmap(unit.apply, in_axes=(0, None))(thetas, x)
    part = jax.vmap(unit.apply, in_axes=(0, None))(thetas, x[:max(m, 1)])
    return thetas, logp, outs, part


class _Layout(NamedTuple):
    """What tracing a unit model gives: its flat size, sites, ravel map and prior potential."""

    dim: int
    site_names: tuple[str, ...]
    site_shapes: tuple[tuple[int, ...], ...]
    unravel: Callable
    potential_fn: Callable


# unit -> {(x shape, dtype): _Layout}. The same unit on data of the same shape gets the
# same ravel map and potential, the static part of every compiled program, so a new
# FreeEnergy with other values (β, data) reuses the programs compiled for the last one.
_LAYOUTS: "weakref.WeakKeyDictionary[Callable, dict]" = weakref.WeakKeyDictionary()


def _layout_of(unit: Callable, x: Array) -> _Layout:
    """The ``_Layout`` of ``unit(x)``, traced once per unit and input shape; raises
    ``ValueError`` for what mfsde cannot treat (``_validate_sites``)."""
    signature = (tuple(x.shape), str(x.dtype))
    try:
        known = _LAYOUTS.setdefault(unit, {})
    except TypeError:  # not weakly referable: traced every time
        known = {}
    if signature in known:
        return known[signature]
    tr, out = _trace(unit, x)
    names = _validate_sites(tr)
    if out != (x.shape[0],):
        raise ValueError(
            f"unit model must return sigma(x; theta) of shape (P,) = ({x.shape[0]},) for "
            f"x of shape {x.shape}, got {out}"
        )
    probe = x[:1]
    tr_probe, _ = _trace(unit, probe)
    for name in names:
        if tr_probe[name].shape != tr[name].shape:
            raise ValueError(
                f"unit model site {name!r} has shape {tr[name].shape} for P = "
                f"{x.shape[0]} inputs but {tr_probe[name].shape} for P = 1: a "
                "unit's parameters must not depend on the number of inputs"
            )
    potential_fn, z = _potential(unit, probe, names)
    flat, unravel = ravel_pytree(z)
    layout = _Layout(int(flat.shape[0]), tuple(names), tuple(tr[k].shape for k in names), unravel, potential_fn)
    known[signature] = layout
    return layout


class UnitModel(eqx.Module):
    """A traced numpyro model of one hidden unit, in flat unconstrained coordinates.

    ``UnitModel(unit, x)`` traces ``unit(x)``. Its sample sites, in trace order, ravelled
    into one vector, are the unit's parameters θ ∈ R^D in the unconstrained space of the
    prior π₀ (each site pushed through numpyro's ``biject_to(support)``).

    - ``prior_logdensity(θ) = log π₀(T(θ)) + log |det ∂T(θ)|`` (with the Jacobian of the
      constraining map T), numpyro's ``-potential_fn`` of the unit model;
    - ``apply(θ, x) = σ(x; θ)``, shape ``(P,)`` for inputs ``x`` of shape ``(P, ...)``;
    - ``constrain(θ)`` / ``unflatten(Θ)`` give named, constrained site values.

    Raises ``ValueError`` naming the site or shape for: no sample sites, an observed,
    ``param`` or discrete site, an output that is not of shape ``(P,)``, parameter shapes
    that depend on P, and non-finite output or prior density at prior draws.
    """

    model: Callable = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    site_names: tuple[str, ...] = eqx.field(static=True)
    site_shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    _unravel: Callable = eqx.field(static=True)
    _potential_fn: Callable = eqx.field(static=True)
    x_probe: Array

    def __init__(self, unit: Callable, x: Array):
        if not callable(unit):
            raise TypeError(f"unit must be a numpyro model, a function unit(x) -> (P,) with sample sites, "
                            f"got {type(unit).__name__}")
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[0] < 1:
            raise ValueError(f"x must have shape (P, ...) with P >= 1, got {x.shape}")
        layout = _layout_of(unit, x)
        self.model = unit
        self.dim = layout.dim
        self.site_names = layout.site_names
        self.site_shapes = layout.site_shapes
        self._unravel = layout.unravel
        self._potential_fn = layout.potential_fn
        # Priors never depend on the data values, so the prior machinery runs on one row
        # of x: nothing of size P is ever computed per particle outside apply().
        self.x_probe = x[:1]
        self._check_prior_draws(x)

    def _check_prior_draws(self, x: Array) -> None:
        m = min(x.shape[0] - 1, 3)
        # one compiled program for the draws, their densities and outputs (not one per operation)
        thetas, logp, outs, part = eqx.filter_jit(_prior_draw_checks)(self, x, m)
        if not bool(jnp.all(jnp.isfinite(logp))):
            raise ValueError("unit model prior log-density is not finite at prior draws")
        bad = ~jnp.all(jnp.isfinite(outs), axis=1)
        if bool(jnp.any(bad)):
            raise ValueError(
                f"unit model output sigma(x; theta) is not finite at {int(bad.sum())} of "
                f"{_N_PRIOR_CHECK} prior draws (first bad draw: "
                f"{ {k: np.asarray(v) for k, v in self.constrain(thetas[int(jnp.argmax(bad))]).items()} })"
            )
        # The data are swept in chunks: sigma(x_p; theta) may depend on row x_p only.
        if m >= 1:
            if not np.allclose(part, outs[:, :m], rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(outs[:, :m])) + 1)):
                raise ValueError(
                    "unit model output for one input depends on the other inputs of the batch: "
                    "sigma(x; theta) must act row by row on x (e.g. no normalisation over rows)"
                )

    def site_indices(self) -> dict[str, np.ndarray]:
        """Flat positions of each site's coordinates: site -> integer array of the site's shape.

        The flat vector ravels the sites in sorted name order (``ravel_pytree`` of a dict),
        not trace order; this map is the way from names to columns of a particle array.
        """
        with jax.ensure_compile_time_eval():
            index = self._unravel(jnp.arange(self.dim, dtype=jnp.float32))
        return {k: np.rint(np.asarray(index[k])).astype(int) for k in self.site_names}

    def coordinate_names(self) -> list[str]:
        """A name per flat coordinate, e.g. ``["a", "w[0]", "w[1]", ...]``."""
        names = [""] * self.dim
        for site, idx in self.site_indices().items():
            if idx.ndim == 0:
                names[int(idx)] = site
                continue
            for pos in np.ndindex(idx.shape):
                names[int(idx[pos])] = f"{site}[{','.join(map(str, pos))}]"
        return names

    def constrain(self, theta: Float[Array, " d"]) -> dict[str, Array]:
        """Named constrained site values T(θ) of one flat unconstrained vector θ."""
        return constrain_fn(self.model, (self.x_probe,), {}, self._unravel(theta))

    def flatten(self, values: dict[str, Array]) -> Float[Array, " d"]:
        """Inverse of ``constrain``: flat unconstrained θ = T⁻¹(values) for one unit."""
        missing = set(self.site_names) - set(values)
        if missing:
            raise ValueError(f"flatten: missing sites {sorted(missing)}")
        z = unconstrain_fn(self.model, (self.x_probe,), {}, {k: values[k] for k in self.site_names})
        return ravel_pytree({k: z[k] for k in self.site_names})[0]

    def unflatten(self, particles: Float[Array, "n d"]) -> dict[str, Array]:
        """Named constrained values per site for an (N, D) particle array: site -> (N, *shape)."""
        particles = jnp.asarray(particles)
        if particles.ndim != 2 or particles.shape[1] != self.dim:
            raise ValueError(f"particles must have shape (N, {self.dim}), got {particles.shape}")
        return _unflatten(self, particles)

    def gaussian_prior_moments(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean (D,), covariance (D, D)) of π₀ in flat coordinates if every site is Gaussian
        (``Normal``, any batch/event shape, or a full ``MultivariateNormal``), else None.

        Gaussian sites have unbounded support, so their unconstrained coordinates are the
        sites themselves and the moments are read off the distributions (block-diagonal
        across sites, in trace order).
        """
        signature = (tuple(self.x_probe.shape), str(self.x_probe.dtype), "gaussian_prior_moments")
        try:
            known = _LAYOUTS.setdefault(self.model, {})
        except TypeError:
            known = {}
        if signature not in known:  # the model is run once per unit and shape, not per call
            known[signature] = self._gaussian_prior_moments()
        return known[signature]

    def _gaussian_prior_moments(self) -> tuple[np.ndarray, np.ndarray] | None:
        # the sites' values substituted: only the distributions are read, and no draw is made
        # (an eager draw compiles the RNG, the bulk of this function's cost)
        values = {name: np.zeros(shape) for name, shape in zip(self.site_names, self.site_shapes)}
        with jax.ensure_compile_time_eval(), handlers.block(), handlers.trace() as tr:
            handlers.substitute(self.model, data=values)(np.asarray(self.x_probe))
        means, covs = [], []
        for name, shape in zip(self.site_names, self.site_shapes):
            fn = tr[name]["fn"]
            while isinstance(fn, (dist.Independent, dist.ExpandedDistribution)):
                fn = fn.base_dist
            size = int(np.prod(shape))
            if isinstance(fn, dist.Normal):
                means.append(np.broadcast_to(np.asarray(fn.loc, np.float64), shape).reshape(-1))
                covs.append(np.diag(np.broadcast_to(np.asarray(fn.scale, np.float64) ** 2, shape).reshape(-1)))
            elif isinstance(fn, dist.MultivariateNormal) and fn.batch_shape == () and size == fn.event_shape[0]:
                means.append(np.asarray(fn.loc, np.float64))
                covs.append(np.asarray(fn.covariance_matrix, np.float64))
            else:
                return None
        cov = np.zeros((self.dim, self.dim))
        i = 0
        for c in covs:
            cov[i:i + len(c), i:i + len(c)] = c
            i += len(c)
        return np.concatenate(means), cov

    def prior_logdensity(self, theta: Float[Array, " d"]) -> Float[Array, ""]:
        """log π₀ in unconstrained coordinates, Jacobian included: −potential_fn(θ)."""
        return -self._potential_fn(self._unravel(theta))

    def prior_sample(self, key: PRNGKeyArray, n: int) -> Float[Array, "n d"]:
        """n independent draws of θ ~ π₀, in flat unconstrained coordinates, shape (n, D)."""

        return _prior_sample(self, key, int(n))

    def apply(self, theta: Float[Array, " d"], x: Array) -> Float[Array, " p"]:
        """σ(x; θ) for one unit θ and a batch of inputs x of shape (P, ...): shape (P,)."""
        values = self.constrain(theta)
        with handlers.block():
            return handlers.substitute(self.model, data=values)(x)


# compiled once per unit and shape: run eagerly, each operation would be compiled on its own
@eqx.filter_jit
def _prior_sample(unit: UnitModel, key, n: int):
    def one(k):
        with handlers.block():
            tr = handlers.trace(handlers.seed(unit.model, k)).get_trace(unit.x_probe)
        return unit.flatten({name: tr[name]["value"] for name in unit.site_names})

    return jax.vmap(one)(jax.random.split(key, n))


@eqx.filter_jit
def _unflatten(unit: UnitModel, particles):
    return jax.vmap(unit.constrain)(particles)


def load_model(path: str | pathlib.Path) -> types.ModuleType:
    """Import a model file by path, or one of the example models shipped with mfsde by name.

    ``load_model("single_neuron")`` imports ``mfsde/models/single_neuron.py`` (the examples:
    ``EXAMPLE_MODELS``; ``models/`` in a checkout is the same folder); any other argument
    is the path of a ``.py`` file. A model file defines ``unit`` (or a factory of units),
    ``make_data(key, ...)`` and default sizes; it is imported as ``mfsde_models_<stem>``.

    Examples:
        >>> import mfsde
        >>> lg = mfsde.load_model("linear_gaussian")   # a shipped example, by name (or a .py path)
        >>> callable(lg.unit), callable(lg.make_data)
        (True, True)
    """
    if isinstance(path, str) and path in EXAMPLE_MODELS:
        path = _MODELS_DIR / f"{path}.py"
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path: no model file at {path} (give the path of a .py file defining unit, or "
                                f"the name of an example model: {', '.join(EXAMPLE_MODELS)})")
    name = f"mfsde_models_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
