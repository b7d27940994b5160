"""T5's span corruption (Raffel et al. 2020, sec. 3.1.4): the encoder reads a window with spans
of it dropped, each replaced by one sentinel; the decoder writes the dropped spans back, each
after its sentinel.

A window of R raw tokens has num_noise = clip(round(R noise_density), 1, R - 1) noise tokens in
num_spans = max(1, round(num_noise / mean_span_length)) spans, so (as T5's
``random_spans_helper``)
  inputs   R - num_noise kept tokens + num_spans sentinels + EOS
  targets  num_noise noise tokens + num_spans sentinels + EOS.
R is the largest window whose inputs fit ``seq_len`` (T5: 568 raw tokens give 512 inputs and
114 targets), so the layout is the same for every example and every row's inputs and targets
have the same lengths; the rest is ``<pad>``. The noise mask is T5's ``random_spans_noise_mask``:
the noise tokens and the kept tokens are each cut into num_spans non-empty parts at uniformly
random places, and the parts alternate, kept first. ``decoder_inputs`` are the targets shifted
right with ``<pad>`` as the start token (T5's). Sentinel i is ``<extra_id_i>``; the data
pipeline gives every special token an id after the tokenizer's own and passes the tokenizer's
end-of-document id as ``<eos>``.

The loss is the cross-entropy over real target tokens (``target_weights``), weighted by their
count; held-out also their top-1 accuracy. Examples are made on the host from raw windows
(``make_examples``), with one NumPy generator per example from the pipeline, so the spans of a
step depend only on the run seed and the example's index.
"""

import dataclasses

import numpy as np

from isoflop.models import objectives

TOKENS = ("batch", "length")
PAD, EOS = "<pad>", "<eos>"


def sentinel(i: int) -> str:
  return f"<extra_id_{i}>"


