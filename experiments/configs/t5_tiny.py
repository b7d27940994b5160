"""A T5-shaped toy encoder-decoder (about 0.25M parameters) pre-trained by span corruption on
the tiny config's synthetic data: trains in seconds on a CPU, the span-corruption counterpart
of ``tiny.py``. Its 64 encoder inputs are cut from 70 raw tokens (10 noise tokens in 3 spans);
its targets are 14 tokens."""

from isoflop.experiments.configs import base, tiny
from isoflop.models.encdec import EncDecConfig


def get_config():
  c = tiny.get_config()
  c.task = "span_corruption"
  # A handful of spans per sequence: 16 sentinels leave the tiny vocabulary most of its ids
  # (the synthetic stream's specials take the top ids of model.vocab_size).
  c.span_corruption.num_sentinels = 16
  c.model = base.family_model_block(
      "encdec", EncDecConfig, vocab_size=256, d_model=64, n_encoder_layers=2,
      n_decoder_layers=2, n_heads=4, d_ff=256, relative_buckets=32, relative_max_distance=128,
      init_std=0.3)
  # init_std and lr tried at this size on the Markov source (600 steps: eval loss 3.64 against
  # 4.06 at init_std=0.02, lr=3e-3; 2.49 after 2,400 steps, once span contents are learned).
  c.optimizer.lr = 1e-2
  return c
