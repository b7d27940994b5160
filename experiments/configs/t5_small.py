"""T5-small's shape (Raffel et al. 2020; Hugging Face ``t5-small``) pre-trained by span
corruption in T5's layout: 568 raw tokens become 512 encoder inputs and 114 targets.

60,506,624 parameters, as ``T5ForConditionalGeneration`` with tied embeddings counts them: the
shared token table 16,449,536 (32,128 x 512), the encoder 18,881,280 (6 layers of 3,146,752,
its relative bias table 32 x 8 and final norm) and the decoder 25,175,808 (6 layers of
4,195,840, with cross-attention, its table and final norm). ReLU MLP, relative attention
(32 buckets, max distance 128), RMSNorm (eps 1e-6), no biases, unscaled attention (T5 folds
1/sqrt(d_kv) into the query's initialization), readout tied and scaled by d_model**-0.5.

With a tokenizer (e.g. ``data.source=tfds:c4 data.tokenizer=sentencepiece
data.vocab_size=32000``) the vocabulary becomes the tokenizer's plus the 101 special tokens
(<pad> and the sentinels), 32,101, padded to a multiple of 128: T5's own 32,128 rows.
"""

from isoflop.experiments.configs import base
from isoflop.models.encdec import EncDecConfig


def get_config():
  c = base.get_config()
  c.task = "span_corruption"
  c.steps = 5000
  c.batch_size = 128  # T5: 128 sequences of 512 tokens a step
  c.seq_len = 512
  c.log_every = 50
  c.span_corruption.target_len = 114  # what 512 inputs need at noise 0.15, spans of 3
  c.model = base.family_model_block(
      "encdec", EncDecConfig, vocab_size=32128, vocab_pad_multiple=128, d_model=512,
      d_head=64, n_heads=8, d_ff=2048, n_encoder_layers=6, n_decoder_layers=6,
      activation="relu", positions="relative", relative_buckets=32,
      relative_max_distance=128, norm="rmsnorm", norm_eps=1e-6, use_bias=False,
      tie_embeddings=True, attention_scale=1.0,
      # T5.1.1 pre-trains without dropout (a quality win it reports); fine-tuning adds 0.1.
      dropout=0.0, init_std=0.02, dtype="bfloat16")
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_steps = 500
  return c
