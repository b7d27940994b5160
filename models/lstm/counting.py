"""Exact parameter counts and training FLOPs per token of the LSTM LM.

With D the embedding width, H the cell width, R the output width of each layer (d_proj, or H
without projection), I_l the input width of layer l (D for the first, R after), V the
vocabulary and L layers:

  per layer l     4 H (I_l + R) + 4 H  [+ H R with a projection]
  embedding       V D                              (the token table; no positions)
  head            R V when untied, else 0 (the tied token table reads out)
  non_embedding   the sum over layers (no final norm)
  active          = total (every parameter is used by every token)

N by convention, as for the decoder: kaplan = non_embedding, chinchilla = total, palm =
non_embedding + R V (the matmul parameters: layers and readout).

Training FLOPs per token (forward + backward = 3 x forward):
  kaplan      6 N_kaplan                       (no attention term; readout left out as Kaplan
                                                leaves it out of the Transformer's count)
  palm        6 N_palm                         (every matmul: cell kernels, projection, readout)
  chinchilla  6 N_palm + 6 V D                 (the embedding lookup as a one-hot matmul)
The cell's elementwise work (4 gate nonlinearities, c and h updates: about 10 H per step) and
the biases are left out, O(H) against O(H^2). ``measured`` (XLA's cost analysis) sees every
timestep because ``for_cost_analysis`` unrolls the time loop (XLA counts a loop body once).
"""

from isoflop.models.lstm.model import GATES, LstmConfig


def param_counts(cfg: LstmConfig, *, padded: bool = False) -> dict[str, int]:
  """Counts by group, equal to the leaves of ``LstmLm(cfg).init(...)`` with ``padded=True``."""
  vocab = cfg.padded_vocab if padded else cfg.vocab_size
  h, r = cfg.hidden_dim, cfg.output_dim
  layers = [GATES * h * (cfg.input_dim(l) + r) + GATES * h + (h * r if cfg.d_proj else 0)
            for l in range(cfg.n_layers)]
  embedding = vocab * cfg.d_model
  head = 0 if cfg.tie_embeddings else r * vocab
  non_embedding = sum(layers)
  total = embedding + non_embedding + head
  return {"embedding": embedding, "non_embedding": non_embedding, "head": head, "total": total,
          "active": total, "active_non_embedding": non_embedding, "first_layer": layers[0]}


def n_by_convention(cfg: LstmConfig) -> dict[str, int]:
  counts = param_counts(cfg)
  return {"kaplan": counts["non_embedding"], "chinchilla": counts["total"],
          "palm": counts["non_embedding"] + cfg.output_dim * cfg.vocab_size}


def flops_per_token(cfg: LstmConfig, seq_len: int) -> dict[str, float]:
  """Training FLOPs per token; an LSTM's cost does not depend on the context length."""
  del seq_len
  n = n_by_convention(cfg)
  return {"kaplan": 6.0 * n["kaplan"], "chinchilla": 6.0 * n["palm"] +
          6.0 * cfg.vocab_size * cfg.d_model, "palm": 6.0 * n["palm"]}
