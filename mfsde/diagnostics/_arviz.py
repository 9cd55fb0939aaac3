"""Runs as ArviZ DataTrees: posterior draws named as the model's sites, observables over time."""

from __future__ import annotations

import pathlib

import numpy as np
import xarray as xr

__all__ = ["to_inference_data", "save", "load"]


def to_inference_data(traj, fe):
    """A ``Trajectory``, a ``FixedPoint`` (``sample_fixed_point``) or a ``ParticlePosterior``
    (``sample_particle_posterior``) as an ArviZ DataTree.

    For a FixedPoint: ``posterior`` holds the MCMC draws of ρ* (chain, draw, *site_shape),
    ``sample_stats`` diverging, acceptance_rate, step_size and energy, ``iterations`` the
    relative residual, Monte Carlo error and output E_G[σ] of every round.

    For a ParticlePosterior: ``posterior`` holds the draws of the N-particle network,
    site -> (chain, draw, particle, *site_shape); ``sample_stats`` as above plus
    n_steps (leapfrog steps per draw); ``observables`` the risk R(f_N) and mean_sq_norm
    (1/N) Σ‖θ_i‖² of every draw, name -> (chain, draw).

    Groups:
      - ``posterior``: the final particles as draws, one chain per replicate run (a single
        run is one chain), each sample site named and shaped as in the unit model, in
        constrained space: site -> (chain, draw = particle, *site_shape);
      - ``observables``: the saved time series (risk, free energy, KL and the W2 bound to
        the prior, ...): name -> (chain, time);
      - ``constant_data``: beta, sizes, solver, dt0, t0, t1; ``observed_data``: x, y.
    """
    from arviz_base import from_dict

    from ..fixed_point import FixedPoint
    from ..particle_posterior import ParticlePosterior

    if isinstance(traj, FixedPoint):
        return _fixed_point_tree(traj, fe)
    if isinstance(traj, ParticlePosterior):
        return _particle_posterior_tree(traj, fe)
    particles = np.asarray(traj.particles)
    if particles.ndim == 2:
        particles = particles[None]
        observables = {k: np.asarray(v)[None] for k, v in traj.observables.items()}
    else:
        observables = {k: np.asarray(v) for k, v in traj.observables.items()}
    posterior = {}
    for name in fe.unit.site_names:
        posterior[name] = np.stack([np.asarray(fe.unflatten(p)[name]) for p in particles])
    dims = _site_dims(fe)
    info = dict(traj.info)
    constant = dict(beta=np.asarray(fe.beta), num_particles=np.asarray(particles.shape[1]),
                    num_data=np.asarray(fe.num_data), dim=np.asarray(fe.dim), num_steps=np.asarray(traj.num_steps))
    for k, v in info.items():
        constant[k] = np.asarray(v)
    x = np.asarray(fe.x)
    tree = from_dict(
        {"posterior": posterior, "constant_data": constant,
         "observed_data": {"x": x, "y": np.asarray(fe.y)}},
        dims=dims | {"x": ["obs_id"] + [f"x_dim_{i}" for i in range(x.ndim - 1)], "y": ["obs_id"]},
    )
    ts = np.asarray(traj.ts)
    obs = xr.Dataset({k: (("chain", "time"), v) for k, v in observables.items()},
                     coords={"chain": np.arange(particles.shape[0]), "time": ts})
    tree["observables"] = xr.DataTree(obs)
    scales = _law_scales(fe, particles, observables)
    if scales:
        tree["observable_scales"] = xr.DataTree(xr.Dataset({k: ((), v) for k, v in scales.items()}))
    return tree


def _law_scales(fe, particles, observables) -> dict[str, float]:
    """Finite-N noise level of the recorded law moments at the final particles (mean over
    runs, in the flat coordinates the moments use): what ``convergence`` compares a slow
    observable's wandering with."""
    from ._moments import LawMoments, law_scales_per_run

    per_run = law_scales_per_run(LawMoments.of(fe.unit), particles)
    return {k: float(np.mean(np.asarray(v))) for k, v in per_run.items() if k in observables}


