"""Runs as ArviZ DataTrees: posterior draws named as the model's sites, observables over time."""

from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np
import xarray as xr

from .. import _checks
from .._trajectory import Trajectory
from ..fixed_point import FixedPoint, GibbsNormalizer, GibbsSamples
from ..free_energy import FreeEnergy
from ..particle_posterior import ParticlePosterior
from ..particles import Particles
from ._moments import LawMoments, law_scales_per_run

__all__ = ["to_inference_data", "save", "load", "result_tree", "check_tree"]


def to_inference_data(result, fe):
    """Any result of mfsde as an ArviZ DataTree, sample sites named and shaped as in the unit
    model (constrained space). Accepts:

    - a ``Trajectory`` (every dynamics family):
        - ``posterior``: the final particles as draws, one chain per replicate run (a
          single run is one chain): site -> (chain, draw = particle, *site_shape);
        - ``weights`` (a weighted state, ``Particles``): log_weight and the normalised
          weight of every particle, (chain, draw);
        - ``observables``: the saved time series (risk, free energy, KL and the W2 bound
          to the prior, ...): name -> (chain, time);
        - ``constant_data``: beta, sizes and the run's info (solver, dt0, t0, t1, ...),
          and ``diverged_at`` (per chain) for a run that diverged under jit;
          ``observed_data``: x, y.
    - a particle cloud, (N, D) array or ``Particles`` (or R clouds, (R, N, D), e.g.
      ``overdispersed_starts``): ``posterior`` (one chain per cloud) and, if weighted,
      ``weights``.
    - a ``FixedPoint`` (``sample_fixed_point``): ``posterior`` holds the MCMC draws of ρ*
      (chain, draw, *site_shape), ``sample_stats`` diverging, acceptance_rate, step_size
      and energy, ``iterations`` the relative residual, Monte Carlo error and output
      E_G[σ] of every round.
    - ``GibbsSamples`` (``sample_gibbs``): ``posterior`` and ``sample_stats`` as above.
    - a ``ParticlePosterior`` (``sample_particle_posterior``): ``posterior`` holds the
      draws of the N-particle network, site -> (chain, draw, particle, *site_shape);
      ``sample_stats`` as above plus n_steps (leapfrog steps per draw); ``observables``
      the risk R(f_N) and mean_sq_norm (1/N) Σ‖θ_i‖² of every draw, name -> (chain, draw).
    - a ``FixedPointCheck`` (``check_fixed_point``): ``posterior`` the draws of G[f_N],
      ``constant_data`` the verdict (passed, cause, reason) and its statistics.
    - a ``GibbsNormalizer`` (``gibbs_log_normalizer``): the SMC particles as a weighted
      cloud, with log_z and kl in ``constant_data``.

    Examples:
        >>> import jax, mfsde
        >>> fe = mfsde.load_model("linear_gaussian").free_energy(num_data=64, dim=2, beta=4.0)
        >>> starts = mfsde.overdispersed_starts(fe, jax.random.key(1), 2, 32)       # 2 replicates of N = 32
        >>> runs = mfsde.langevin(fe, jax.random.split(jax.random.key(2), 2), starts, t1=10.0, dt0=0.1, progress=False)
        >>> idata = mfsde.to_inference_data(runs, fe)
        >>> "posterior" in idata.children and "observables" in idata.children
        True
    """
    if not isinstance(fe, FreeEnergy):
        raise TypeError(f"fe must be the mfsde.FreeEnergy the result came from, got {type(fe).__name__}")
    return result_tree(result, fe)


@functools.singledispatch
def result_tree(result, fe):
    """The DataTree of one kind of result. A result type defined above this floor
    (``FixedPointCheck``) registers its builder where it is defined, so that the
    diagnostics import nothing from the floors above them."""
    raise TypeError(f"result: to_inference_data takes a Trajectory, a particle cloud, FixedPoint, GibbsSamples, "
                    f"ParticlePosterior, FixedPointCheck or GibbsNormalizer; got {type(result).__name__}")


def _data_dims(fe) -> dict:
    x = np.asarray(fe.x)
    return {"x": ["obs_id"] + [f"x_dim_{i}" for i in range(x.ndim - 1)], "y": ["obs_id"], "output": ["obs_id"]}


def _posterior(fe, thetas) -> dict:
    """site -> (chain, draw, *site_shape) from flat particles (chain, draw, D)."""
    c, n, d = thetas.shape
    flat = fe.unflatten(np.asarray(thetas).reshape(-1, d))
    return {k: np.asarray(v).reshape((c, n) + np.shape(v)[1:]) for k, v in flat.items()}


