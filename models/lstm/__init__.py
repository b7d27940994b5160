"""The LSTM language-model family: ``from isoflop.models.lstm import LstmConfig, LstmLm``."""

from isoflop.models.lstm.model import LstmConfig, LstmLm

__all__ = ["LstmConfig", "LstmLm"]
