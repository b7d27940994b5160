"""A GPT-2-shaped toy (about 0.12M parameters) that trains in seconds on a CPU."""

from isoflop.experiments.configs import base


def get_config():
  c = base.get_config()
  c.steps = 600
  c.batch_size = 16
  c.seq_len = 64
  c.log_every = 20
  c.model.vocab_size = 256
  c.model.d_model = 64
  c.model.n_layers = 2
  c.model.n_heads = 4
  c.optimizer.lr = 3e-3
  c.optimizer.warmup_steps = 20
  return c