@dataclasses.dataclass(frozen=True)
class SpanCorruption:
  noise_density: float = 0.15
  mean_span_length: float = 3.0
  num_sentinels: int = 100
  seq_len: int = 512  # encoder tokens per example
  target_len: int | None = None  # decoder tokens; None: exactly what the layout needs
  name = "span_corruption"
  unit = "token"
  batch_axes = {"inputs": TOKENS, "input_mask": TOKENS, "decoder_inputs": TOKENS,
                "targets": TOKENS, "target_weights": TOKENS}
  required_keys = ("inputs", "input_mask", "decoder_inputs", "targets", "target_weights")

  def __post_init__(self):
    if not 0.0 < self.noise_density < 1.0:
      raise ValueError(f"span_corruption.noise_density={self.noise_density} must be in (0, 1) "
                       "(T5: 0.15)")
    if self.mean_span_length < 1:
      raise ValueError(f"span_corruption.mean_span_length={self.mean_span_length} must be at "
                       "least 1 token (T5: 3)")
    if self.num_sentinels < 1:
      raise ValueError(f"span_corruption.num_sentinels={self.num_sentinels} must be positive "
                       "(T5: 100)")
    raw = self.window_length(self.seq_len)
    noise, spans = self.layout(raw)
    if spans > raw - noise:
      raise ValueError(
          f"noise_density={self.noise_density} with mean_span_length={self.mean_span_length} "
          f"makes {spans} noise spans but leaves only {raw - noise} kept tokens to separate "
          f"them in a {raw}-token window; lower span_corruption.noise_density or raise "
          "span_corruption.mean_span_length")
    if spans > self.num_sentinels:
      raise ValueError(
          f"seq_len={self.seq_len} makes {spans} noise spans per sequence, more than "
          f"span_corruption.num_sentinels={self.num_sentinels}; raise num_sentinels to at "
          f"least {spans} (or lower noise_density or seq_len)")
    needed = self.targets_length(raw)
    if self.target_len is None:
      object.__setattr__(self, "target_len", needed)
    elif self.target_len < needed:
      raise ValueError(
          f"span_corruption.target_len={self.target_len} is shorter than the {needed} target "
          f"tokens the layout of seq_len={self.seq_len} needs; set it to at least {needed} "
          "or leave it None (exactly what the layout needs)")

  @property
  def special_tokens(self) -> tuple[str, ...]:
    return (PAD,) + tuple(sentinel(i) for i in range(self.num_sentinels))

  def layout(self, raw_len: int) -> tuple[int, int]:
    """(noise tokens, noise spans) of a window of raw_len tokens (round half to even, as
    T5's tf.round)."""
    noise = min(max(round(raw_len * self.noise_density), 1), raw_len - 1)
    return noise, max(1, round(noise / self.mean_span_length))

  def inputs_length(self, raw_len: int) -> int:
    noise, spans = self.layout(raw_len)
    return raw_len - noise + spans + 1

  def targets_length(self, raw_len: int) -> int:
    noise, spans = self.layout(raw_len)
    return noise + spans + 1

  def window_length(self, seq_len: int) -> int:
    """The largest R whose inputs fit seq_len (inputs_length never decreases with R)."""
    if seq_len < self.inputs_length(2):
      raise ValueError(f"seq_len={seq_len} is too short for span corruption: the smallest "
                       f"layout (2 raw tokens) needs {self.inputs_length(2)} input tokens; "
                       "raise seq_len")
    low, high = 2, int(seq_len / (1.0 - self.noise_density)) + 2  # inputs_length(high) > seq_len
    while high - low > 1:
      mid = (low + high) // 2
      low, high = (mid, high) if self.inputs_length(mid) <= seq_len else (low, mid)
    return low

  def noise_mask(self, raw_len: int, rng: np.random.Generator) -> np.ndarray:
    """bool[raw_len]: num_spans noise spans between num_spans kept spans, kept first."""
    noise, spans = self.layout(raw_len)

    def segment(items: int) -> np.ndarray:  # lengths of `spans` non-empty parts of `items`
      cuts = np.sort(rng.choice(items - 1, spans - 1, replace=False)) + 1
      return np.diff(np.concatenate([[0], cuts, [items]]))

    noise_S = segment(noise)
    kept_S = segment(raw_len - noise)
    span_id_R = np.repeat(np.arange(2 * spans), np.stack([kept_S, noise_S], 1).reshape(-1))
    return span_id_R % 2 == 1

  def make_examples(self, windows_BR, rngs, special_ids, vocab_size):
    """The five batch keys (NumPy) from int32 windows_BR, one generator per row."""
    del vocab_size  # every token of the window is kept or predicted, never replaced at random
    windows_BR = np.asarray(windows_BR, np.int32)
    batch, raw = windows_BR.shape
    if raw != self.window_length(self.seq_len):
      raise ValueError(f"span corruption of seq_len={self.seq_len} needs windows of "
                       f"{self.window_length(self.seq_len)} tokens, got {raw}; cut windows of "
                       "objective.window_length(seq_len)")
    if special_ids.get(EOS) is None:
      raise ValueError("span corruption needs the tokenizer's end-of-sequence id as "
                       "special_ids['<eos>']; use a tokenizer with an EOS id")
    pad, eos = special_ids[PAD], special_ids[EOS]
    _, spans = self.layout(raw)
    sentinels_S = np.array([special_ids[sentinel(i)] for i in range(spans)], np.int32)
    n_inputs, n_targets = self.inputs_length(raw), self.targets_length(raw)
    inputs_BL = np.full((batch, self.seq_len), pad, np.int32)
    targets_BT = np.full((batch, self.target_len), pad, np.int32)
    for row, rng in enumerate(rngs):
      noise_R = self.noise_mask(raw, rng)
      first_R = np.concatenate([[True], noise_R[1:] != noise_R[:-1]])  # a span starts here
      sentinel_R = sentinels_S[(np.cumsum(first_R) - 1) // 2]  # kept span i, noise span i: i
      # Inputs: kept tokens, each noise span as its sentinel. Targets: each kept span as the
      # sentinel of the noise span after it, then that span's tokens.
      inputs_R = np.where(noise_R & first_R, sentinel_R, windows_BR[row])
      targets_R = np.where(~noise_R & first_R, sentinel_R, windows_BR[row])
      inputs_BL[row, :n_inputs] = np.append(inputs_R[~noise_R | first_R], eos)
      targets_BT[row, :n_targets] = np.append(targets_R[noise_R | first_R], eos)
    decoder_inputs_BT = np.concatenate([np.full((batch, 1), pad, np.int32),
                                        targets_BT[:, :-1]], axis=1)
    return {"inputs": inputs_BL,
            "input_mask": _first(n_inputs, inputs_BL),
            "decoder_inputs": decoder_inputs_BT, "targets": targets_BT,
            "target_weights": _first(n_targets, targets_BT).astype(np.float32)}

  def prepare(self, batch, rng):
    del rng  # the examples were made on the host
    return batch

  def model_inputs(self, batch, train):
    return ((batch["inputs"], batch["decoder_inputs"]),
            {"input_mask_BL": batch["input_mask"], "train": train})

  def terms(self, logits_BTV, batch) -> objectives.Terms:
    return objectives.weighted_token_terms(logits_BTV, batch["targets"],
                                           batch["target_weights"])

  def eval_metrics(self, logits_BTV, batch):
    return objectives.weighted_token_metrics(logits_BTV, batch["targets"],
                                             batch["target_weights"])

  def target_weights(self, logits, batch):
    return batch["target_weights"]

  def units(self, batch) -> int:
    """Tokens the model reads: every encoder and every decoder position."""
    return int(batch["inputs"].shape[0] * (batch["inputs"].shape[1]
                                            + batch["targets"].shape[1]))


def _first(n: int, like_BL: np.ndarray) -> np.ndarray:
  """int32, 1 in the first n columns of every row of an array shaped like like_BL."""
  return np.broadcast_to(np.arange(like_BL.shape[1]) < n, like_BL.shape).astype(np.int32)


def from_run_config(config) -> SpanCorruption:
  block = config.get("span_corruption") or {}
  target_len = block.get("target_len")
  return SpanCorruption(noise_density=float(block.get("noise_density", 0.15)),
                        mean_span_length=float(block.get("mean_span_length", 3.0)),
                        num_sentinels=int(block.get("num_sentinels", 100)),
                        seq_len=int(config.seq_len),
                        target_len=None if target_len is None else int(target_len))


objectives.register("span_corruption", from_run_config)
