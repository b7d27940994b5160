"""Transformer vs LSTM (after Kaplan et al. 2020, fig. 7), the LSTM side: four two-layer LSTMs
on the same data, tokens and evaluation as ``kaplan_fig7_decoder.py``.

Widths 48-320 give non-embedding parameters from 37k to 1.6M, the decoders' range. The
learning rate (1e-2) and embedding init (0.3) are ``lstm_tiny``'s, tuned at width 64 on the
Markov source, not per size.
"""

import ml_collections

WIDTHS = (48, 96, 192, 320)


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/lstm_tiny.py"
  s.grid = {}
  s.zipped = {"model": {"d_model": list(WIDTHS)}}
  s.overrides = {"steps": 300, "batch_size": 16, "seq_len": 256, "log_every": 50,
                 "eval_every": 1_000_000, "eval_batches": 8, "eval_by_position": True,
                 "checkpoint_every": 1_000_000,
                 "data": {"source": "shakespeare", "tokenizer": "bytes"},
                 "optimizer": {"schedule": "cosine", "warmup_steps": 20}}
  return s
