"""Learning rate x width under SP and muP on the embedded Shakespeare corpus: does the best
learning rate stay put as the model gets wider? Analyse with
``isoflop transfer --workdir=<sweep dir> --out=<dir>``.

Widths 64-256 with heads of 16 (n_heads moves with d_model), 2 layers, untied readout in
both parametrizations so they differ only in muP itself; muP's base width is 64, so at
d_model=64 the two are the same model (with heads of a fixed size, muP's attention scale
sqrt(16)/16 equals SP's). AdamW at 7 learning rates a factor 2 apart (2^-11 to 2^-5), each run 200 steps
of 16 x 64 bytes (205k tokens) with a cosine schedule: 42 runs, about 15 minutes on 2 CPU cores
(add 512 to WIDTHS for 14 more runs and about 25 minutes more).
"""

import ml_collections

WIDTHS = (64, 128, 256)
HEAD_SIZE = 16


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.grid = {"model": {"parametrization": ["sp", "mup"]},
            "optimizer": {"lr": [2.0 ** -e for e in range(11, 4, -1)]}}
  s.zipped = {"model": {"d_model": list(WIDTHS),
                        "n_heads": [w // HEAD_SIZE for w in WIDTHS]}}
  # eval_every beyond the run: one held-out evaluation at the last step, what the figure shows.
  s.overrides = {"steps": 200, "batch_size": 16, "seq_len": 64, "log_every": 50,
                 "eval_every": 1_000_000, "eval_batches": 8, "checkpoint_every": 1_000_000,
                 "model": {"tie_embeddings": False, "mup_base_width": 64},
                 "optimizer": {"name": "adamw", "schedule": "cosine", "warmup_steps": 20}}
  return s
