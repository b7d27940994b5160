"""Derived sizes shared by the Transformer families' configs (decoder, encoder,
encoder-decoder): a mixin for frozen config dataclasses with the fields ``vocab_size``,
``vocab_pad_multiple``, ``d_model``, ``n_heads``, ``d_head``, ``d_ff`` and, where grouped-query
attention exists, ``n_kv_heads``."""

from isoflop.models import vocab


class TransformerDims:

  @property
  def padded_vocab(self) -> int:
    """Rows of the token table and columns of the readout: vocab_size rounded up to a multiple
    of vocab_pad_multiple, so tensor parallelism can split them and matmuls stay aligned.
    The padded logits are masked out: no token is ever predicted there."""
    return vocab.padded_size(self.vocab_size, self.vocab_pad_multiple)

  @property
  def kv_heads(self) -> int:
    n_kv_heads = getattr(self, "n_kv_heads", None)
    return self.n_heads if n_kv_heads is None else n_kv_heads

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads if self.d_head is None else self.d_head

  @property
  def ff_dim(self) -> int:
    return 4 * self.d_model if self.d_ff is None else self.d_ff
