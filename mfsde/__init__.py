"""mfsde: the mean-field theory of two-layer networks as a probabilistic program.

One hidden unit is a numpyro model; mfsde gives its free energy over measures on the unit's
parameters (``FreeEnergy``) and the mean-field SDEs whose laws flow to its minimiser
(``langevin``). Convention: F_β(ρ) = ½R(ρ) + β⁻¹ KL(ρ‖π₀), minimiser ρ* ∝ π₀ exp(−βΨ(·; ρ*)).
"""

from .dynamics import ParticleSDE, Trajectory, langevin
from .free_energy import FreeEnergy
from .model import UnitModel, load_model

__all__ = ["FreeEnergy", "UnitModel", "load_model", "langevin", "Trajectory", "ParticleSDE"]
__version__ = "0.1.0"
