"""Convergence of a run: is the particle law stationary, judged on its slowest observable?

Risk and free energy settle long before the particle law does (the planted neuron's output
weights relax at the prior's rate 1/(β s_a²), because Ψ is linear in a). So every saved
series that moves with the law is judged (risk, F, KL, the W2 bound, and the per-site and
projected moments of ``LawMoments``), each by

- **equilibration** (Chodera 2016, "A simple method for automated equilibration detection
  in molecular simulations"): the start t₀ that maximises the effective sample size of the
  series after it. A series still relaxing has a long apparent autocorrelation while the
  transient is inside the window, so t₀ moves past the transient; if t₀ lies in the second
  half of the run, the run has not shown a stationary stretch;
- **length**: the stationary stretch must hold at least ``MIN_ESS`` effective samples
  (pooled over replicate runs), i.e. be ≳ MIN_ESS / R integrated autocorrelation times.

R-hat across replicate runs cannot see a drift that replicates share when they start from
one law; the verdict says whether the starts were overdispersed (``overdispersed_starts``).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import numpy as np

from .. import _checks
from ..particles import Particles
from ._certificate import OptimalityCertificate, optimality_certificate
from ._divergence import w2_to_prior

__all__ = ["stationarity", "equilibration", "convergence", "summary", "Summary", "Stationarity", "Convergence",
           "ObservableConvergence", "RHAT_MAX", "MIN_ESS", "MAX_BURN_IN", "LAW_BAND"]

# Replicate starts count as overdispersed above this between/within ratio (≈ 1 for starts
# drawn from one law; its maximum over 2D statistics at R = 2 stays below ~12 w.p. 0.99).
OVERDISPERSED_RATIO = 25.0


# MCMC chains agree when every site's rank-normalised R-hat is below this.
RHAT_MAX = 1.05
# Replicate runs' final clouds are compared on at most this many particles per run, and
# their R-hat against its 99% point for independent draws of that shape (rhat_threshold).
_RHAT_DRAWS = 1000
# Effective samples the stationary stretch of every observable must hold (pooled over runs).
MIN_ESS = 10.0
# Largest fraction of the run that the detected burn-in may take.
MAX_BURN_IN = 0.5
# An unresolved particle average counts as stationary when its values over the stationary
# part spread by at most this many times its finite-N noise sd(summand)/√N.
LAW_BAND = 1.5
# ... and its stationary part's halves differ by at most this many times that noise (with
# ~4 effective samples the halves of a stationary series differ by about one noise unit).
LAW_TREND = 2.5
_NUM_STARTS = 16
_MIN_WINDOW = 8


class Stationarity(NamedTuple):
    """Mean of an observable over the last quarter of the saved times vs the quarter before."""

    stationary: bool
    before: float
    last: float
    threshold: float


def _series(values, ts) -> tuple[np.ndarray, np.ndarray]:
    """(values as (chains, T), ts as (T,)), after checking they match and ts increases."""
    v = np.asarray(values, np.float64)
    v = v[None] if v.ndim == 1 else v
    ts = np.asarray(ts, np.float64)
    if ts.ndim != 1 or ts.size < 1 or not np.all(np.diff(ts) > 0):
        raise ValueError(f"ts must be increasing save times, shape (T,), got {ts.shape}")
    if v.ndim != 2 or v.shape[1] != ts.size:
        raise ValueError(f"values must have shape (T,) or (chains, T) with T = {ts.size} saves as in ts, "
                         f"got {np.shape(values)}")
    return v, ts


def stationarity(values, ts, rel_tol: float = 0.02, z: float = 3.0) -> Stationarity:
    """Is an observable flat at the end of a run?

    Compares the means over t in (t_½, t_¾] and (t_¾, t1] (t_q the q-quantile of the run's
    time span): stationary when they differ by less than ``z`` standard errors of the
    difference or by less than ``rel_tol`` relative. The standard errors use ArviZ's
    effective sample size of each window (saved values are autocorrelated in time), the
    chains of ``values`` (chains, T) as chains; a (T,) series is one chain. A quick check
    of one series; ``equilibration`` and ``convergence`` are the verdicts ``summary`` uses.

    Examples:
        >>> import numpy as np, mfsde
        >>> ts = np.linspace(0.0, 10.0, 101)
        >>> mfsde.stationarity(np.exp(-ts), ts).stationary, mfsde.stationarity(1.0 - 0.1 * ts, ts).stationary
        (True, False)
    """
    v, ts = _series(values, ts)
    _checks.positive_number("rel_tol", rel_tol)
    _checks.positive_number("z", z)
    span = ts[-1] - ts[0]
    last = v[:, ts > ts[0] + 0.75 * span]
    before = v[:, (ts > ts[0] + 0.5 * span) & (ts <= ts[0] + 0.75 * span)]
    if last.shape[1] < 4 or before.shape[1] < 4:
        return Stationarity(False, float("nan"), float("nan"), float("nan"))

    def var_of_mean(w):
        return w.var(ddof=1) / _ess(w)

    se = math.sqrt(var_of_mean(last) + var_of_mean(before))
    threshold = max(z * se, rel_tol * abs(last.mean()))
    if not math.isfinite(threshold):
        threshold = rel_tol * abs(last.mean())
    return Stationarity(bool(abs(last.mean() - before.mean()) < threshold), float(before.mean()),
                        float(last.mean()), float(threshold))


class ObservableConvergence(NamedTuple):
    """``equilibration`` of one saved series: the start of its stationary part, its
    integrated autocorrelation time (time units), effective samples, the run's length, the
    stationary sd, verdict and reason."""

    name: str
    stationary: bool
    equilibrated_at: float
    iat: float
    ess: float
    run_length: float
    stationary_sd: float
    reason: str


def diagnostic_save_indices(num_saves: int, every: int) -> np.ndarray:
    """Indices i of the saves with diagnostics: (T − 1 − i) divisible by ``every``."""
    if every < 1:
        return np.zeros(0, np.int64)
    return np.arange(num_saves - 1, -1, -every)[::-1]


def diagnostic_series(values, ts, every: int) -> tuple[np.ndarray, np.ndarray]:
    """(values, ts) at the saves that hold an observable: all of them, or for a diagnostic
    saved only at every ``every``-th save counted back from the last (NaN at the others,
    ``langevin``'s default budget) those saves."""
    values, ts = np.asarray(values), np.asarray(ts)
    if every <= 1 or ts.size < 2:
        return values, ts
    idx = diagnostic_save_indices(ts.size, every)
    others = np.setdiff1d(np.arange(ts.size), idx)
    if not np.all(np.isnan(values[..., others])):  # saved at every save (not a thinned diagnostic)
        return values, ts
    return values[..., idx], ts[idx]


def _uniform_saves(ts: np.ndarray, step: float = 0.0) -> np.ndarray:
    """Indices of the saves on the run's final equally spaced grid (ESS needs equal spacing).

    The grid is the last stretch of equal spacing, extended back through earlier saves
    that fall on it (a run continued in segments with finer saves), one save per grid
    point. "Equal" is up to ``step`` (the run's dt0: a noisy run's save times sit on its
    steps, so a save spacing that is not a multiple of dt0 alternates by one step) and
    float32 rounding.
    """
    ts = np.asarray(ts, np.float64)
    if ts.size < 3:
        return np.arange(ts.size)
    gaps = np.diff(ts)
    first = ts.size - 2
    while first > 0 and abs(gaps[first - 1] - gaps[-1]) <= step + 1e-3 * abs(gaps[-1]):
        first -= 1
    spacing = (ts[-1] - ts[first]) / (ts.size - 1 - first)
    j = (ts[-1] - ts) / spacing
    on_grid = np.flatnonzero(np.abs(j - np.rint(j)) * spacing <= 0.5 * step + 1e-3 * spacing)
    # the latest save at each grid point
    _, last = np.unique(np.rint(j[on_grid])[::-1], return_index=True)
    return np.sort(on_grid[::-1][last])


def _ess(window: np.ndarray) -> float:
    from arviz_stats import ess

    if np.ptp(window) == 0.0:
        return float(window.size)
    e = float(ess(window, method="mean"))
    return float(window.size) if not math.isfinite(e) else min(max(e, 1.0), float(window.size))


def _drift_z(part: np.ndarray, ess_part: float) -> float:
    """Difference of the two halves' means of the stationary part, in standard errors that
    use the whole part's effective sample size (steadier than each half's own)."""
    n = part.shape[1]
    a, b = part[:, : n // 2], part[:, n - n // 2:]
    var = float(np.mean(np.var(part, axis=1, ddof=1))) if n > 1 else 0.0
    per_sample = var * part.size / ess_part  # variance of one save, inflated by the IAT
    se = math.sqrt(per_sample / a.size + per_sample / b.size)
    diff = float(b.mean() - a.mean())
    return 0.0 if diff == 0.0 else (diff / se if se > 0 else math.copysign(math.inf, diff))


def _drift_threshold(ess_part: float, num_tests: int, alpha: float = 0.01) -> float:
    """Two-sided Student-t critical value at level alpha / num_tests (Bonferroni) with
    ESS/2 − 1 degrees of freedom (the standard error is itself estimated)."""
    from scipy.stats import t as student_t

    return float(student_t.isf(0.5 * alpha / max(num_tests, 1), max(0.5 * ess_part - 1.0, 1.0)))


def equilibration(values, ts, name: str = "", min_ess: float = MIN_ESS, max_burn_in: float = MAX_BURN_IN,
                  num_tests: int = 1, law_scale: float | None = None, step: float = 0.0) -> ObservableConvergence:
    """Integrated autocorrelation time and a stationary / not verdict for one saved series.

    ``values``: (chains, T) (replicate runs as chains) or (T,); ``ts``: save times, of which
    the final equally spaced stretch is used (spacing equal up to ``step``, the run's dt0:
    a noisy run saves on its steps). The first ``max_burn_in`` of the run is
    burn-in; on the rest (the stationary part, length L) n_eff = ESS (ArviZ, pooled chains)
    and IAT = L · R / n_eff (time units). Stationary when n_eff ≥ ``min_ess`` and the
    part's two halves have equal means: |z| below the Student-t critical value at level
    0.01 / ``num_tests`` (Bonferroni over the observables judged together), z the
    difference of the halves' means over its standard error from n_eff.

    A particle average whose autocorrelation is too long to resolve (n_eff < ``min_ess``)
    is still stationary at this N when it only wanders within its own finite-N noise:
    ``law_scale`` = sd(summand)/√N at the final particles (``LawMoments.scales``), and the
    sd of all its values over the stationary part (every run, so a trend or disagreeing
    runs count) is at most ``LAW_BAND`` · law_scale and its two halves' means differ by at
    most ``LAW_TREND`` · law_scale. A relaxation or a disagreement between runs larger than that noise is
    not.

    Examples:
        >>> import numpy as np, mfsde
        >>> ts = np.arange(2000.0)
        >>> ar = np.zeros(2000); noise = np.random.default_rng(0).normal(size=2000)
        >>> for i in range(1, 2000): ar[i] = 0.9 * ar[i - 1] + noise[i]
        >>> eq = mfsde.equilibration(ar, ts, name="ar1")      # AR(1): integrated autocorrelation time 19
        >>> eq.stationary, 10 < eq.iat < 60                     # (estimated from the last half)
        (True, True)
    """
    v, ts = _series(values, ts)
    _checks.positive_number("min_ess", min_ess)
    _checks.number_in("max_burn_in", max_burn_in, 0.0, 1.0)
    keep = _uniform_saves(ts, step)
    v, ts = v[:, keep], ts[keep]
    chains, t = v.shape
    length = float(ts[-1] - ts[0])
    part = ts >= ts[0] + max_burn_in * length - 1e-9 * length
    if part.sum() < _MIN_WINDOW or not np.all(np.isfinite(v)):
        why = "non-finite values" if not np.all(np.isfinite(v)) else f"only {t} equally spaced saves"
        return ObservableConvergence(name, False, float("nan"), float("nan"), 0.0, length, float("nan"),
                                     f"{name}: cannot judge ({why})")
    t0 = float(ts[part][0])
    stretch = float(ts[-1] - t0)
    w = v[:, part]
    n_eff = _ess(w)
    iat = stretch * chains / n_eff
    sd = float(np.sqrt(np.mean(np.var(w, axis=1, ddof=1))))
    z = _drift_z(w, n_eff)
    z_max = _drift_threshold(n_eff, num_tests)
    spread = float(np.std(w))
    half = w.shape[1] // 2
    trend = abs(float(w[:, w.shape[1] - half:].mean() - w[:, :half].mean()))
    within_noise = (law_scale is not None and law_scale > 0 and spread <= LAW_BAND * law_scale
                    and trend <= LAW_TREND * law_scale)
    if n_eff < min_ess and within_noise and abs(z) <= z_max:
        reason = (f"{name}: integrated autocorrelation time {iat:.3g} is too long to resolve over [{t0:.4g}, "
                  f"{ts[-1]:.4g}] ({n_eff:.3g} effective samples), but it wanders only within its finite-N noise "
                  f"(sd {spread:.3g} <= {LAW_BAND:g} x {law_scale:.3g} = sd/sqrt(N), halves differ by {trend:.3g}): "
                  f"stationary at this N")
        return ObservableConvergence(name, True, t0, float(iat), n_eff, length, sd, reason)
    if n_eff < min_ess:
        reason = (f"{name} has an integrated autocorrelation time of {iat:.3g} against the stationary part "
                  f"[{t0:.4g}, {ts[-1]:.4g}] of the run ({n_eff:.3g} effective samples over {chains} run(s) "
                  f"< {min_ess:g}): too short to show it stationary")
    elif abs(z) > z_max:
        reason = (f"{name} is still drifting over [{t0:.4g}, {ts[-1]:.4g}] (halves' means differ by {z:+.2f} "
                  f"s.e., limit {z_max:.2f}; IAT {iat:.3g})")
    else:
        reason = f"{name}: stationary over [{t0:.4g}, {ts[-1]:.4g}], IAT {iat:.3g} ({n_eff:.3g} effective samples)"
    return ObservableConvergence(name, bool(n_eff >= min_ess and abs(z) <= z_max), t0, float(iat), n_eff, length,
                                 sd, reason)


class Convergence(NamedTuple):
    """``convergence``: verdict, reason, every observable's ``equilibration``, the slowest
    one's name, the worst R-hat across replicate runs and whether their starts were
    overdispersed (None for a single run)."""

    converged: bool
    reason: str
    observables: tuple[ObservableConvergence, ...]
    slowest: str
    rhat: float
    starts_overdispersed: bool | None


def convergence(idata) -> Convergence:
    """Converged / not for a run's DataTree (``to_inference_data`` of a trajectory).

    Converged means: every saved observable (``observables`` group) passes
    ``equilibration`` — its burn-in is in the first half of the run and its stationary
    stretch holds ≥ ``MIN_ESS`` effective samples — and, with two or more replicate runs,
    every site's R-hat of the final particles across runs is within ``rhat_threshold`` (the
    99% point of the largest R-hat over the coordinates for independent draws of that size,
    from the F law of R-hat). The reason names the slowest observable (largest IAT relative to its stretch) with its IAT and
    the run's length, and says whether R-hat could see a drift the replicates share.

    Examples:
        >>> import jax, mfsde
        >>> fe = mfsde.load_model("linear_gaussian").free_energy(num_data=64, dim=2, beta=4.0)
        >>> starts = mfsde.overdispersed_starts(fe, jax.random.key(1), 2, 32)       # 2 replicates of N = 32
        >>> runs = mfsde.langevin(fe, jax.random.split(jax.random.key(2), 2), starts, t1=10.0, dt0=0.1, progress=False)
        >>> idata = mfsde.to_inference_data(runs, fe)
        >>> conv = mfsde.convergence(idata)
        >>> isinstance(conv.converged, bool), conv.slowest in [o.name for o in conv.observables]
        (True, True)
    """
    import arviz_stats

    _checks.idata("idata", idata)

    obs = idata["observables"].to_dataset() if "observables" in idata.children else None
    if obs is None:
        return Convergence(False, "no observables recorded", (), "", float("nan"), None)
    ts = obs["time"].values
    names = list(obs.data_vars)
    scales = idata["observable_scales"].to_dataset() if "observable_scales" in idata.children else {}
    const = idata["constant_data"].to_dataset() if "constant_data" in idata.children else {}
    step = float(const["dt0"].values) if "dt0" in const else 0.0
    every = int(const["diagnostics_every"].values) if "diagnostics_every" in const else 1
    series, unjudged = {}, []
    for k in names:
        v, t = diagnostic_series(obs[k].values, ts, every)
        if t.size < ts.size and t.size < 2 * _MIN_WINDOW:
            unjudged.append(f"{k} ({t.size})")
        else:
            series[k] = (v, t)
    names = list(series)
    verdicts = tuple(equilibration(v, t, name=k, num_tests=len(names), step=step,
                                   law_scale=float(scales[k].values) if k in scales else None)
                     for k, (v, t) in series.items())
    chains = int(obs.sizes["chain"])
    # the slowest: the fewest effective samples per unit of stretch, i.e. the largest IAT
    slowest = max(verdicts, key=lambda v: (not v.stationary, v.iat / max(v.run_length, 1e-300)))
    reasons, ok = [], all(v.stationary for v in verdicts)
    if ok:
        reasons.append(f"every tracked observable ({len(verdicts)}) is stationary; the slowest, {slowest.reason}")
    else:
        bad = sorted((v for v in verdicts if not v.stationary), key=lambda v: -v.iat / max(v.run_length, 1e-300))
        reasons += [v.reason for v in bad[:3]]
        if len(bad) > 3:
            reasons.append(f"and {len(bad) - 3} more not stationary ({', '.join(v.name for v in bad[3:])})")
    rhat, spread = float("nan"), None
    if chains >= 2:
        post = idata["posterior"].to_dataset()
        draws = int(post.sizes["draw"])
        keep = np.unique(np.linspace(0, draws - 1, min(draws, _RHAT_DRAWS)).astype(int))
        rh = arviz_stats.rhat(post.isel(draw=keep))
        values = np.concatenate([np.atleast_1d(np.asarray(rh[k], np.float64)).ravel() for k in rh.data_vars])
        rhat = float(np.nanmax(values))
        limit = rhat_threshold(chains, len(keep), values.size)
        spread = _start_spread(idata)
        if rhat <= limit:
            reasons.append(f"R-hat across {chains} runs <= {rhat:.4f}, within the 99% point {limit:.4f} for "
                           f"independent draws of this size")
        else:
            ok = False
            reasons.append(f"R-hat across {chains} runs reaches {rhat:.4f} > {limit:.4f} (99% point for independent "
                           f"draws of this size): the runs disagree in law")
        if spread is None:
            reasons.append("how the runs started is not recorded, so R-hat's power against a drift they share is "
                           "unknown")
        elif spread[0]:
            reasons.append(f"starts overdispersed (between/within ratio {spread[1]:.3g}), so R-hat can see a drift "
                           "the runs share")
        else:
            reasons.append(f"the runs start from one law ({spread[2]}), so R-hat across them cannot detect a drift "
                           "they share (mfsde.overdispersed_starts gives it power)")
        spread = None if spread is None else spread[0]
    else:
        reasons.append("one run: no R-hat across runs (pass a batch of keys to langevin)")
    if unjudged:
        reasons.append(f"not judged, too few diagnostic saves (the default budget of 10% of the run; "
                       f"diagnostics=True saves them every time): {', '.join(unjudged)}")
    return Convergence(bool(ok), "; ".join(reasons), verdicts, slowest.name, rhat, spread)


@functools.lru_cache(maxsize=64)
def rhat_threshold(chains: int, draws: int, dims: int, level: float = 0.01) -> float:
    """The (1 − level) quantile of max over ``dims`` coordinates of ArviZ's rank-normalised
    R-hat for ``chains`` × ``draws`` independent draws of one law.

    Rank normalisation makes independent draws Gaussian, and for Gaussian draws the split
    R-hat (m = 2·chains chains of n = draws // 2) is exactly R̂² = (n − 1)/n + F/n with
    F ~ F(m − 1, m(n − 1)), the between/within variance ratio. ArviZ's R-hat is the larger
    of the bulk and the folded statistic, 2·dims of them, taken as independent: the limit is
    the F quantile at (1 − level)^{1/(2·dims)}. It matches a direct simulation of ArviZ's
    R-hat within its Monte Carlo error (bench/README.md, "Numbers moved out of
    docstrings"); distribution-free (ranks), so it is the exact null of "replicate runs
    agree" for independent particles, and conservative for interacting ones (their cloud
    means fluctuate less) and for correlated coordinates.
    """
    from scipy.stats import f as f_dist

    m, n = 2 * int(chains), int(draws) // 2
    if m < 2 or n < 2:
        return float("inf")
    q = (1.0 - level) ** (1.0 / (2 * max(int(dims), 1)))
    return float(math.sqrt((n - 1) / n + f_dist.ppf(q, m - 1, m * (n - 1)) / n))


def _start_spread(idata) -> tuple[bool, float, str] | None:
    """(overdispersed?, ratio, description) from the starts ``langevin`` recorded, or None."""
    const = idata["constant_data"].to_dataset() if "constant_data" in idata.children else {}
    if "starts" not in const:
        return None
    if str(const["starts"].values) == "shared":
        return False, 0.0, "one shared starting cloud"
    ratio = float(const["start_dispersion"].values) if "start_dispersion" in const else float("nan")
    return bool(ratio > OVERDISPERSED_RATIO), ratio, f"between/within ratio of the starts {ratio:.3g}"


class Summary(NamedTuple):
    """``mfsde.summary``: the ArviZ table, the theory's numbers at the end of the run, a verdict."""

    table: object
    risk: float
    free_energy: float
    kl_to_prior: float
    w2_to_prior: float
    converged: bool
    reason: str
    certificate: OptimalityCertificate | None = None

    def __str__(self):
        nums = ", ".join(f"{k} = {getattr(self, k):.5g}" for k in ("risk", "free_energy", "kl_to_prior", "w2_to_prior"))
        verdict = "converged" if self.converged else "NOT converged"
        cert = "" if self.certificate is None else f"\n{self.certificate}"
        return f"{self.table}\n{nums}{cert}\n{verdict}: {self.reason}"


def summary(idata, fe=None, key=None) -> Summary:
    """ArviZ summary of the posterior (R-hat and ESS across replicate runs as chains) plus the
    final risk, free energy, KL(ρ‖π₀) and W2(ρ, π₀), and the ``convergence`` verdict.

    With ``fe`` and a PRNG ``key`` it also certifies how far the first chain's (equally
    weighted) final particles are from the minimiser: ``certificate`` is their
    ``optimality_certificate`` (F(ρ) − F(ρ*) ≤ its upper_bound; tempered SMC runs).

    W2 is the exact estimate ``w2_to_prior`` of the first chain's particles (with their
    weights, for a weighted state) when ``fe`` is given, else the recorded Gelbrich lower bound (NaN if neither is available). For an
    MCMC result (``sample_fixed_point``, ``sample_particle_posterior``) the verdict is
    R-hat < ``RHAT_MAX`` across chains.

    Examples:
        >>> import jax, mfsde
        >>> fe = mfsde.load_model("linear_gaussian").free_energy(num_data=64, dim=2, beta=4.0)
        >>> starts = mfsde.overdispersed_starts(fe, jax.random.key(1), 2, 32)       # 2 replicates of N = 32
        >>> runs = mfsde.langevin(fe, jax.random.split(jax.random.key(2), 2), starts, t1=10.0, dt0=0.1, progress=False)
        >>> idata = mfsde.to_inference_data(runs, fe)
        >>> s = mfsde.summary(idata, fe)                       # R-hat/ESS table, risk, F, KL, W2, verdict
        >>> isinstance(s.converged, bool) and s.risk > 0
        True
    """
    import arviz_stats

    _checks.idata("idata", idata)
    table = arviz_stats.summary(idata, kind="all")
    obs = idata["observables"].to_dataset() if "observables" in idata.children else None

    def last(name):
        if obs is None or name not in obs:
            return float("nan")
        return float(obs[name].isel(time=-1).mean()) if "time" in obs[name].dims else float(obs[name].mean())

    w2 = last("w2_to_prior_bound")
    cloud = None  # a run's final particles (MCMC draws repeat states: no k-NN entropy)
    const = idata["constant_data"].to_dataset() if "constant_data" in idata.children else {}
    if fe is not None and "diverged_at" not in const:
        post = idata["posterior"].to_dataset()
        sel = {d: 0 for d in ("chain", "draw") if d in post.dims and "particle" in post.dims}
        sel = {"chain": 0} if not sel else sel
        values = {k: post[k].isel(**sel).values for k in fe.unit.site_names}
        flat = jax.vmap(fe.unit.flatten)(values)
        if "weights" in idata.children and "chain" in sel:
            flat = Particles(flat, jax.numpy.asarray(idata["weights"]["log_weight"].values[0]))
        # a diverged run's particles have no W2; its verdict says why
        finite = bool(np.all(np.isfinite(np.asarray(flat.theta if hasattr(flat, "theta") else flat))))
        w2 = w2_to_prior(flat, fe) if finite else float("nan")
        cloud = flat if finite and obs is not None and "time" in obs.dims else None
    elif "diverged_at" in const:
        w2 = float("nan")  # a diverged run's last finite state is not its law; its verdict says why
    if "diverged_at" in const:
        at = np.atleast_1d(np.asarray(const["diverged_at"].values, np.float64))
        ok = False
        chains = [str(c) for c in np.flatnonzero(np.isfinite(at))]
        reason = (f"diverged: the particle state became non-finite at t = {np.nanmin(at):.6g} (chain "
                  f"{', '.join(chains)}); the observables after it are not a run's. Take a smaller step.")
    elif obs is not None and "time" in obs.dims:
        verdict = convergence(idata)
        ok, reason = verdict.converged, verdict.reason
    else:
        worst = float(np.nanmax(np.asarray(table["r_hat"], np.float64)))
        ok = worst < RHAT_MAX
        reason = (f"MCMC draws: R-hat across chains {'<=' if ok else 'reaches'} {worst:.3f} "
                  f"{'<' if ok else '>='} {RHAT_MAX}")
    cert = None
    if key is not None and fe is not None and cloud is not None and not isinstance(cloud, Particles):
        cert = optimality_certificate(fe, key, cloud)
    return Summary(table, last("risk"), last("free_energy"), last("kl_to_prior"), float(w2), ok, reason, cert)
