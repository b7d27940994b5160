"""``isoflop coordcheck``: do activations keep their size as the model gets wider?

The coordinate check of Yang et al. 2022 ("Tensor Programs V", Sec. 4 and App. D.1): train
a few steps at several widths under each parametrization and measure, on one held-back batch,
the typical coordinate of each activation, mean |x|, and of its change since initialization,
mean |x_t - x_0|. Under a parametrization that transfers, neither depends on width: the slope of
log size against log width is about 0. Under SP the output logits grow with width.

Width moves the way the sweeps' shape rule moves it: d_model = width, heads of a fixed size
(n_heads = width / head_dim), d_ff = 4 width, depth as in the config. Every member uses an
untied readout (muP needs one) and a constant learning rate from step 1 (no warmup), so step
t is t updates of the same size at every width. Every step trains on one fixed batch and the
activations are measured on that batch. The seeds train together in one compiled step, on
one device (these models are small).

The width limit is taken at a fixed batch: at finite width, the updates carry a part that is
noise across the batch's tokens and shrinks like sqrt(tokens / width), so the check uses few
tokens per batch (32 by default) and widths well above that (the measurements behind this
choice are in docs/reproductions.md, "µP").

  isoflop coordcheck --config=experiments/configs/coordcheck.py --out=runs/coordcheck
  [--widths=128,256,512,1024,2048] [--seeds=3] [--steps=5] [--base_width=128] [--head_dim=16]

Writes ``DIR/coordcheck.json`` (top-level ``sp`` and ``mup``: per activation, per step, the
slope of log size against log width, with the sizes behind it) and ``DIR/coordcheck_sp.png``,
``DIR/coordcheck_mup.png``.
"""

import os
import sys
import time
from typing import Any, Sequence

import numpy as np

from isoflop.experiments import cli

PARAMETRIZATIONS = ("sp", "mup")
FLAT = 0.1  # |slope| at or below this counts as width-independent (the criterion)


def member_config(config, parametrization: str, width: int, base_width: int, head_dim: int,
                  seeds: int, steps: int):
  """The run config of one width under one parametrization."""
  c = config.copy_and_resolve_references()
  if width % head_dim:
    raise ValueError(f"width {width} is not a multiple of head_dim={head_dim}; pick widths "
                     "that are")
  c.model.update(d_model=width, n_heads=width // head_dim, d_head=None, d_ff=None,
                 n_kv_heads=None, tie_embeddings=False, dropout=0.0,
                 parametrization=parametrization, mup_base_width=base_width)
  c.optimizer.update(schedule="constant", warmup_steps=0)
  c.update(steps=steps, ensemble=seeds, eval_every=0, microbatches=1)
  return c


def activations(intermediates) -> dict[str, Any]:
  """The sown activations of one model by name; the scanned layers' ones are split out
  (``block_0``, ``attention_logits_0``, ...)."""
  found = {"embedding": intermediates["embedding"][0]}
  stacked = {"block": intermediates["layers"]["block_output"][0],
             "attention_logits": intermediates["layers"]["attention"]["attention_logits"][0]}
  for layer in range(stacked["block"].shape[0]):
    found[f"block_{layer}"] = stacked["block"][layer]
  for layer in range(stacked["attention_logits"].shape[0]):
    found[f"attention_logits_{layer}"] = stacked["attention_logits"][layer]
  found["logits"] = intermediates["logits"][0]
  return found


