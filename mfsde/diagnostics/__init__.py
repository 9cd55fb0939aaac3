"""Diagnostics: ArviZ conversion, KL and W2 to the prior, convergence, plots."""

from ._arviz import load, save, to_inference_data
from ._convergence import RHAT_MAX, Stationarity, Summary, stationarity, summary
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

__all__ = ["to_inference_data", "save", "load", "summary", "Summary", "stationarity", "Stationarity", "RHAT_MAX",
           "entropy_knn", "gaussian_prior_moments", "kl_to_prior", "w2", "w2_gaussian", "w2_to_prior",
           "w2_to_prior_bound", "EXACT_MAX", "plot_marginals", "plot_observables"]
