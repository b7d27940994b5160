"""Quantization damage against data (issue 17, after Kumar et al. 2024): one decoder size on
the embedded Shakespeare bytes trained to five token budgets (5 to 80 tokens per parameter),
dense; each member is then quantized after training (PTQ int8 and int4) by
`python -m isoflop.experiments.compression_study`. The size ladder for the same question is the
S = 0 half of `sparsity_shakespeare.py`.
"""

import ml_collections


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "ladder"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.n_convention = "kaplan"
  s.flop_convention = "chinchilla"
  s.sizes = (4e4,)  # dense non-embedding parameters (the ladder's shape rounds it)
  s.tokens_per_param = (5.0, 10.0, 20.0, 40.0, 80.0)
  s.shape = ml_collections.ConfigDict({"aspect_ratio": 32.0, "head_size": 4})
  s.overrides = {"batch_size": 32, "seq_len": 64, "log_every": 25, "eval_every": 1_000_000,
                 "eval_batches": 8, "checkpoint_every": 1_000_000,
                 "data": {"source": "shakespeare", "tokenizer": "bytes"},
                 "optimizer": {"lr": 1e-2, "warmup_steps": 5, "schedule": "cosine"}}
  return s