def measure_width(config, devices=None) -> dict[str, np.ndarray]:
  """Trains the seeds of one member ``config.steps`` steps. Returns, per activation, arrays
  ``size`` and ``change`` of shape (steps + 1, seeds)."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from isoflop.train import build
  from isoflop.train import state as state_lib

  prepared = build.prepare(config, devices)
  model = prepared.task.model

  def forward(params, inputs):
    _, variables = model.apply({"params": params}, inputs, mutable=["intermediates"])
    return activations(variables["intermediates"])

  def stats(params, inputs, reference):
    acts = jax.vmap(forward, in_axes=(0, None))(params, inputs)
    mean_abs = lambda x: jnp.mean(jnp.abs(x).reshape(x.shape[0], -1), axis=1)  # noqa: E731
    size = {k: mean_abs(v) for k, v in acts.items()}
    change = {k: mean_abs(v - reference[k]) for k, v in acts.items()}
    return size, change, acts

  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    single = config.ensemble == 1  # the step then takes one model, without a seed axis
    keys = state_lib.seed_keys(config.seed, config.ensemble)
    state = state_lib.create_state(prepared.task, prepared.tx, prepared.batch_shapes, keys,
                                   jax.tree.map(lambda a: a.sharding, prepared.abstract_state))

    def seed_axis(params):
      return jax.tree.map(lambda a: a[None], params) if single else params

    # Every step trains on this batch, and the activations are measured on it.
    fixed = {k: jax.device_put(v, prepared.batch_shardings[k])
             for k, v in prepared.source.batch(np.arange(config.batch_size)).items()}
    probe = fixed["inputs"]
    # One compiled measurement for every step: at initialization it runs against zeros (its
    # activations become the reference) and the change is 0 by definition.
    measure = jax.jit(stats)
    zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), jax.eval_shape(
        jax.vmap(forward, in_axes=(0, None)), seed_axis(state.params), probe))
    size, _, reference = measure(seed_axis(state.params), probe, zeros)
    sizes, changes = [size], [jax.tree.map(jnp.zeros_like, size)]
    for _ in range(config.steps):
      state, _ = prepared.compiled_step(state, fixed)
      size, change, _ = measure(seed_axis(state.params), probe, reference)
      sizes.append(size)
      changes.append(change)
    if int(jnp.max(state.first_nonfinite_step)) >= 0:
      raise FloatingPointError(f"the loss became non-finite at width {config.model.d_model}; "
                               "lower --config.optimizer.lr")
  return {name: {"size": np.stack([np.asarray(s[name]) for s in sizes]),
                 "change": np.stack([np.asarray(c[name]) for c in changes])}
          for name in sizes[0]}


def log_slope(widths: Sequence[int], values: Sequence[float]) -> float | None:
  """Least-squares slope of log(value) against log(width); None where a value is 0 (e.g. every
  change at step 0), as a logarithm of 0 has no slope."""
  values = np.asarray(values, dtype=np.float64)
  if np.any(values <= 0) or not np.all(np.isfinite(values)):
    return None
  return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def summarize(widths: Sequence[int], per_width: list[dict[str, dict[str, np.ndarray]]]
              ) -> dict[str, Any]:
  """Per activation: for each step, the seed-mean size and change at each width, their
  log-log slopes against width, and the spread of the slope over seeds."""
  out = {}
  for name in per_width[0]:
    entry: dict[str, Any] = {}
    for kind in ("size", "change"):
      by_width = np.stack([w[name][kind] for w in per_width], axis=-1)  # (steps, seeds, widths)
      means = by_width.mean(axis=1)
      entry[f"{kind}_slope"] = [log_slope(widths, row) for row in means]
      per_seed = [[log_slope(widths, seed_row) for seed_row in step_rows]
                  for step_rows in by_width]
      entry[f"{kind}_slope_seed_range"] = [
          None if any(s is None for s in row) else [min(row), max(row)] for row in per_seed]
      entry[kind] = means.tolist()
    out[name] = entry
  return out


def max_abs_slope(result: dict[str, Any], activation: str | None = None) -> float:
  """The largest |slope| over activations (or one of them), steps, size and change."""
  slopes = [abs(s) for name, entry in result.items() if activation in (None, name)
            for key in ("size_slope", "change_slope") for s in entry[key] if s is not None]
  return max(slopes)


MIN_DECADES = 2.0  # every panel's y axis spans at least this, so flat lines look flat


def _panel_order(name: str) -> tuple:
  """embedding, then each layer's attention logits and block output, then the logits."""
  if name == "embedding":
    return (0, 0, 0)
  if name == "logits":
    return (2, 0, 0)
  kind, layer = name.rsplit("_", 1)
  return (1, int(layer), kind != "attention_logits")


def _span_decades(ax, values, decades: float) -> None:
  positive = np.asarray(values, dtype=float)
  positive = positive[positive > 0]
  if positive.size:
    low, high = np.log10(positive.min()), np.log10(positive.max())
    middle, half = (low + high) / 2, max(high - low, decades) / 2 * 1.05
    ax.set_ylim(10 ** (middle - half), 10 ** (middle + half))


def figure(result: dict[str, Any], widths: Sequence[int], title: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = sorted(result, key=_panel_order)
  steps = len(result[names[0]]["size"])
  fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 5.4), squeeze=False)
  colors = plt.cm.viridis(np.linspace(0, 0.9, steps))
  for column, name in enumerate(names):
    for row, kind in enumerate(("size", "change")):
      ax = axes[row, column]
      for step in range(steps):
        values = np.asarray(result[name][kind][step])
        if np.all(values > 0):
          ax.plot(widths, values, "o-", color=colors[step], markersize=3, label=f"t={step}")
      ax.set_xscale("log", base=2)
      ax.set_yscale("log")
      _span_decades(ax, result[name][kind], MIN_DECADES)
      ax.set_title(name if row == 0 else f"{name}: change", fontsize=8)
      ax.tick_params(labelsize=7)
      if row == 1:
        ax.set_xlabel("width (d_model)", fontsize=8)
  axes[0, 0].set_ylabel("mean |x|", fontsize=8)
  axes[1, 0].set_ylabel("mean |x_t - x_0|", fontsize=8)
  axes[0, 0].legend(fontsize=6)  # the embedding has every step (muP's logits lack t=0)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(f"{path}.tmp.png", dpi=110)
  plt.close(fig)
  os.replace(f"{path}.tmp.png", path)


