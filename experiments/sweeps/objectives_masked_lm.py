"""Three objectives at equal compute, the encoder side: BERT-style encoders trained by masked
LM (15% of tokens selected; 80/10/10) under ``objectives_causal_lm.py``'s budgets, shape rule,
data and optimizer. Pre-norm like the decoder (BERT itself is post-norm), so that the
objective, not the block, is what differs; GELU, LayerNorm, learned positions, tied readout,
plus BERT's MLM head and token types."""

from isoflop.experiments.sweeps import objectives_causal_lm


def get_sweep():
  s = objectives_causal_lm.common("experiments/configs/bert_tiny.py")
  s.overrides["model"] = {"norm_position": "pre", "activation": "gelu"}
  # Centred on smaller models than the decoder's: at 100 tokens per parameter the largest
  # budget's losses rose with N from its smallest size on (no minimum inside the sizes, run on
  # 2026-12-02); masked LM learns from 15% of the tokens it reads, so its optimum has more
  # tokens per parameter.
  s.tokens_per_param = 300.0
  return s
