"""Sweep files: each defines ``get_sweep()`` returning an ``ml_collections.ConfigDict``."""
