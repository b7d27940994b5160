"""Three objectives at equal compute, the encoder-decoder side: T5-style encoder-decoders
trained by span corruption (noise density 0.15, mean span 3) under
``objectives_causal_lm.py``'s budgets, shape rule, data and optimizer. The encoder reads 64
tokens (cut from 70 raw ones), the decoder writes the 14 target tokens; tokens and FLOPs count
both."""

from isoflop.experiments.sweeps import objectives_causal_lm


def get_sweep():
  return objectives_causal_lm.common("experiments/configs/t5_tiny.py")
