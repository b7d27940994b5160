"""The T5-style encoder-decoder family: ``from isoflop.models.encdec import EncDecConfig,
EncoderDecoder``."""

from isoflop.models.encdec.model import EncDecConfig, EncoderDecoder

__all__ = ["EncDecConfig", "EncoderDecoder"]
