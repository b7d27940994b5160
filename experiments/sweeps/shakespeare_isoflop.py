"""The demo's IsoFLOP sweep: 3 compute budgets x 5 model sizes on the embedded Shakespeare
corpus (UTF-8 bytes), small enough for a 2-core CPU in a few minutes."""

import ml_collections


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "isoflop"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.n_convention = "chinchilla"  # N counts embeddings (Hoffmann et al.)
  s.flop_convention = "chinchilla"  # budgets are met under this FLOP count
  s.budgets = (1e10, 3e10, 1e11)
  s.sizes_per_budget = 5
  s.size_span = 10.0  # the sizes span a decade around the expected optimum
  # Centres the sizes on N* = sqrt(C / (6 * 100)). Chinchilla's 20 tokens per parameter puts
  # N* above the optimum at this byte-level, sub-100k-parameter scale (measured here).
  s.tokens_per_param = 100.0
  # Shape rule (experiments/shapes.py): heads of 4, depth = max(1, round(d_model / 32)).
  s.shape = ml_collections.ConfigDict({"aspect_ratio": 32.0, "head_size": 4})
  # Config overrides for every member, nested as in the config.
  # eval_every beyond the run: one held-out evaluation, at the last step, for the fits.
  s.overrides = {"batch_size": 32, "seq_len": 64, "log_every": 25, "eval_every": 1_000_000,
                 "checkpoint_every": 1000,
                 "optimizer": {"lr": 1e-2, "warmup_steps": 5, "schedule": "wsd"}}
  return s
