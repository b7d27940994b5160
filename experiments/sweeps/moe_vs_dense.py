"""Mixture of experts vs dense at equal compute on the embedded Shakespeare corpus: at two model
sizes (two compute budgets, the same 250 steps of 16 x 128 tokens each), a dense decoder and
routed ones with E = 4 and 8 experts, 2 per token, each expert half the dense MLP width, so
every member of a size has the same active FLOPs per token (plus the router's 2 D E). Three
seeds per member (``ensemble=3``). Compare with ``isoflop compare`` (docs/reproductions.md).
"""

import ml_collections

WIDTHS = (64, 128)


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.grid = {"model": {"num_experts": [0, 4, 8]}}
  s.zipped = {"model": {"d_model": list(WIDTHS), "n_layers": [2, 3], "n_heads": [4, 8],
                        "expert_d_ff": [2 * w for w in WIDTHS]}}
  s.overrides = {"steps": 250, "batch_size": 16, "seq_len": 128, "log_every": 50,
                 "ensemble": 3, "eval_every": 1_000_000, "eval_batches": 8,
                 "checkpoint_every": 1_000_000, "model": {"experts_per_token": 2},
                 "optimizer": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 20}}
  return s
