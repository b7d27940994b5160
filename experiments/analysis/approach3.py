"""Chinchilla Approach 3: L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, sec. 3.3).

Fitted as Hoffmann et al. fit it: minimize over x = (a, b, e, alpha, beta)
  sum_i Huber_delta(LSE(a - alpha ln N_i, b - beta ln D_i, e) - ln L_i),   delta = 1e-3,
with L-BFGS(-B, unbounded) from every point of the grid alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (4500 starts), keeping the best;
A = e^a, B = e^b, E = e^e. N in parameters, D in tokens (each run's own), L in nats per token.
The compute-optimal frontier uses the points' own FLOPs per token, not 6 N: F(N) = kappa N^phi
fitted by least squares of ln(C/D) on ln N (C in FLOPs under the input's convention), so that
C = kappa N^phi D (see `Optimum`; with kappa = 6, phi = 1 it is Hoffmann et al.'s frontier).
The bootstrap resamples the points with replacement and refits the law and F on each.
"""

import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import multiprocessing
import os

import numpy as np
import scipy.optimize
import scipy.special
import threadpoolctl  # a dependency of scikit-learn, hence of isoflop

from isoflop.experiments.analysis import inputs
from isoflop.experiments.analysis import powerlaw

HUBER_DELTA = 1e-3
MIN_POINTS = 6  # more points than the 5 parameters
GRID = np.array(list(itertools.product(
    np.arange(0.0, 26.0, 5.0),  # a
    np.arange(0.0, 26.0, 5.0),  # b
    np.arange(-1.0, 1.01, 0.5),  # e
    np.arange(0.0, 2.01, 0.5),  # alpha
    np.arange(0.0, 2.01, 0.5))))  # beta
# Every start first runs until a step improves the objective by < 1e-7 (L-BFGS-B's ftol; the
# objective is ~1e-3 near the optimum): enough to rank the basins. The POLISHED best are then
# run to convergence. This finds the same optimum as running all 4500 starts to convergence
# (checked on Epoch's data) in a few seconds instead of a minute.
COARSE = {"ftol": 1e-7}
FINE = {"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10_000}
POLISHED = 10
# Bootstrap replicates start only from the full fit's optimum and the grid starts that ended
# best in the full fit (not from all 4500), to keep 200+ replicates to seconds. On Epoch's
# data, 20 of 20 replicates reached the same optimum as from the full grid.
BOOTSTRAP_STARTS = 4
BOOTSTRAP_POLISHED = 2


@dataclasses.dataclass(frozen=True)
class Law:
  """L(N, D) = E + A / N^alpha + B / D^beta, in nats per token."""
  E: float
  A: float
  B: float
  alpha: float
  beta: float

  @classmethod
  def from_x(cls, x: np.ndarray) -> "Law":
    a, b, e, alpha, beta = (float(v) for v in x)
    with np.errstate(over="ignore"):  # a wild bootstrap replicate may overflow to inf
      return cls(np.exp(e), np.exp(a), np.exp(b), alpha, beta)

  def loss(self, n, d):
    return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

  def values(self) -> dict[str, float]:
    return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta}


SIX_N = powerlaw.PowerLaw(6.0, 1.0)  # C = 6 N D, Kaplan's and Hoffmann's approximation


