"""Mean-field particle dynamics on diffrax; one module per SDE family over a shared driver."""

from ._core import DivergenceError, ParticleSDE, Run, Trajectory, drive, solve
from ._langevin import LangevinDrift, LangevinNoise, LangevinOptions, ParticleObservables, langevin
from ._sgd import SGDObservables, SGDOptions, SGDStep, sgd
from ._sharding import particle_sharding, shard_particles
from ._solver import LeimkuhlerMatthews
from ._stability import max_curvature
from ._starts import overdispersed_starts
from ._wfr import (Penalty, WFRObservables, WFROptions, WFRState, WFRStep, birth_death_events, kde_logdensity,
                   silverman_bandwidth, wfr)
from ._tzen_raginsky import (BridgeDrift, BridgeOptions, ControlledState, GibbsFlow, GreedyDrift, ValueFunction,
                             gaussian_prior, mckean_vlasov, schrodinger_bridge, time_grid, value_function)

__all__ = [
    # the driver and what it takes and returns
    "drive", "solve", "ParticleSDE", "Run", "Trajectory", "DivergenceError", "LeimkuhlerMatthews",
    "shard_particles", "particle_sharding", "overdispersed_starts", "max_curvature",
    # the families: each its run, its terms, its state and its typed options
    "langevin", "LangevinDrift", "LangevinNoise", "LangevinOptions", "ParticleObservables",
    "sgd", "SGDStep", "SGDObservables", "SGDOptions",
    "wfr", "WFRStep", "WFRObservables", "WFRState", "WFROptions", "Penalty", "birth_death_events", "kde_logdensity",
    "silverman_bandwidth",
    "mckean_vlasov", "schrodinger_bridge", "GreedyDrift", "BridgeDrift", "ControlledState", "BridgeOptions",
    "value_function", "ValueFunction", "GibbsFlow", "gaussian_prior", "time_grid",
]
