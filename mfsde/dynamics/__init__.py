"""Mean-field particle dynamics on diffrax; one module per SDE family over a shared core."""

from ._core import ParticleSDE, Trajectory, solve
from ._langevin import LangevinDrift, LangevinNoise, ParticleObservables, langevin

__all__ = ["ParticleSDE", "Trajectory", "solve", "langevin", "LangevinDrift", "LangevinNoise", "ParticleObservables"]