def run(config, out_dir: str, widths: Sequence[int], seeds: int, steps: int,
        base_width: int, head_dim: int, progress: bool = True,
        devices: Sequence[Any] | None = None) -> dict[str, Any]:
  from isoflop.train import run_record

  started = time.perf_counter()
  data: dict[str, Any] = {
      "widths": list(widths), "seeds": [config.seed + i for i in range(seeds)],
      "steps": list(range(steps + 1)), "base_width": base_width, "head_dim": head_dim,
      "measure": "mean |x| over the coordinates of a held-back batch, averaged over seeds; "
                 "change = mean |x_t - x_0|; slope = d log(size) / d log(width), least squares",
      "flat_threshold": FLAT,
  }
  for parametrization in PARAMETRIZATIONS:
    per_width = []
    for width in widths:
      member = member_config(config, parametrization, width, base_width, head_dim, seeds,
                             steps)
      if progress:
        print(f"coordcheck: {parametrization} width {width}", file=sys.stderr, flush=True)
      per_width.append(measure_width(member, devices))
    data[parametrization] = summarize(widths, per_width)
  data["summary"] = {
      "mup_max_abs_slope": max_abs_slope(data["mup"]),
      "sp_max_abs_slope": max_abs_slope(data["sp"]),
      "sp_logits_size_slope": data["sp"]["logits"]["size_slope"],
      "mup_flat": max_abs_slope(data["mup"]) <= FLAT,
  }
  data["config"] = member_config(config, "mup", widths[0], base_width, head_dim, seeds,
                                 steps).to_dict()
  data["versions"] = run_record.versions()
  data["wall_time_s"] = time.perf_counter() - started
  os.makedirs(out_dir, exist_ok=True)
  for parametrization in PARAMETRIZATIONS:
    figure(data[parametrization], widths,
           f"coordinate check, {parametrization} (base width {base_width}; {seeds} seeds, mean)",
           os.path.join(out_dir, f"coordcheck_{parametrization}.png"))
  run_record.write_json_atomically(os.path.join(out_dir, "coordcheck.json"), data)
  return data


def _int_list(text: str, flag: str) -> list[int]:
  try:
    values = [int(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise cli.UsageError(f"--{flag}={text!r} must be comma-separated integers, e.g. "
                         "--widths=64,128,256") from None
  if len(values) < 2 or any(v <= 0 for v in values) or len(set(values)) != len(values):
    raise cli.UsageError(f"--{flag}={text!r} needs at least two distinct positive widths")
  return sorted(values)


def main(argv: Sequence[str]) -> int:
  from absl import flags

  def define(flag_values):
    flags.DEFINE_string("out", None, "output directory", flag_values=flag_values)
    flags.DEFINE_string("widths", "128,256,512,1024,2048", "comma-separated d_model values",
                        flag_values=flag_values)
    flags.DEFINE_integer("seeds", 3, "seeds per width", flag_values=flag_values)
    flags.DEFINE_integer("steps", 5, "training steps measured after initialization",
                         flag_values=flag_values)
    flags.DEFINE_integer("base_width", None, "muP base width (default: the smallest width)",
                         flag_values=flag_values)
    flags.DEFINE_integer("head_dim", None, "head size, fixed across widths (default: the "
                         "config's d_model / n_heads)", flag_values=flag_values)

  flag_values = cli.parse_config(argv, define)
  if not flag_values.out:
    raise cli.UsageError("missing --out; pass the output directory, e.g. --out=runs/coordcheck")
  cli.check_output(flag_values.out, "--out")
  widths = _int_list(flag_values.widths, "widths")
  for name in ("seeds", "steps"):
    if flag_values[name].value <= 0:
      raise cli.UsageError(f"--{name}={flag_values[name].value} must be a positive integer")
  config = flag_values.config
  head_dim = flag_values.head_dim or config.model.d_head or (
      config.model.d_model // config.model.n_heads)
  base_width = flag_values.base_width or widths[0]
  import jax
  try:
    data = run(config, flag_values.out, widths, flag_values.seeds, flag_values.steps,
               base_width, head_dim, devices=jax.devices()[:1])
  except ValueError as e:
    raise cli.UsageError(cli.one_line(e)) from None
  except FloatingPointError as e:
    print(f"isoflop coordcheck: error: {e}", file=sys.stderr)
    return cli.EXIT_NON_FINITE
  summary = data["summary"]
  for parametrization in PARAMETRIZATIONS:
    logits = data[parametrization]["logits"]["size_slope"]
    print(f"{parametrization}: max |slope| {max_abs_slope(data[parametrization]):.3f}; "
          f"logits size slope by step {[None if s is None else round(s, 3) for s in logits]}")
  print(f"muP flat (every |slope| <= {FLAT}): {summary['mup_flat']}; wrote "
        f"{os.path.join(flag_values.out, 'coordcheck.json')} and figures "
        f"({data['wall_time_s']:.0f} s)")
  return 0
