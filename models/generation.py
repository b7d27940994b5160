"""Autoregressive sampling from the language-model families, with a key/value cache.

One jitted prefill reads the prompts and samples the first token; one jitted step feeds the
last token and samples the next, so decoding N tokens compiles twice, not N times. Each family
keeps what the step needs in its ``cache`` collection:

- decoder (dense or MoE, ``models/transformer.py``): every layer's keys and values
  (``Attention(cache_len=S)``), S = prompt + new tokens - 1. Prompts are left-padded to one length;
  the padding is segment 0, hidden from the prompt, and positions start at 0 at each prompt's
  first token, so a padded row computes what the prompt alone would. A mixture of experts
  routes every token (no capacity limit: which tokens an expert drops would otherwise depend
  on the padding and on how many tokens a call holds).
- lstm: every layer's state (c, r), carried from call to call. Left padding runs through the
  recurrence and is forgotten: the state resets at the prompt's first token.
- encdec (T5): the prompt, ending in EOS as T5's inputs do, is encoded once (right-padded, the
  padding masked from cross-attention); the decoder starts from ``start_id`` (T5's ``<pad>``)
  and caches its self-attention keys and values and its cross-attention's projection of the
  encoded prompt, its relative buckets continuing the positions.

Sampling: greedy at temperature 0, else softmax(logits / temperature) restricted to the top_k
tokens (0: all) and to the smallest set whose probability reaches top_p (nucleus); the draws are
a function of the seed alone. A sequence that samples ``eos_id`` stops: its tokens end before it.

Notebook use::

    from isoflop.models import generation, transformer
    cfg = transformer.TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4)
    params = transformer.Decoder(cfg).init(jax.random.key(0), jnp.zeros((1, 8), int))["params"]
    out = generation.generate(cfg, params, [[72, 105], [65]], max_new_tokens=20,
                              temperature=0.8, top_k=40, seed=1)
    out.tokens   # one list of new token ids per sample (prompt excluded)
"""

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from isoflop.models import transformer
from isoflop.models.encdec.model import EncDecConfig, EncoderDecoder
from isoflop.models.lstm.model import LstmConfig, LstmLm

SAMPLING_FAMILIES = ("decoder", "lstm", "encdec")  # the decoder's MoE configs included
_OWN_EOS = object()  # generate's default: the Generator's own eos_id


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is drawn from the logits (hashable: a static argument of the jit)."""

  temperature: float = 1.0  # 0: greedy
  top_k: int = 0  # 0: every token
  top_p: float = 1.0  # nucleus mass, in (0, 1]

  def __post_init__(self):
    if not self.temperature >= 0:
      raise ValueError(f"temperature={self.temperature} must be >= 0 (0 samples greedily)")
    if self.top_k < 0:
      raise ValueError(f"top_k={self.top_k} must be >= 0 (0 keeps every token)")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p={self.top_p} must be in (0, 1] (1 keeps every token)")


def sample_logits(logits_BV: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """tokens_B (int32) drawn from float32 logits_BV as ``sampling`` says."""
  if sampling.temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits_BV = logits_BV / sampling.temperature
  if sampling.top_k and sampling.top_k < logits_BV.shape[-1]:
    kth_B1 = jax.lax.top_k(logits_BV, sampling.top_k)[0][:, -1:]
    logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
  if sampling.top_p < 1:
    sorted_BV = jnp.sort(logits_BV, axis=-1)[:, ::-1]
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    # Keep a token while the mass of those before it is short of top_p (the first always).
    kept_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV < sampling.top_p
    lowest_B1 = jnp.min(jnp.where(kept_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    logits_BV = jnp.where(logits_BV < lowest_B1, -jnp.inf, logits_BV)
  return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def _left_padding(lengths_B, P):
  """(segment_ids_BP, positions_BP) of prompts right-aligned in P columns."""
  pad_B1 = (P - lengths_B)[:, None]
  columns_1P = jnp.arange(P)[None, :]
  return (columns_1P >= pad_B1).astype(jnp.int32), jnp.maximum(columns_1P - pad_B1, 0)


class _Decoder:
  """models/transformer.py's Decoder, dense or MoE."""

  left_padded = True

  def __init__(self, cfg: transformer.TransformerConfig):
    self.cfg = dataclasses.replace(cfg, capacity_factor=0.0) if cfg.num_experts else cfg
    self.vocab_size = cfg.vocab_size
    self.context = cfg.max_len
    self.fixed_context = cfg.positions == "learned"  # no position beyond max_len exists

  def cache_len(self, prompt_len: int, max_new_tokens: int) -> int:
    return prompt_len + max_new_tokens - 1  # the last token sampled is never fed

  def prefill(self, params, prompt_BP, lengths_B, cache_len):
    segment_ids_BP, positions_BP = _left_padding(lengths_B, prompt_BP.shape[1])
    logits_BPV, variables = transformer.Decoder(self.cfg, cache_len=cache_len).apply(
        {"params": params}, prompt_BP, positions_BL=positions_BP,
        segment_ids_BL=segment_ids_BP, mutable=["cache"])
    return logits_BPV[:, -1], {"cache": variables["cache"], "positions_B": lengths_B}

  def step(self, params, state, tokens_B, cache_len):
    positions_B = state["positions_B"]
    logits_B1V, variables = transformer.Decoder(self.cfg, cache_len=cache_len).apply(
        {"params": params, "cache": state["cache"]}, tokens_B[:, None],
        positions_BL=positions_B[:, None], segment_ids_BL=jnp.ones_like(tokens_B)[:, None],
        mutable=["cache"])
    return logits_B1V[:, 0], {"cache": variables["cache"], "positions_B": positions_B + 1}


