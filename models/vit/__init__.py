"""The Vision Transformer image classifier (``model.family=vit``, Dosovitskiy et al. 2021)."""

from isoflop.models.vit.model import Vit, VitConfig

__all__ = ["Vit", "VitConfig"]
