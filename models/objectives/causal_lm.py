"""Next-token prediction: cross-entropy of ``targets`` under the logits of ``inputs``.

Serves any family whose module maps tokens_BL to logits_BLV (decoder, MoE decoder, LSTM).
Metrics: ``loss`` (mean cross-entropy per target token), ``z_loss`` (PaLM's mean squared
log-partition, when its coefficient is set); held-out also ``accuracy`` (top-1 next token)
and, with ``eval_by_position``, ``loss_by_position`` (mean loss at each context position, as
Kaplan et al. 2020 plot in their figure 7).
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from isoflop.models import objectives

TOKENS = ("batch", "length")


@dataclasses.dataclass(frozen=True)
class CausalLm:
  z_loss: float = 0.0  # coefficient of mean(logsumexp(logits)^2)
  by_position: bool = False  # held-out loss at each position of the context
  name = "causal_lm"
  unit = "token"
  batch_axes = {"inputs": TOKENS, "targets": TOKENS, "positions": TOKENS,
                "segment_ids": TOKENS}
  required_keys = ("inputs", "targets")  # packed documents add segment_ids and positions

  def prepare(self, batch, rng):
    del rng
    return batch

  def model_inputs(self, batch, train):
    return (batch["inputs"],), {"positions_BL": batch.get("positions"),
                                "segment_ids_BL": batch.get("segment_ids"), "train": train}

  def terms(self, logits_BLV, batch) -> objectives.Terms:
    targets_BL = batch["targets"]
    weight = jnp.asarray(targets_BL.size, jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL).mean()
    metrics = {"loss": (ce, weight)}
    objective = ce
    if self.z_loss:
      z = jnp.mean(jax.nn.logsumexp(logits_BLV, axis=-1) ** 2)
      metrics["z_loss"] = (z, weight)
      objective = objective + self.z_loss * z
    return objectives.Terms(objective=objective, weight=weight, metrics=metrics)

  def eval_metrics(self, logits_BLV, batch):
    targets_BL = batch["targets"]
    ce_BL = optax.softmax_cross_entropy_with_integer_labels(logits_BLV, targets_BL)
    weight = jnp.asarray(targets_BL.size, jnp.float32)
    correct_BL = jnp.argmax(logits_BLV, axis=-1) == targets_BL
    metrics = {"loss": (ce_BL.mean(), weight),
               "accuracy": (correct_BL.mean(dtype=jnp.float32), weight)}
    if self.by_position:
      metrics["loss_by_position"] = (ce_BL.mean(axis=0),
                                     jnp.asarray(targets_BL.shape[0], jnp.float32))
    return metrics

  def target_weights(self, logits_BLV, batch):
    return jnp.ones(batch["targets"].shape, jnp.float32)

  def units(self, batch) -> int:
    return int(batch["targets"].shape[0] * batch["targets"].shape[1])


def from_run_config(config) -> CausalLm:
  return CausalLm(z_loss=config.loss.z_loss, by_position=bool(config.get("eval_by_position")))


objectives.register("causal_lm", from_run_config)
