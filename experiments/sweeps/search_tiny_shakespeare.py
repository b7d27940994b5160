"""Hyperparameter search on the tiny decoder and the embedded Shakespeare corpus: Optuna's TPE
over the AdamW learning rate (log range), warmup and beta2, 16 trials of 200 steps, minimizing
the held-out loss at the last step. Compare with the grid of the same cost in
``search_grid_tiny_shakespeare.py``; docs/reproductions.md, "Hyperparameter search".

  isoflop sweep --sweep=experiments/sweeps/search_tiny_shakespeare.py --workdir=runs/search \
    --workers=2
"""

import ml_collections


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "search"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.search = ml_collections.ConfigDict()
  s.search.space = {"optimizer": {"lr": {"low": 1e-4, "high": 3e-1, "log": True},
                                  "warmup_steps": {"low": 0, "high": 50, "int": True},
                                  "b2": {"low": 0.9, "high": 0.999}}}
  s.search.trials = 16
  s.search.metric = "final_eval_loss"
  s.search.sampler = "tpe"
  s.search.seed = 0
  # eval_every beyond the run: one held-out evaluation at the last step.
  s.overrides = {"steps": 200, "batch_size": 16, "seq_len": 64, "log_every": 50,
                 "eval_every": 1_000_000, "eval_batches": 8, "checkpoint_every": 1_000_000,
                 "optimizer": {"schedule": "cosine"}}
  return s
