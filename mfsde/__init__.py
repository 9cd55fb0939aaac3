"""mfsde: the mean-field theory of two-layer networks as a probabilistic program.

One hidden unit is a numpyro model; mfsde gives its free energy over measures on the unit's
parameters (``FreeEnergy``), the mean-field SDEs whose laws flow to its minimiser
(``langevin``) and diagnostics (``to_inference_data``, ``summary``, ``kl_to_prior``,
``w2_to_prior``, ``w2``). Convention: F_β(ρ) = ½R(ρ) + β⁻¹ KL(ρ‖π₀), minimiser
ρ* ∝ π₀ exp(−βΨ(·; ρ*)).
"""

from .diagnostics import (
    entropy_knn,
    kl_to_prior,
    load,
    plot_marginals,
    plot_observables,
    save,
    stationarity,
    summary,
    to_inference_data,
    w2,
    w2_gaussian,
    w2_to_prior,
    w2_to_prior_bound,
)
from .dynamics import ParticleSDE, Trajectory, langevin, mckean_vlasov, schrodinger_bridge, sgd
from .fixed_point import (
    FixedPoint,
    FixedPointCheck,
    GibbsNormalizer,
    check_fixed_point,
    gibbs_log_normalizer,
    sample_fixed_point,
    sample_gibbs,
)
from .free_energy import FreeEnergy
from .model import UnitModel, load_model

__all__ = ["sample_fixed_point", "check_fixed_point", "sample_gibbs", "gibbs_log_normalizer", "FixedPoint",
           "FixedPointCheck", "GibbsNormalizer", "FreeEnergy", "UnitModel", "load_model", "langevin", "sgd", "mckean_vlasov", "schrodinger_bridge", "Trajectory", "ParticleSDE", "to_inference_data",
           "summary", "stationarity", "kl_to_prior", "entropy_knn", "w2", "w2_gaussian", "w2_to_prior",
           "w2_to_prior_bound", "save", "load", "plot_marginals", "plot_observables"]
__version__ = "0.1.0"
