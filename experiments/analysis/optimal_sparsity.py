"""The sparsity a fitted sparsity law calls optimal, against training length (Frantar et al.
2023's question: does the optimal sparsity grow as models are trained longer?).

  python -m isoflop.experiments.analysis.optimal_sparsity --fit=<fit.json> --n=<N> \\
      --lengths=1,10,100 [--out=<file.json>]

For a model of N non-zero parameters (the fit's N unit) and a training compute C, a sparse run
of sparsity S trains a dense-shaped model of N / (1 - S) parameters (the zeros are multiplied:
C = 6 N D / (1 - S), as in our step and, approximately, in the paper), so it sees
D = (1 - S) C / (6 N). Each entry of ``--lengths`` is C expressed as D_dense = C / (6 N), the
data (in the fit's D unit) a dense model of N would see; S_opt minimizes the fitted
L(S, N, (1 - S) D_dense) over S in [0, 0.99].
"""

import json
import os
import sys
from typing import Sequence

import numpy as np

from isoflop.experiments.analysis import sparsity_law

PROG = "python -m isoflop.experiments.analysis.optimal_sparsity"
GRID = np.linspace(0.0, 0.99, 991)


def optimal(coefficients: dict, n: float, d_dense: float) -> tuple[float, float]:
  """(S_opt, its predicted loss) at N non-zero and dense-equivalent data ``d_dense``."""
  losses = np.array([sparsity_law.predict_loss(coefficients, s, n, (1 - s) * d_dense)
                     for s in GRID])
  best = int(np.argmin(losses))
  return float(GRID[best]), float(losses[best])


def main(argv: Sequence[str]) -> int:
  from absl import flags
  flag_values = flags.FlagValues()
  define = dict(flag_values=flag_values)
  flags.DEFINE_string("fit", None, "fit.json of `isoflop analyze --law=sparsity`", **define)
  flags.DEFINE_float("n", None, "non-zero parameters, in the fit's N unit", **define)
  flags.DEFINE_list("lengths", ["1", "10", "100"], "dense-equivalent data C/(6N), in the "
                    "fit's D unit", **define)
  flags.DEFINE_string("out", None, "optional JSON of the results", **define)
  try:
    flag_values(list(argv))
    if not flag_values.fit or flag_values.n is None or flag_values.n <= 0:
      raise ValueError("pass --fit=<fit.json> and a positive --n")
    with open(flag_values.fit, encoding="utf-8") as f:
      fitted = json.load(f)
    coefficients = {k: v["value"] for k, v in fitted["coefficients"].items()}
    lengths = [float(x) for x in flag_values.lengths]
    if any(x <= 0 for x in lengths):
      raise ValueError("--lengths must be positive")
  except (flags.Error, ValueError, OSError, KeyError) as e:
    print(f"{PROG}: error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  rows = []
  for d_dense in lengths:
    s_opt, loss = optimal(coefficients, flag_values.n, d_dense)
    rows.append({"N": flag_values.n, "D_dense": d_dense, "S_opt": s_opt, "loss": loss})
    print(f"N = {flag_values.n:g}, D_dense = {d_dense:g}: S_opt = {s_opt:.3f} "
          f"(predicted loss {loss:.4f})")
  if flag_values.out:
    os.makedirs(os.path.dirname(os.path.abspath(flag_values.out)), exist_ok=True)
    with open(flag_values.out, "w", encoding="utf-8") as f:
      json.dump({"fit": flag_values.fit, "points": rows}, f, indent=1)
    print(f"wrote {flag_values.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
