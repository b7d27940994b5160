"""Transformer vs LSTM (after Kaplan et al. 2020, fig. 7), the Transformer side: four decoders
on the embedded Shakespeare corpus (UTF-8 bytes), every run 300 steps of 16 x 256 tokens
(1.23M tokens), one held-out evaluation at the end with the loss at each of the 256 positions.
Pair with ``kaplan_fig7_lstm.py`` and compare with ``isoflop compare`` (docs/reproductions.md).

Shapes: non-embedding parameters from 25k to 1.8M; heads of 16 (32 for the narrowest). The
learning rate (3e-3, AdamW, cosine) is the tiny config's, not tuned per size.
"""

import ml_collections

WIDTHS = (32, 64, 128, 192)


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.grid = {}
  s.zipped = {"model": {"d_model": list(WIDTHS), "n_layers": [2, 2, 3, 4],
                        "n_heads": [1, 4, 8, 12]}}
  s.overrides = {"steps": 300, "batch_size": 16, "seq_len": 256, "log_every": 50,
                 "eval_every": 1_000_000, "eval_batches": 8, "eval_by_position": True,
                 "checkpoint_every": 1_000_000,
                 "optimizer": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 20}}
  return s