@dataclasses.dataclass(frozen=True)
class Optimum:
  """The compute-optimal N and D of `law` when a token costs F(N) = kappa N^phi FLOPs.

  At compute C, D = C / (kappa N^phi), so L = E + A N^-alpha + B (C/kappa)^-beta N^(phi beta).
  Its derivative in ln N vanishes where alpha A N^-alpha = phi beta B (C/kappa)^-beta
  N^(phi beta) (a minimum: both terms are convex in ln N), which gives
    N_opt = G (C/kappa)^a,  a = beta / (alpha + phi beta),
    G = (alpha A / (phi beta B))^(1 / (alpha + phi beta)),
    D_opt = C / (kappa N_opt^phi) = G^-phi (C/kappa)^b,  b = 1 - phi a.
  With kappa = 6, phi = 1: Hoffmann et al.'s a = beta / (alpha + beta), b = alpha / (alpha + beta).
  """
  law: Law
  flops_per_token: powerlaw.PowerLaw = SIX_N  # kappa * N**phi, FLOPs per token against N

  @property
  def kappa(self) -> float:
    return self.flops_per_token.coefficient

  @property
  def phi(self) -> float:
    return self.flops_per_token.exponent

  @property
  def a(self) -> float:
    law = self.law
    return law.beta / (law.alpha + self.phi * law.beta)

  @property
  def b(self) -> float:
    return 1.0 - self.phi * self.a

  @property
  def G(self) -> float:  # noqa: N802 (Hoffmann et al.'s name)
    law = self.law
    with np.errstate(all="ignore"):
      return float(np.power(law.alpha * law.A / (self.phi * law.beta * law.B),
                            1.0 / (law.alpha + self.phi * law.beta)))

  def frontier(self) -> powerlaw.Frontier:
    """N_opt(C) = G (C/kappa)^a and D_opt(C) = G^-phi (C/kappa)^b as power laws in C."""
    # numpy powers: a degenerate fit (A or B = 0, so G = 0) gives inf, flagged downstream,
    # where Python's float power would raise.
    g, kappa = np.float64(self.G), np.float64(self.kappa)
    with np.errstate(all="ignore"):
      return powerlaw.Frontier(
          powerlaw.PowerLaw(float(g * np.power(kappa, -self.a)), self.a),
          powerlaw.PowerLaw(float(np.power(g, -self.phi) * np.power(kappa, -self.b)), self.b))

  def values(self) -> dict[str, float]:
    return {**self.law.values(), "kappa": self.kappa, "phi": self.phi, "a": self.a,
            "b": self.b, "G": self.G}


def fit_flops_per_token(n: np.ndarray, d: np.ndarray, c: np.ndarray) -> powerlaw.PowerLaw:
  """F(N) = kappa N^phi: least squares of ln(C/D) on ln N (exactly 6 N when C = 6 N D)."""
  return powerlaw.fit(n, c / d)


def objective(x: np.ndarray, features: np.ndarray, log_loss: np.ndarray):
  """Hoffmann's Huber objective and its gradient in x = (a, b, e, alpha, beta).

  `features` is [ln N; ln D; 0] (3 x points); the terms of the LSE are x[:3] - slopes * features.
  """
  slopes = np.array([x[3], x[4], 0.0])
  with np.errstate(over="ignore", invalid="ignore"):
    terms = x[:3, None] - slopes[:, None] * features
    log_pred = np.logaddexp.reduce(terms, axis=0)
    residual = log_pred - log_loss
    # d Huber / d residual, spread over the LSE terms by their softmax weights.
    weighted = np.exp(terms - log_pred) * np.clip(residual, -HUBER_DELTA, HUBER_DELTA)
    grad_intercepts = weighted.sum(axis=1)
    grad_slopes = -np.einsum("ij,ij->i", weighted[:2], features[:2])
  value = scipy.special.huber(HUBER_DELTA, residual).sum()
  return value, np.concatenate([grad_intercepts, grad_slopes])


def _minimize(start: np.ndarray, args: tuple, options: dict) -> scipy.optimize.OptimizeResult:
  return scipy.optimize.minimize(objective, start, args=args, jac=True, method="L-BFGS-B",
                                 options=options)


def _coarse_fits(starts: np.ndarray, args: tuple) -> list[tuple[np.ndarray, float]]:
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    return [(r.x, r.fun) for r in (_minimize(start, args, COARSE) for start in starts)]


def search(starts: np.ndarray, args: tuple, polished: int, pool=None):
  """L-BFGS from each start; returns (best x, objective at it, coarse objective per start).
  With a process ``pool`` the coarse fits are shared among its workers (same results)."""
  if pool is None:
    coarse = _coarse_fits(starts, args)
  else:
    chunks = np.array_split(starts, 32)
    coarse = [fit for part in pool.map(_coarse_fits, chunks, [args] * len(chunks))
              for fit in part]
  coarse_values = np.array([fun if np.isfinite(fun) else np.inf for _, fun in coarse])
  fine = [_minimize(coarse[i][0], args, FINE) for i in np.argsort(coarse_values)[:polished]]
  best = min(fine, key=lambda r: r.fun if np.isfinite(r.fun) else np.inf)
  return best.x, float(best.fun), coarse_values