def _site_dims(fe):
    return {name: [f"{name}_dim_{i}" for i in range(len(shape))]
            for name, shape in zip(fe.unit.site_names, fe.unit.site_shapes)}


def _fixed_point_tree(fp, fe):
    from arviz_base import from_dict

    samples = np.asarray(fp.samples)
    chains, draws = samples.shape[:2]
    flat = fe.unflatten(samples.reshape(-1, fe.dim))
    posterior = {k: np.asarray(v).reshape((chains, draws) + np.shape(v)[1:]) for k, v in flat.items()}
    stats = {"diverging": np.asarray(fp.diverging, bool), "acceptance_rate": np.asarray(fp.acceptance),
             "energy": np.asarray(fp.energy),
             "step_size": np.broadcast_to(np.asarray(fp.step_size)[:, None], (chains, draws))}
    x = np.asarray(fe.x)
    tree = from_dict(
        {"posterior": posterior, "sample_stats": stats,
         "constant_data": {"beta": np.asarray(fe.beta), "kernel": np.asarray(fp.kernel),
                           "converged": np.asarray(fp.converged), "output": np.asarray(fp.output)},
         "observed_data": {"x": x, "y": np.asarray(fe.y)}},
        dims=_site_dims(fe) | {"x": ["obs_id"] + [f"x_dim_{i}" for i in range(x.ndim - 1)], "y": ["obs_id"],
                               "output": ["obs_id"]},
    )
    it = xr.Dataset({"residual": (("iteration",), np.asarray(fp.residuals)),
                     "mc_error": (("iteration",), np.asarray(fp.mc_errors)),
                     "output": (("iteration", "obs_id"), np.asarray(fp.outputs))})
    tree["iterations"] = xr.DataTree(it)
    return tree


def _particle_posterior_tree(pp, fe):
    import jax
    from arviz_base import from_dict

    samples = np.asarray(pp.samples)
    chains, draws, n, d = samples.shape
    flat = fe.unflatten(samples.reshape(-1, d))
    posterior = {k: np.asarray(v).reshape((chains, draws, n) + np.shape(v)[1:]) for k, v in flat.items()}
    dims = {name: ["particle"] + dims for name, dims in _site_dims(fe).items()}
    stats = {"diverging": np.asarray(pp.diverging, bool), "acceptance_rate": np.asarray(pp.acceptance),
             "energy": np.asarray(pp.energy), "n_steps": np.asarray(pp.num_integration_steps),
             "step_size": np.broadcast_to(np.asarray(pp.step_size)[:, None], (chains, draws))}
    thetas = pp.samples.reshape(-1, n, d)
    risk = np.asarray(jax.lax.map(fe.risk, thetas)).reshape(chains, draws)
    sq = np.asarray(jax.numpy.mean(jax.numpy.sum(thetas**2, axis=2), axis=1)).reshape(chains, draws)
    x = np.asarray(fe.x)
    tree = from_dict(
        {"posterior": posterior, "sample_stats": stats,
         "constant_data": {"beta": np.asarray(fe.beta), "kernel": np.asarray(pp.kernel),
                           "num_particles": np.asarray(n)},
         "observed_data": {"x": x, "y": np.asarray(fe.y)}},
        dims=dims | {"x": ["obs_id"] + [f"x_dim_{i}" for i in range(x.ndim - 1)], "y": ["obs_id"]},
    )
    obs = xr.Dataset({"risk": (("chain", "draw"), risk), "mean_sq_norm": (("chain", "draw"), sq)},
                     coords={"chain": np.arange(chains), "draw": np.arange(draws)})
    tree["observables"] = xr.DataTree(obs)
    return tree


def save(idata, path) -> pathlib.Path:
    """Write a DataTree to netCDF (h5netcdf); ``load`` reads it back unchanged."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    idata.to_netcdf(path, engine="h5netcdf")
    return path


def load(path):
    """Read a DataTree written by ``save`` (fully loaded into memory, file closed)."""
    with xr.open_datatree(path, engine="h5netcdf") as tree:
        return tree.load()
