"""Config files: each defines ``get_config()`` returning an ``ml_collections.ConfigDict``."""
