"""The coordinate check's base: the tiny decoder untied, trained by Adam at a constant rate
without clipping or weight decay, so every width takes updates of the same nominal size.
``isoflop coordcheck`` sets the width, heads and parametrization of each member."""

from isoflop.experiments.configs import tiny


def get_config():
  c = tiny.get_config()
  c.batch_size = 2  # 32 tokens: few, against widths of 128 and more (see coordcheck.py)
  c.seq_len = 16
  c.model.d_model = 64
  c.model.n_heads = 4  # heads of 16; coordcheck keeps the head size fixed as width grows
  c.model.tie_embeddings = False
  # muP's readout at zero: with the random one, muP's logits start at a size ~ width^-1/2 (they
  # vanish in the width limit by design) and the check would measure that instead of the
  # updates. ``--config.model.mup_zero_readout=False`` measures it (see the README).
  c.model.mup_zero_readout = True
  c.optimizer.name = "adam"
  c.optimizer.lr = 1e-3
  c.optimizer.schedule = "constant"
  c.optimizer.warmup_steps = 0
  c.optimizer.weight_decay = 0.0
  c.optimizer.clip_norm = 0.0
  return c