def _weights_group(log_weight) -> xr.DataTree:
    lw = np.asarray(log_weight, np.float64)
    w = np.exp(lw - lw.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return xr.DataTree(xr.Dataset({"log_weight": (("chain", "draw"), lw), "weight": (("chain", "draw"), w)},
                                  coords={"chain": np.arange(lw.shape[0]), "draw": np.arange(lw.shape[1])}))


def _tree(fe, posterior: dict, constant: dict, dims: dict, **groups):
    from arviz_base import from_dict

    return from_dict({"posterior": posterior, "constant_data": constant,
                      "observed_data": {"x": np.asarray(fe.x), "y": np.asarray(fe.y)}, **groups},
                     dims=dims | _data_dims(fe))


def _split_state(particles):
    """(θ (R, N, D), log_weight (R, N) or None, single run?) of a final state (N, D),
    (R, N, D) or ``Particles``."""
    theta, lw = (particles.theta, particles.log_weight) if isinstance(particles, Particles) else (particles, None)
    theta, lw = _checks.host_array(theta), None if lw is None else _checks.host_array(lw)
    single = theta.ndim == 2
    if single:
        theta, lw = theta[None], None if lw is None else lw[None]
    return theta, lw, single


def _cloud_tree(cloud, fe):
    if not isinstance(cloud, Particles):
        cloud = np.asarray(cloud)
        _checks.particle_array("result", cloud[0] if cloud.ndim == 3 else cloud, fe.dim)
        cloud = Particles(cloud)
    theta, lw, _ = _split_state(cloud)
    tree = _tree(fe, _posterior(fe, theta), {"beta": np.asarray(fe.beta), "num_particles": np.asarray(theta.shape[1])},
                 _site_dims(fe))
    if lw is not None:
        tree["weights"] = _weights_group(lw)
    return tree


def _trajectory_tree(traj, fe):
    particles, log_weight, single = _split_state(traj.particles)
    observables = {k: np.asarray(v) for k, v in traj.observables.items()}
    if single:
        observables = {k: v[None] for k, v in observables.items()}
    constant = dict(beta=np.asarray(fe.beta), num_particles=np.asarray(particles.shape[1]),
                    num_data=np.asarray(fe.num_data), dim=np.asarray(fe.dim), num_steps=np.asarray(traj.num_steps))
    for k, v in traj.run.constants().items():
        constant[k] = np.asarray("None" if v is None else v)
    diverged = np.asarray(traj.diverged_at, np.float64)
    if not np.all(np.isinf(diverged)):
        constant["diverged_at"] = diverged
    tree = _tree(fe, _posterior(fe, particles), constant, _site_dims(fe))
    if log_weight is not None:
        tree["weights"] = _weights_group(log_weight)
    ts = np.asarray(traj.ts)
    obs = xr.Dataset({k: (("chain", "time"), v) for k, v in observables.items()},
                     coords={"chain": np.arange(particles.shape[0]), "time": ts})
    tree["observables"] = xr.DataTree(obs)
    scales = _law_scales(fe, particles, observables)
    if scales:
        tree["observable_scales"] = xr.DataTree(xr.Dataset({k: ((), v) for k, v in scales.items()}))
    return tree


def _mcmc_stats(draws) -> dict:
    chains, n = np.shape(draws.acceptance)[:2]
    return {"diverging": np.asarray(draws.diverging, bool), "acceptance_rate": np.asarray(draws.acceptance),
            "energy": np.asarray(draws.energy),
            "step_size": np.broadcast_to(np.asarray(draws.step_size)[:, None], (chains, n))}


def _gibbs_tree(gs, fe):
    return _tree(fe, _posterior(fe, np.asarray(gs.samples)), {"beta": np.asarray(fe.beta)}, _site_dims(fe),
                 sample_stats=_mcmc_stats(gs))


def check_tree(check, fe):
    """``FixedPointCheck`` (registered by ``check_fixed_point``'s module): the draws of
    G[f_N] and the verdict with its statistics."""
    test = check.test
    constant = {"beta": np.asarray(fe.beta), "passed": np.asarray(bool(check.passed)), "cause": np.asarray(check.cause),
                "reason": np.asarray(check.reason), "statistic": np.asarray(test.statistic),
                "dof": np.asarray(test.dof), "p_value": np.asarray(test.p_value),
                "output_error": np.asarray(test.output_error), "output_scale": np.asarray(test.output_scale)}
    if check.stein is not None:
        constant.update(stein_temperature=np.asarray(check.stein.temperature),
                        stein_temperature_se=np.asarray(check.stein.temperature_se), stein_z=np.asarray(check.stein.z))
    return _tree(fe, _posterior(fe, np.asarray(check.samples)), constant, _site_dims(fe))


def _normalizer_tree(norm, fe):
    tree = _cloud_tree(Particles(norm.particles, np.log(np.asarray(norm.weights))), fe)
    const = tree["constant_data"].to_dataset()
    tree["constant_data"] = xr.DataTree(const.assign(log_z=norm.log_z, kl=norm.kl,
                                                     num_temperatures=norm.num_temperatures))
    return tree


def _law_scales(fe, particles, observables) -> dict[str, float]:
    """Finite-N noise level of the recorded law moments at the final particles (mean over
    runs, in the flat coordinates the moments use): what ``convergence`` compares a slow
    observable's wandering with."""
    per_run = law_scales_per_run(LawMoments.of(fe.unit), particles)
    return {k: float(np.mean(np.asarray(v))) for k, v in per_run.items() if k in observables}


def _site_dims(fe):
    return {name: [f"{name}_dim_{i}" for i in range(len(shape))]
            for name, shape in zip(fe.unit.site_names, fe.unit.site_shapes)}


def _fixed_point_tree(fp, fe):
    tree = _tree(fe, _posterior(fe, np.asarray(fp.samples)),
                 {"beta": np.asarray(fe.beta), "kernel": np.asarray(fp.kernel), "converged": np.asarray(fp.converged),
                  "output": np.asarray(fp.output)}, _site_dims(fe), sample_stats=_mcmc_stats(fp))
    it = xr.Dataset({"residual": (("iteration",), np.asarray(fp.residuals)),
                     "mc_error": (("iteration",), np.asarray(fp.mc_errors)),
                     "output": (("iteration", "obs_id"), np.asarray(fp.outputs))})
    tree["iterations"] = xr.DataTree(it)
    return tree


def _particle_posterior_tree(pp, fe):
    samples = np.asarray(pp.samples)
    chains, draws, n, d = samples.shape
    flat = fe.unflatten(samples.reshape(-1, d))
    posterior = {k: np.asarray(v).reshape((chains, draws, n) + np.shape(v)[1:]) for k, v in flat.items()}
    dims = {name: ["particle"] + dims for name, dims in _site_dims(fe).items()}
    stats = dict(_mcmc_stats(pp), n_steps=np.asarray(pp.num_integration_steps))
    thetas = pp.samples.reshape(-1, n, d)
    risk = np.asarray(jax.lax.map(fe.risk, thetas)).reshape(chains, draws)
    sq = np.asarray(jax.numpy.mean(jax.numpy.sum(thetas**2, axis=2), axis=1)).reshape(chains, draws)
    tree = _tree(fe, posterior, {"beta": np.asarray(fe.beta), "kernel": np.asarray(pp.kernel),
                                 "num_particles": np.asarray(n)}, dims, sample_stats=stats)
    obs = xr.Dataset({"risk": (("chain", "draw"), risk), "mean_sq_norm": (("chain", "draw"), sq)},
                     coords={"chain": np.arange(chains), "draw": np.arange(draws)})
    tree["observables"] = xr.DataTree(obs)
    return tree


for _cls, _build in ((Trajectory, _trajectory_tree), (FixedPoint, _fixed_point_tree), (GibbsSamples, _gibbs_tree),
                     (ParticlePosterior, _particle_posterior_tree), (GibbsNormalizer, _normalizer_tree),
                     (Particles, _cloud_tree), (np.ndarray, _cloud_tree), (jax.Array, _cloud_tree)):
    result_tree.register(_cls, _build)


def save(idata, path) -> pathlib.Path:
    """Write a DataTree to netCDF (h5netcdf); ``load`` reads it back unchanged.

    Returns the path written (``path``, a str or ``pathlib.Path``).

    Examples:
        >>> import jax, mfsde
        >>> fe = mfsde.load_model("linear_gaussian").free_energy(num_data=64, dim=2, beta=4.0)
        >>> starts = mfsde.overdispersed_starts(fe, jax.random.key(1), 2, 32)       # 2 replicates of N = 32
        >>> runs = mfsde.langevin(fe, jax.random.split(jax.random.key(2), 2), starts, t1=10.0, dt0=0.1, progress=False)
        >>> idata = mfsde.to_inference_data(runs, fe)
        >>> import tempfile, pathlib
        >>> path = mfsde.save(idata, pathlib.Path(tempfile.mkdtemp()) / "run.nc")
        >>> back = mfsde.load(path)
        >>> set(back.children) == set(idata.children)
        True
    """
    _checks.idata("idata", idata)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(path, engine="h5netcdf")
    return path


def load(path):
    """Read a DataTree written by ``save`` (fully loaded into memory, file closed).

    The groups and variables come back as they were saved (arrays bit for bit).

    Examples:
        >>> import jax, mfsde
        >>> fe = mfsde.load_model("linear_gaussian").free_energy(num_data=64, dim=2, beta=4.0)
        >>> starts = mfsde.overdispersed_starts(fe, jax.random.key(1), 2, 32)       # 2 replicates of N = 32
        >>> runs = mfsde.langevin(fe, jax.random.split(jax.random.key(2), 2), starts, t1=10.0, dt0=0.1, progress=False)
        >>> idata = mfsde.to_inference_data(runs, fe)
        >>> import tempfile, pathlib
        >>> back = mfsde.load(mfsde.save(idata, pathlib.Path(tempfile.mkdtemp()) / "run.nc"))
        >>> "posterior" in back.children
        True
    """
    if not pathlib.Path(path).is_file():
        raise FileNotFoundError(f"path: no saved DataTree at {path} (mfsde.save writes one)")
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()
