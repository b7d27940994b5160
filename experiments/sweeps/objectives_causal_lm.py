"""Three objectives at equal compute (issue 15), the decoder side: an IsoFLOP sweep of
GPT-2-shaped decoders trained by next-token prediction on the embedded Shakespeare bytes.

``objectives_masked_lm.py`` (BERT-style encoders) and ``objectives_span_corruption.py``
(T5-style encoder-decoders) use the same budgets under the same (Chinchilla) FLOP convention,
the same shape rule, the same 64-token encoder inputs of the same corpus, tokenizer, optimizer
and schedule; only the objective and the family differ. Their losses are not comparable as
numbers (each predicts different tokens from different context); their exponents and
compute-optimal sizes are.
"""

import ml_collections

BUDGETS = (1e10, 3e10, 1e11, 3e11)


def common(config: str) -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.kind = "isoflop"
  s.config = config
  s.n_convention = "chinchilla"
  s.flop_convention = "chinchilla"
  s.budgets = BUDGETS
  s.sizes_per_budget = 5
  s.size_span = 10.0
  s.tokens_per_param = 100.0  # the demo's centre (measured for the decoder at this scale)
  s.shape = ml_collections.ConfigDict({"aspect_ratio": 32.0, "head_size": 4})
  s.overrides = {"batch_size": 32, "seq_len": 64, "log_every": 25, "eval_every": 1_000_000,
                 "checkpoint_every": 1000,
                 "data": {"source": "shakespeare", "tokenizer": "bytes"},
                 "optimizer": {"lr": 1e-2, "warmup_steps": 5, "schedule": "wsd"}}
  return s


def get_sweep():
  return common("experiments/configs/tiny_shakespeare.py")
