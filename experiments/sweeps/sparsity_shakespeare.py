"""Sparsity against scale (issue 17, after Frantar et al. 2023): a ladder of three decoder
sizes, each trained on two data budgets (10 and 40 tokens per parameter) on the embedded
Shakespeare bytes, crossed with four final sparsities reached by gradual pruning (Zhu & Gupta's
cubic schedule from 25% to 75% of training, hidden matrices, per layer). S = 0 is the dense
baseline. Fit with `isoflop analyze --law=sparsity --workdir=<this sweep's workdir>`, which
uses each run's non-zero non-embedding N (runs.csv's N_nonzero_kaplan).
"""

import ml_collections


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "ladder"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.n_convention = "kaplan"
  s.flop_convention = "chinchilla"
  s.sizes = (1.5e4, 4e4, 1e5)  # dense non-embedding parameters
  s.tokens_per_param = (10.0, 40.0)
  s.shape = ml_collections.ConfigDict({"aspect_ratio": 32.0, "head_size": 4})
  s.compression = {"prune": {"sparsity": [0.0, 0.5, 0.75, 0.875]}}
  s.overrides = {"batch_size": 32, "seq_len": 64, "log_every": 25, "eval_every": 1_000_000,
                 "eval_batches": 8, "checkpoint_every": 1000,
                 "data": {"source": "shakespeare", "tokenizer": "bytes"},
                 "optimizer": {"lr": 1e-2, "warmup_steps": 5, "schedule": "cosine"},
                 "prune": {"method": "gradual", "start_fraction": 0.25, "end_fraction": 0.75,
                           "every": 5}}
  return s
