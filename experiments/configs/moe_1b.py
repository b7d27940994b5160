"""A Llama-shaped mixture of experts for accelerators: about 1.0B parameters in all, 0.19B
active per token (983.6M total, 190.9M active; 934.4M / 141.7M without embeddings).

12 layers of width 768, every MLP routed to 2 of 16 SwiGLU experts of width 2048 (the dense
llama_150m's d_ff, granularity 1), capacity factor 1.25. Expert parallelism: set
``--config.mesh.expert`` to a divisor of 16 (``mesh.data`` takes the rest).

Memory (``isoflop train --dry_run`` on 8 CPU devices, mesh.expert=8, 8 sequences of 2,048 per
device, XLA attention): 85.8 GiB per device as configured, 10.1 GiB with
``--config.model.remat=full``; it compiles, and has not yet run on an accelerator."""

from isoflop.experiments.configs import llama


def get_config():
  c = llama.llama_config(d_model=768, n_layers=12, n_heads=12, n_kv_heads=12, d_ff=2048)
  m = c.model
  m.num_experts = 16
  m.experts_per_token = 2
  m.expert_d_ff = 2048
  m.capacity_factor = 1.25
  return c
