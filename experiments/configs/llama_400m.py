"""Llama-shaped, about 400M parameters, with grouped-query attention."""

from isoflop.experiments.configs import llama


def get_config():
  return llama.llama_config(d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8, d_ff=2816)
