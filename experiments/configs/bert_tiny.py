"""A two-layer BERT-shaped encoder (about 0.1M parameters) trained by masked LM on the tiny
config's data and schedule: seconds on a CPU, the masked-LM counterpart of ``tiny.py``.

The Markov source's specials (``<pad>``, ``<mask>``, ``<eos>``) take the top 3 of the 256
ids; its loss floor is not the stream's entropy rate (a masked token is predicted from both
sides), so none is printed.
"""

from isoflop.experiments.configs import base, tiny
from isoflop.models.encoder import EncoderConfig


def get_config():
  c = tiny.get_config()
  c.task = "masked_lm"
  c.model = base.family_model_block("encoder", EncoderConfig, vocab_size=256, d_model=64,
                                    n_layers=2, n_heads=4, max_len=None, type_vocab_size=2)
  return c
