"""Next-token prediction with the decoder of ``models/transformer.py``."""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax

from isoflop.models import counting, mup, transformer


def decoder_config(config) -> transformer.TransformerConfig:
  """The model config of a run config (``config.model``, with max_len defaulting to seq_len)."""
  fields = config.model.to_dict()
  unknown = set(fields) - {f.name for f in dataclasses.fields(transformer.TransformerConfig)}
  if unknown:
    raise ValueError(f"unknown model keys {sorted(unknown)}; see models/transformer.py")
  if fields["max_len"] is None:
    fields["max_len"] = config.seq_len
  model_config = transformer.TransformerConfig(**fields)
  if model_config.positions == "learned" and config.seq_len > model_config.max_len:
    raise ValueError(f"seq_len={config.seq_len} is longer than model.max_len="
                     f"{model_config.max_len} learned positions; raise model.max_len "
                     "(which adds parameters: the model is then no longer the config's shape)")
  return model_config


@dataclasses.dataclass(frozen=True)
class CausalLmTask:
  model_config: transformer.TransformerConfig
  z_loss: float = 0.0  # coefficient of mean(logsumexp(logits)^2) (PaLM's z-loss)
  batch_keys = ("inputs", "targets")  # plus, for packed documents, segment_ids and positions

  @classmethod
  def from_config(cls, config) -> "CausalLmTask":
    model_config = decoder_config(config)
    if model_config.attention == "cudnn" and jax.default_backend() != "gpu":
      raise ValueError(f"model.attention='cudnn' needs an NVIDIA GPU (this backend is "
                       f"{jax.default_backend()}); use model.attention=xla")
    return cls(model_config, z_loss=config.loss.z_loss)

  @property
  def model(self) -> transformer.Decoder:
    return transformer.Decoder(self.model_config)

  def init_params(self, rng, batch):
    return self.model.init({"params": rng}, batch["inputs"])["params"]

  def loss(self, params, batch, rng, train):
    logits_BLV = self.model.apply({"params": params}, batch["inputs"], train=train,
                                  positions_BL=batch.get("positions"),
                                  segment_ids_BL=batch.get("segment_ids"), rngs={"dropout": rng})
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, batch["targets"])
    ce = ce_BL.mean()
    metrics = {"loss": ce}
    objective = ce
    if self.z_loss:
      z = jnp.mean(jax.nn.logsumexp(logits_BLV, axis=-1) ** 2)
      metrics["z_loss"] = z
      objective = objective + self.z_loss * z
    return objective, metrics

  def lr_multipliers(self, optimizer: str, roles):
    """A tree like the parameters of muP's learning-rate multipliers (from each parameter's
    role, ``models/param_roles.py``); None under SP (the plain optimizer)."""
    if self.model_config.parametrization == "sp":
      return None
    return mup.lr_multipliers(self.model_config, roles, optimizer)

  def tokens(self, batch) -> int:
    return int(batch["targets"].shape[0] * batch["targets"].shape[1])

  def describe(self, batch) -> dict[str, Any]:
    seq_len = int(batch["inputs"].shape[1])
    return {
        "param_counts": counting.param_counts(self.model_config),
        "param_counts_padded": counting.param_counts(self.model_config, padded=True),
        "n_params": counting.n_by_convention(self.model_config),
        "flops_per_token": counting.flops_per_token(self.model_config, seq_len),
    }

  def for_cost_analysis(self, *, remat: bool) -> "CausalLmTask":
    """Layers unrolled (XLA's cost analysis counts a loop body once); ``remat=False`` also
    turns rematerialization off, for model FLOPs."""
    changes = {"scan_unroll": self.model_config.n_layers}
    if not remat:
      changes["remat"] = "none"
    return dataclasses.replace(self, model_config=dataclasses.replace(self.model_config,
                                                                      **changes))
