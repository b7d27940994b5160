"""The tiny model on the embedded Shakespeare corpus (UTF-8 bytes), with held-out evaluation:
what ``make demo`` trains."""

from isoflop.experiments.configs import tiny


def get_config():
  c = tiny.get_config()
  c.data.source = "shakespeare"
  c.data.tokenizer = "bytes"
  c.eval_every = 100
  return c