class _Lstm:
  """models/lstm's LstmLm: the state is the cache."""

  left_padded = True
  context, fixed_context = None, False

  def __init__(self, cfg: LstmConfig):
    self.cfg, self.vocab_size = cfg, cfg.vocab_size
    self.model = LstmLm(cfg, decode=True)

  def cache_len(self, prompt_len: int, max_new_tokens: int) -> int:
    return 0  # the state has no length

  def prefill(self, params, prompt_BP, lengths_B, cache_len):
    segment_ids_BP, _ = _left_padding(lengths_B, prompt_BP.shape[1])
    logits_BPV, variables = self.model.apply({"params": params}, prompt_BP,
                                             segment_ids_BL=segment_ids_BP, mutable=["cache"])
    return logits_BPV[:, -1], variables["cache"]

  def step(self, params, state, tokens_B, cache_len):
    logits_B1V, variables = self.model.apply({"params": params, "cache": state},
                                             tokens_B[:, None], mutable=["cache"])
    return logits_B1V[:, 0], variables["cache"]


class _EncDec:
  """models/encdec's EncoderDecoder: encode the prompt once, decode from ``start_id``."""

  left_padded = False
  context, fixed_context = None, False  # relative positions: any length

  def __init__(self, cfg: EncDecConfig, start_id: int | None, eos_id: int | None):
    if start_id is None:
      raise ValueError("the encoder-decoder needs the decoder's start id (T5's <pad>) to "
                       "sample; pass start_id")
    self.cfg, self.vocab_size, self.start_id, self.eos_id = cfg, cfg.vocab_size, start_id, eos_id

  def prompt(self, ids: list[int]) -> list[int]:
    """T5's inputs end in EOS (span corruption's do)."""
    return ids if self.eos_id is None or ids[-1:] == [self.eos_id] else ids + [self.eos_id]

  def cache_len(self, prompt_len: int, max_new_tokens: int) -> int:
    return max_new_tokens  # the start token, then every new token but the last

  def prefill(self, params, prompt_BP, lengths_B, cache_len):
    model = EncoderDecoder(self.cfg, cache_len=cache_len)
    input_mask_BP = (jnp.arange(prompt_BP.shape[1])[None, :] < lengths_B[:, None]).astype(
        jnp.int32)
    encoded_BPD = model.apply({"params": params}, prompt_BP, input_mask_BL=input_mask_BP,
                              method="encode")
    start_B = jnp.full(prompt_BP.shape[:1], self.start_id, jnp.int32)
    state = {"encoded_BPD": encoded_BPD, "input_mask_BP": input_mask_BP, "cache": {}}
    return self.step(params, state, start_B, cache_len)

  def step(self, params, state, tokens_B, cache_len):
    variables = {"params": params, **({"cache": state["cache"]} if state["cache"] else {})}
    logits_B1V, updated = EncoderDecoder(self.cfg, cache_len=cache_len).apply(
        variables, state["encoded_BPD"], tokens_B[:, None],
        input_mask_BL=state["input_mask_BP"], method="decode", mutable=["cache"])
    return logits_B1V[:, 0], {**state, "cache": updated["cache"]}


