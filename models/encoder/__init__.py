"""The bidirectional encoder with a masked-LM head (``model.family=encoder``, BERT-style)."""

from isoflop.models.encoder.model import Encoder, EncoderConfig

__all__ = ["Encoder", "EncoderConfig"]
