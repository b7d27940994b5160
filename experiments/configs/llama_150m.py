"""Llama-shaped, about 150M parameters (148M; 99M non-embedding)."""

from isoflop.experiments.configs import llama


def get_config():
  return llama.llama_config(d_model=768, n_layers=14, n_heads=12, n_kv_heads=12, d_ff=2048)
