"""Hyperparameter search on the tiny decoder and the embedded Shakespeare corpus: Optuna's TPE
over the AdamW learning rate (a log range over three decades), 32 trials of 100 steps,
minimizing the held-out loss at the last step. The grid of the same cost is
``grid_lr_tiny_shakespeare.py`` (32 learning rates); compare them with
``python -m isoflop.experiments.search_study`` (docs/reproductions.md, "Hyperparameter
search").

  isoflop sweep --sweep=experiments/sweeps/search_tiny_shakespeare.py --workdir=runs/search \\
    --workers=2
"""

import ml_collections

# Shared with the grid: the same runs but for the learning rate.
OVERRIDES = {"steps": 100, "batch_size": 16, "seq_len": 64, "log_every": 50,
             "eval_every": 1_000_000, "eval_batches": 8, "checkpoint_every": 1_000_000,
             "optimizer": {"schedule": "cosine", "warmup_steps": 10}}
LR_LOW, LR_HIGH = 1e-4, 1e-1


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "search"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.search = ml_collections.ConfigDict()
  s.search.space = {"optimizer": {"lr": {"low": LR_LOW, "high": LR_HIGH, "log": True}}}
  s.search.trials = 32
  s.search.metric = "final_eval_loss"
  s.search.sampler = "tpe"
  s.search.seed = 0
  s.overrides = OVERRIDES
  return s