def decoding_for(cfg: Any, *, start_id: int | None = None, eos_id: int | None = None):
  """The family's prefill and step for a model config; a one-line ValueError for a family
  that cannot sample."""
  if isinstance(cfg, transformer.TransformerConfig):
    return _Decoder(cfg)
  if isinstance(cfg, LstmConfig):
    return _Lstm(cfg)
  if isinstance(cfg, EncDecConfig):
    return _EncDec(cfg, start_id, eos_id)
  raise ValueError(f"{type(cfg).__name__} cannot sample: only the families "
                   f"{', '.join(SAMPLING_FAMILIES)} (MoE decoders included) generate text")


@dataclasses.dataclass(frozen=True)
class Generated:
  tokens: list[list[int]]  # one list per sample, prompt excluded, ending before any EOS
  finished: list[bool]  # the sample ended at EOS (rather than at max_new_tokens)


class Generator:
  """A model's jitted prefill and step, reused across calls (one compile per prompt length
  and sampling settings, none per token, none per EOS id). Both return (state, tokens_B,
  done_B, rng, logits_BV): the sampled tokens and the logits they were drawn from."""

  def __init__(self, cfg: Any, params: Any, *, eos_id: int | None = None,
               start_id: int | None = None):
    self.decoding = decoding_for(cfg, start_id=start_id, eos_id=eos_id)
    self.params = nn.meta.unbox(params)
    self.eos_id = eos_id
    self.prefill = jax.jit(self._prefill, static_argnames=("cache_len", "sampling"))
    self.step = jax.jit(self._step, static_argnames=("cache_len", "sampling"), donate_argnums=1)

  def _finish(self, logits_BV, rng, done_B, eos_id, sampling):
    """Samples the next tokens; a finished row repeats EOS (``eos_id`` -1: none)."""
    rng, key = jax.random.split(rng)
    tokens_B = sample_logits(logits_BV[:, :self.decoding.vocab_size], key, sampling)
    tokens_B = jnp.where(done_B, eos_id, tokens_B)
    return tokens_B, done_B | (tokens_B == eos_id), rng, logits_BV

  def _prefill(self, params, prompt_BP, lengths_B, rng, eos_id, *, cache_len, sampling):
    logits_BV, state = self.decoding.prefill(params, prompt_BP, lengths_B, cache_len)
    done_B = jnp.zeros(lengths_B.shape, bool)
    return state, *self._finish(logits_BV, rng, done_B, eos_id, sampling)

  def _step(self, params, state, tokens_B, done_B, rng, eos_id, *, cache_len, sampling):
    logits_BV, state = self.decoding.step(params, state, tokens_B, cache_len)
    return state, *self._finish(logits_BV, rng, done_B, eos_id, sampling)

  def check(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]:
    """The prompts as the model reads them; a one-line ValueError for an empty prompt, an id
    outside the vocabulary or a sequence longer than the model's context."""
    if not prompts:
      raise ValueError("no prompt given; pass at least one")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens} must be positive")
    vocab_size = self.decoding.vocab_size
    prepared = []
    for ids in prompts:
      ids = [int(i) for i in ids]
      if not ids:
        raise ValueError("a prompt is empty; give at least one token")
      if not all(0 <= i < vocab_size for i in ids):
        raise ValueError(f"prompt token ids must be in [0, {vocab_size}), the model's "
                         f"vocabulary; got {min(ids)}..{max(ids)}")
      prepared.append(self.decoding.prompt(ids) if hasattr(self.decoding, "prompt") else ids)
    longest, context = max(map(len, prepared)), self.decoding.context
    if context is not None and self.decoding.fixed_context and longest + max_new_tokens > context:
      raise ValueError(f"the prompt ({longest} tokens) plus max_new_tokens={max_new_tokens} is "
                       f"longer than the model's context of {context} learned positions; "
                       "shorten the prompt or lower max_new_tokens")
    if context is not None and longest > context:
      raise ValueError(f"the prompt ({longest} tokens) is longer than the model's context of "
                       f"{context} tokens; shorten it")
    return prepared

  def batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, num_samples: int = 1):
    """(prompt_BP, lengths_B, cache_len): ``num_samples`` rows per prompt, padded on the side
    the family reads padding from."""
    if num_samples < 1:
      raise ValueError(f"num_samples={num_samples} must be positive")
    rows = [ids for ids in self.check(prompts, max_new_tokens) for _ in range(num_samples)]
    P = max(map(len, rows))
    prompt_BP = np.zeros((len(rows), P), np.int32)
    for b, ids in enumerate(rows):
      if self.decoding.left_padded:
        prompt_BP[b, P - len(ids):] = ids
      else:
        prompt_BP[b, :len(ids)] = ids
    lengths_B = jnp.asarray([len(ids) for ids in rows], jnp.int32)
    return jnp.asarray(prompt_BP), lengths_B, self.decoding.cache_len(P, max_new_tokens)

  def generate(self, prompts: Sequence[Sequence[int]], *, max_new_tokens: int = 32,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
               num_samples: int = 1, eos_id: Any = _OWN_EOS) -> Generated:
    """``num_samples`` samples of each prompt (token ids), in prompt order; ``eos_id``
    (default: the Generator's; None: never stop early) ends a sample."""
    sampling = Sampling(float(temperature), int(top_k), float(top_p))
    eos = self.eos_id if eos_id is _OWN_EOS else eos_id
    eos_traced = jnp.asarray(-1 if eos is None else eos, jnp.int32)
    prompt_BP, lengths_B, cache_len = self.batch(prompts, max_new_tokens, num_samples)
    state, tokens_B, done_B, rng, _ = self.prefill(
        self.params, prompt_BP, lengths_B, jax.random.key(seed), eos_traced,
        cache_len=cache_len, sampling=sampling)
    steps = [tokens_B]
    for _ in range(max_new_tokens - 1):
      if eos is not None and bool(jnp.all(done_B)):
        break
      state, tokens_B, done_B, rng, _ = self.step(self.params, state, tokens_B, done_B, rng,
                                                  eos_traced, cache_len=cache_len,
                                                  sampling=sampling)
      steps.append(tokens_B)
    tokens_BN = np.asarray(jax.device_get(jnp.stack(steps, axis=1)))
    tokens, finished = [], []
    for row in tokens_BN.tolist():
      end = row.index(eos) if eos in row else len(row)
      tokens.append(row[:end])
      finished.append(end < len(row))
    return Generated(tokens, finished)


def generate(cfg: Any, params: Any, prompts: Sequence[Sequence[int]], *,
             eos_id: int | None = None, start_id: int | None = None, **options) -> Generated:
  """``Generator(cfg, params, eos_id=, start_id=).generate(prompts, **options)``: for one-off
  calls (keep a Generator to reuse its compiled functions)."""
  return Generator(cfg, params, eos_id=eos_id, start_id=start_id).generate(prompts, **options)