def _replicate(rows: np.ndarray, n, d, c, loss, starts) -> "Optimum | None":
  """One bootstrap refit on the resampled ``rows``; None when it cannot be fitted."""
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    try:
      x, _, _ = search(starts, _arrays(n[rows], d[rows], loss[rows]), BOOTSTRAP_POLISHED)
      return Optimum(Law.from_x(x), fit_flops_per_token(n[rows], d[rows], c[rows]))
    except inputs.NotEnoughData:
      return None


def _workers() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not on Linux
    return os.cpu_count() or 1


@contextlib.contextmanager
def _process_pool():
  """Processes for the fits' independent L-BFGS runs (most of ``isoflop analyze``'s time),
  one per core; none on one core. ``forkserver`` starts them from a clean interpreter, safe
  whatever threads this process runs."""
  workers = _workers()
  if workers < 2 or os.environ.get("ISOFLOP_ANALYSIS_PROCESSES") == "1":
    yield None
    return
  context = multiprocessing.get_context(
      "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
  with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
    yield pool


@dataclasses.dataclass(frozen=True)
class Result:
  optimum: Optimum  # the fitted law and FLOPs per token
  objective: float
  samples: tuple[Optimum, ...]
  count: int

  @property
  def law(self) -> Law:
    return self.optimum.law

  def frontier(self) -> powerlaw.Frontier:
    return powerlaw.with_samples(self.optimum.frontier(), [s.frontier() for s in self.samples])

  def to_json(self, extrapolate_to: float) -> dict:
    replicate_values = [s.values() for s in self.samples]
    result = {k: powerlaw.estimate(v, [r[k] for r in replicate_values],
                                   exponent=k in powerlaw.EXPONENTS)
              for k, v in self.optimum.values().items()}
    at = self.frontier().at(extrapolate_to)
    return {
        "law": ("L = E + A / N**alpha + B / D**beta; C = kappa * N**phi * D (FLOPs per token "
                "fitted to the points' C/D); N_opt = G * (C/kappa)**a, D_opt = C / (kappa * "
                "N_opt**phi) = G**-phi * (C/kappa)**b; a = beta / (alpha + phi*beta), "
                "b = 1 - phi*a, G = (alpha*A / (phi*beta*B))**(1 / (alpha + phi*beta))"),
        **result, "N_opt": at["N_opt"], "D_opt": at["D_opt"],
        "objective": self.objective, "huber_delta": HUBER_DELTA, "starts": len(GRID),
        "points": self.count, "bootstrap_replicates": len(self.samples),
    }


def _arrays(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> tuple:
  features = np.stack([np.log(n), np.log(d), np.zeros(len(n))])
  return features, np.log(loss)


def fit(points: inputs.Points, bootstrap: int, seed: int) -> Result:
  """Approach 3 on the final points (N, D, C, loss); raises NotEnoughData when it cannot run."""
  n, d, c, loss = (points.table[k].to_numpy(float) for k in ("N", "D", "C", "loss"))
  if len(n) < MIN_POINTS:
    raise inputs.NotEnoughData(f"needs >= {MIN_POINTS} points for its 5 parameters; "
                               f"found {len(n)}")
  if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
    raise inputs.NotEnoughData("needs points at >= 2 distinct N and >= 2 distinct D")
  # L-BFGS-B's tiny BLAS calls gain nothing from threads, and OpenBLAS's idle threads spin:
  # with two other busy processes on 2 cores, that slowed the grid search 24-fold.
  with threadpoolctl.threadpool_limits(1, user_api="blas"), _process_pool() as pool:
    best, value, coarse_values = search(GRID, _arrays(n, d, loss), POLISHED, pool)
    replicate_starts = np.vstack([best, GRID[np.argsort(coarse_values)[:BOOTSTRAP_STARTS]]])
    # The resamples drawn in order from one generator, as powerlaw.bootstrap draws them, then
    # refitted in any order: the same samples with or without the pool.
    rng = np.random.default_rng(seed)
    resamples = [rng.integers(0, len(n), len(n)) for _ in range(bootstrap)]
    refit = functools.partial(_replicate, n=n, d=d, c=c, loss=loss, starts=replicate_starts)
    fitted = pool.map(refit, resamples, chunksize=8) if pool else map(refit, resamples)
    samples = [sample for sample in fitted if sample is not None]
  optimum = Optimum(Law.from_x(best), fit_flops_per_token(n, d, c))
  return Result(optimum, value, tuple(samples), len(n))
