"""Converts Frantar et al. (2023)'s published T5 and ViT results into S, N, D, loss CSVs.

  python experiments/data/convert_frantar2023.py [REFERENCE_DIR]

REFERENCE_DIR (default ../shared/reference from the repository root) holds the authors' files
as published in google-research/jaxpruner. N is in millions of non-zero parameters and D in the
units the authors fit in (1e5 steps for T5, 1e9 examples for ViT), so the coefficients come out
on their scale.
"""

import json
import os
import sys

import pandas as pd

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_REFERENCE = os.path.join(HERE, "..", "..", "..", "shared", "reference")
# Dense reference counts of the authors' base models (layers * 12 * width^2).
T5_BASE = 24 * 12 * 768 ** 2
VIT_BASE = 12 * 12 * 768 ** 2


def _snd(sparsity, n_dense, d, loss) -> pd.DataFrame:
  return pd.DataFrame({"S": sparsity, "N": n_dense * (1.0 - sparsity) / 1e6, "D": d,
                       "loss": loss})


def t5(reference: str) -> pd.DataFrame:
  frame = pd.read_csv(os.path.join(reference, "sparsity_t5_frantar2023.csv"), index_col=0)
  return _snd(frame["sparsity"], T5_BASE * frame["scale"], frame["steps"] / 1e5,
              frame["val-loss"])


def vit(reference: str) -> pd.DataFrame:
  with open(os.path.join(reference, "sparsity_vit_frantar2023.json"), encoding="utf-8") as f:
    frame = pd.DataFrame(json.load(f))
  frame = frame.loc[sorted(frame.index, key=int)]  # the authors' row order
  return _snd(frame["sparsity"], VIT_BASE * frame["scale"], frame["total_examples"] / 1e9,
              frame["val-loss"])


def main(argv) -> int:
  reference = argv[1] if len(argv) > 1 else DEFAULT_REFERENCE
  for name, convert in (("t5", t5), ("vit", vit)):
    path = os.path.join(HERE, f"sparsity_{name}_frantar2023_SND.csv")
    convert(reference).to_csv(path, index=False, float_format="%.10g")
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
