"""BERT-base (Devlin et al. 2019) trained by masked LM: 109,514,298 parameters, the count of
Hugging Face's ``BertForMaskedLM`` at vocab 30,522, 12 layers, d 768, 12 heads, d_ff 3,072, 512
positions and 2 token types.

What the count includes: the token (23,440,896), position (393,216) and token-type (1,536)
tables; the embedding LayerNorm (1,536) and 12 post-norm layers of 7,087,872 each (attention
with biases, two LayerNorms, the GELU MLP); the MLM head's transform dense (590,592) and
LayerNorm (1,536) and its output bias over the vocabulary (30,522). The readout is the token
table (tied), counted once; there is no pooler (``BertForMaskedLM`` has none).
"""

from isoflop.experiments.configs import base
from isoflop.models.encoder import EncoderConfig


def get_config():
  c = base.get_config()
  c.task = "masked_lm"
  c.steps = 10_000
  c.batch_size = 256
  c.seq_len = 512
  c.log_every = 50
  c.model = base.family_model_block(
      "encoder", EncoderConfig, vocab_size=30522, d_model=768, n_layers=12, n_heads=12,
      d_ff=3072, max_len=512, type_vocab_size=2, norm="layernorm", norm_eps=1e-12, norm_position="post",
      activation="gelu_exact", use_bias=True, mlm_transform=True, tie_embeddings=True,
      readout_bias=True, dropout=0.1, dtype="bfloat16")
  c.optimizer.lr = 1e-4  # BERT's Adam lr, with 10k warmup steps over 1M
  c.optimizer.warmup_steps = 1_000
  c.optimizer.weight_decay = 0.01
  return c
