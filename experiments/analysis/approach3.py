"""Chinchilla Approach 3: L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, sec. 3.3).

Fitted as Hoffmann et al. fit it: minimize over x = (a, b, e, alpha, beta)
  sum_i Huber_delta(LSE(a - alpha ln N_i, b - beta ln D_i, e) - ln L_i),   delta = 1e-3,
with L-BFGS(-B, unbounded) from every point of the grid alpha, beta in {0, 0.5, ..., 2},
e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25} (4500 starts), keeping the best;
A = e^a, B = e^b, E = e^e. N in parameters, D in tokens, L in nats per token.
Compute-optimal frontier under C = 6 N D (C in FLOPs): N_opt(C) = G (C/6)^a and
D_opt(C) = (C/6)^b / G, with a = beta / (alpha + beta), b = alpha / (alpha + beta) and
G = (alpha A / (beta B))^(1 / (alpha + beta)).
The bootstrap resamples the points with replacement and refits each replicate.
"""

import dataclasses
import itertools

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
    return cls(np.exp(e), np.exp(a), np.exp(b), alpha, beta)

  def loss(self, n, d):
    return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

  @property
  def a(self) -> float:
    return self.beta / (self.alpha + self.beta)

  @property
  def b(self) -> float:
    return self.alpha / (self.alpha + self.beta)

  @property
  def G(self) -> float:  # noqa: N802 (Hoffmann et al.'s name)
    with np.errstate(all="ignore"):
      return float(np.power(self.alpha * self.A / (self.beta * self.B),
                            1.0 / (self.alpha + self.beta)))

  def frontier(self) -> powerlaw.Frontier:
    """N_opt(C) = G (C/6)^a and D_opt(C) = (C/6)^b / G as power laws in C (FLOPs)."""
    return powerlaw.Frontier(powerlaw.PowerLaw(self.G * 6.0 ** -self.a, self.a),
                             powerlaw.PowerLaw(6.0 ** -self.b / self.G, self.b))

  def values(self) -> dict[str, float]:
    return {"E": self.E, "A": self.A, "B": self.B, "alpha": self.alpha, "beta": self.beta,
            "a": self.a, "b": self.b, "G": self.G}


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


def search(starts: np.ndarray, args: tuple, polished: int):
  """L-BFGS from each start; returns (best x, objective at it, coarse objective per start)."""
  coarse = [_minimize(start, args, COARSE) for start in starts]
  coarse_values = np.array([r.fun if np.isfinite(r.fun) else np.inf for r in coarse])
  fine = [_minimize(coarse[i].x, args, FINE) for i in np.argsort(coarse_values)[:polished]]
  best = min(fine, key=lambda r: r.fun if np.isfinite(r.fun) else np.inf)
  return best.x, float(best.fun), coarse_values


@dataclasses.dataclass(frozen=True)
class Result:
  law: Law
  objective: float
  samples: tuple[Law, ...]
  count: int

  def frontier(self) -> powerlaw.Frontier:
    return powerlaw.with_samples(self.law.frontier(), [s.frontier() for s in self.samples])

  def to_json(self, extrapolate_to: float) -> dict:
    replicate_values = [s.values() for s in self.samples]
    result = {k: powerlaw.estimate(v, [r[k] for r in replicate_values])
              for k, v in self.law.values().items()}
    at = self.frontier().at(extrapolate_to)
    return {
        "law": ("L = E + A / N**alpha + B / D**beta; N_opt = G * (C/6)**a, "
                "D_opt = (C/6)**b / G (C = 6 N D in FLOPs)"),
        **result, "N_opt": at["N_opt"], "D_opt": at["D_opt"],
        "objective": self.objective, "huber_delta": HUBER_DELTA, "starts": len(GRID),
        "points": self.count, "bootstrap_replicates": len(self.samples),
    }


def _arrays(n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> tuple:
  features = np.stack([np.log(n), np.log(d), np.zeros(len(n))])
  return features, np.log(loss)


def fit(points: inputs.Points, bootstrap: int, seed: int) -> Result:
  """Approach 3 on the final points (N, D, loss); raises NotEnoughData when it cannot run."""
  n, d, loss = (points.table[k].to_numpy(float) for k in ("N", "D", "loss"))
  if len(n) < MIN_POINTS:
    raise inputs.NotEnoughData(f"needs >= {MIN_POINTS} points for its 5 parameters; "
                               f"found {len(n)}")
  if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
    raise inputs.NotEnoughData("needs points at >= 2 distinct N and >= 2 distinct D")
  # L-BFGS-B's tiny BLAS calls gain nothing from threads, and OpenBLAS's idle threads spin:
  # with two other busy processes on 2 cores, that slowed the grid search 24-fold.
  with threadpoolctl.threadpool_limits(1, user_api="blas"):
    best, value, coarse_values = search(GRID, _arrays(n, d, loss), POLISHED)
    replicate_starts = np.vstack([best, GRID[np.argsort(coarse_values)[:BOOTSTRAP_STARTS]]])

    def replicate(rng: np.random.Generator) -> Law:
      rows = rng.integers(0, len(n), len(n))
      x, _, _ = search(replicate_starts, _arrays(n[rows], d[rows], loss[rows]),
                       BOOTSTRAP_POLISHED)
      return Law.from_x(x)

    samples = powerlaw.bootstrap(replicate, bootstrap, seed)
  return Result(Law.from_x(best), value, tuple(samples), len(n))
