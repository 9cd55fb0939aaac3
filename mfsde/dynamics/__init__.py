"""Mean-field particle dynamics on diffrax; one module per SDE family over a shared core."""

from ._core import DivergenceError, ParticleSDE, Run, Trajectory, drive, solve
from ._langevin import LangevinDrift, LangevinNoise, ParticleObservables, langevin
from ._sgd import SGDObservables, SGDStep, sgd
from ._sharding import particle_sharding, shard_particles
from ._solver import LeimkuhlerMatthews
from ._stability import max_curvature
from ._starts import overdispersed_starts
from ._wfr import Penalty, WFRObservables, WFRStep, birth_death_events, kde_logdensity, silverman_bandwidth, wfr
from ._tzen_raginsky import BridgeDrift, GreedyDrift, gaussian_prior, mckean_vlasov, schrodinger_bridge, time_grid

__all__ = ["DivergenceError", "ParticleSDE", "Run", "Trajectory", "solve", "drive", "SGDStep", "SGDObservables", "langevin", "LangevinDrift", "LangevinNoise", "ParticleObservables",
           "LeimkuhlerMatthews", "overdispersed_starts", "max_curvature", "sgd", "mckean_vlasov", "schrodinger_bridge", "gaussian_prior", "time_grid", "GreedyDrift", "BridgeDrift",
           "shard_particles", "particle_sharding", "wfr", "WFRStep", "WFRObservables", "Penalty", "birth_death_events", "kde_logdensity", "silverman_bandwidth"]
