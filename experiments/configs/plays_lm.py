"""The tiny decoder as a causal LM on the training scenes of the 38 plays
(``data.source=shakespeare_plays``: the held-out scenes of the play classifier are never read):
the pretraining run that ``plays_tiny.py`` fine-tunes from, with ``init_from``."""

from isoflop.experiments.configs import tiny


def get_config():
  c = tiny.get_config()
  c.data.source = "shakespeare_plays"
  c.data.eval_fraction = 0.15  # about 3 scenes of each play held out (the classifier's too)
  c.steps = 300
  c.batch_size = 32
  c.seq_len = 64
  c.eval_every = 100
  return c
