"""Diagnostics: ArviZ conversion, KL and W2 to the prior, convergence, plots."""

from ._arviz import load, save, to_inference_data
from ._certificate import OptimalityCertificate, optimality_certificate
from ._convergence import (
    MAX_BURN_IN,
    MIN_ESS,
    RHAT_MAX,
    Convergence,
    ObservableConvergence,
    Stationarity,
    Summary,
    convergence,
    equilibration,
    stationarity,
    summary,
)
from ._moments import LawMoments
from ._divergence import (
    EXACT_MAX,
    entropy_knn,
    gaussian_prior_moments,
    kl_to_prior,
    w2,
    w2_gaussian,
    w2_to_prior,
    w2_to_prior_bound,
)
from ._plots import plot_marginals, plot_observables

__all__ = ["to_inference_data", "save", "load", "summary", "Summary", "stationarity", "Stationarity", "RHAT_MAX", "MIN_ESS",
           "MAX_BURN_IN", "convergence", "Convergence", "equilibration", "ObservableConvergence", "LawMoments",
           "entropy_knn", "gaussian_prior_moments", "kl_to_prior", "w2", "w2_gaussian", "w2_to_prior",
           "w2_to_prior_bound", "EXACT_MAX", "plot_marginals", "plot_observables", "optimality_certificate",
           "OptimalityCertificate"]
