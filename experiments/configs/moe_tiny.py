"""The tiny decoder with a routed mixture of experts in every layer: 4 experts of half the dense
width, 2 per token, so its active feed-forward FLOPs equal the dense tiny model's (plus the
router). Trains in seconds on a CPU."""

from isoflop.experiments.configs import tiny


def get_config():
  c = tiny.get_config()
  m = c.model
  m.num_experts = 4
  m.experts_per_token = 2
  m.expert_d_ff = 2 * m.d_model  # half of the dense d_ff = 4 * d_model
  return c
