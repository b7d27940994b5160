"""Llama-shaped, about 1B parameters, with grouped-query attention (4 query heads per kv)."""

from isoflop.experiments.configs import llama


def get_config():
  return llama.llama_config(d_model=2048, n_layers=20, n_heads=16, n_kv_heads=4, d_ff=5632)
