"""mfsde: the mean-field theory of two-layer networks as a probabilistic program.

One hidden unit is a numpyro model; mfsde gives its free energy over measures on the unit's
parameters (``FreeEnergy``), the mean-field SDEs whose laws flow to its minimiser
(``langevin`` and the other families, all on one driver; a weighted measure is a
``Particles``) and diagnostics (``to_inference_data``, ``summary``, ``kl_to_prior``,
``w2_to_prior``, ``w2``). Convention: F_β(ρ) = ½R(ρ) + β⁻¹ KL(ρ‖π₀), minimiser
ρ* ∝ π₀ exp(−βΨ(·; ρ*)).
"""

from ._cache import enable_compilation_cache, new_programs
from ._version import __version__  # noqa: F401 (re-exported)
from .diagnostics import (
    OptimalityCertificate,
    entropy_knn,
    kl_to_prior,
    load,
    optimality_certificate,
    plot_marginals,
    plot_observables,
    save,
    convergence,
    equilibration,
    stationarity,
    summary,
    to_inference_data,
    w2,
    w2_gaussian,
    w2_to_prior,
    w2_to_prior_bound,
)
from .dynamics import (
    DivergenceError,
    GibbsFlow,
    LeimkuhlerMatthews,
    ParticleSDE,
    Trajectory,
    ValueFunction,
    langevin,
    max_curvature,
    mckean_vlasov,
    overdispersed_starts,
    schrodinger_bridge,
    sgd,
    shard_particles,
    value_function,
    wfr,
)
from .fixed_point import FixedPoint, GibbsNormalizer, gibbs_log_normalizer, sample_fixed_point, sample_gibbs
from .particle_posterior import ParticlePosterior, particle_logdensity, sample_particle_posterior, stein_residual
from ._validation import (CurvatureDefect, FixedPointCheck, SelfConsistency, SteinTest, check_fixed_point,
                          curvature_defect, self_consistency, stein_test)
from .free_energy import FreeEnergy
from .model import UnitModel, load_model
from .particles import Particles
from ._trajectory import Run
from ._transport import CaffarelliBound, TransportMap, caffarelli_bound, potential_curvature, transport_map

enable_compilation_cache()

__all__ = ["enable_compilation_cache", "new_programs", "sample_fixed_point", "check_fixed_point", "curvature_defect", "CurvatureDefect", "self_consistency", "SelfConsistency", "stein_test", "SteinTest", "sample_gibbs",
           "gibbs_log_normalizer", "FixedPoint", "FixedPointCheck", "GibbsNormalizer", "sample_particle_posterior",
           "ParticlePosterior", "particle_logdensity", "stein_residual", "FreeEnergy", "Particles", "UnitModel", "load_model", "langevin", "LeimkuhlerMatthews",
           "overdispersed_starts", "max_curvature", "sgd", "shard_particles", "mckean_vlasov", "schrodinger_bridge", "wfr", "Trajectory", "Run", "DivergenceError",
           "ParticleSDE", "to_inference_data", "summary", "convergence", "equilibration", "stationarity", "kl_to_prior", "entropy_knn", "w2", "w2_gaussian", "w2_to_prior",
           "w2_to_prior_bound", "save", "load", "plot_marginals", "plot_observables",
           "transport_map", "TransportMap", "caffarelli_bound", "CaffarelliBound", "potential_curvature",
           "value_function", "ValueFunction", "GibbsFlow", "optimality_certificate", "OptimalityCertificate"]
