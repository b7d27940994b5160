"""Sampling (``models/generation.py``, ``isoflop sample``): cached decoding computes the full
forward pass's logits for every family, greedy is the argmax, the seed fixes the samples, EOS
stops a sequence, and the command's JSON contract and one-line refusals."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments import cli
from isoflop.models import generation, transformer
from isoflop.models.encdec import EncDecConfig, EncoderDecoder
from isoflop.models.lstm import LstmConfig, LstmLm

V = 64
CONFIGS = {
    "decoder": transformer.TransformerConfig(  # Llama-shaped: RoPE, grouped-query attention
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_len=16,
        positions="rope", norm="rmsnorm", activation="swiglu", use_bias=False,
        tie_embeddings=False, init_std=0.3),
    "moe": transformer.TransformerConfig(  # GPT-2-shaped, the second layer routed
        vocab_size=V, d_model=32, n_layers=2, n_heads=4, max_len=16, num_experts=4,
        experts_per_token=2, moe_every=2, init_std=0.3),
    "lstm": LstmConfig(vocab_size=V, d_model=32, n_layers=2, init_std=1.0),
    "encdec": EncDecConfig(vocab_size=V, d_model=32, n_heads=4, d_ff=64, relative_buckets=8,
                           relative_max_distance=16, init_std=0.3),
}
START = 1  # the encoder-decoder's first decoder input
PROMPTS = [[3, 4, 5, 6, 7], [9, 10, 11]]  # unequal: the shorter one is padded
NEW = 7  # tokens per sample: the prefill's, then NEW - 1 steps
GREEDY = generation.Sampling(temperature=0.0)
_GENERATORS, _FULL = {}, {}


def _model(name):
  cfg = CONFIGS[name]
  if name == "moe":  # sampling routes every token: the full pass does too at capacity 0
    cfg = dataclasses.replace(cfg, capacity_factor=0.0)
  return {"decoder": transformer.Decoder, "moe": transformer.Decoder, "lstm": LstmLm,
          "encdec": EncoderDecoder}[name](cfg)


def _generator(name) -> generation.Generator:
  """One per family and process, so tests share its compiled prefill and step (greedy, at
  one set of shapes: other settings get a Generator of their own)."""
  if name not in _GENERATORS:
    tokens = jnp.zeros((1, 4), jnp.int32)
    inputs = (tokens, tokens) if name == "encdec" else (tokens,)
    params = jax.jit(_model(name).init)(jax.random.key(0), *inputs)["params"]
    _GENERATORS[name] = generation.Generator(CONFIGS[name], params, start_id=START)
  return _GENERATORS[name]


def _full_logits(name, generator, continuations):
  """For each of PROMPTS, the logits_NV the full forward pass over the unpadded sequence gives
  where the prompt ends and at each continuation token but the last (numpy)."""
  apply = _FULL.setdefault(name, jax.jit(_model(name).apply))
  variables = {"params": generator.params}
  if name == "encdec":
    return [np.asarray(apply(variables, jnp.asarray([prompt]),
                             jnp.asarray([[START] + continuation[:-1]]))[0])
            for prompt, continuation in zip(PROMPTS, continuations)]
  # Causal: filler after a row's end changes none of its logits, so one call serves both rows.
  rows = [prompt + continuation[:-1] for prompt, continuation in zip(PROMPTS, continuations)]
  longest = max(map(len, rows))
  logits_BLV = np.asarray(apply(variables, jnp.asarray([r + [0] * (longest - len(r))
                                                        for r in rows])))
  return [logits_BLV[b, len(prompt) - 1:len(prompt) - 1 + NEW]
          for b, prompt in enumerate(PROMPTS)]


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_decoding_gives_the_full_forward_logits_at_every_position(name):
  """Prefill the (padded) prompts, feed given tokens one at a time through the step: each
  step's logits are those of the full forward pass over the whole unpadded sequence."""
  generator = _generator(name)
  continuations = [[12, 13, 14, 15, 16, 17, 18], [20, 21, 22, 23, 24, 25, 26]]
  prompt_BP, lengths_B, cache_len = generator.batch(PROMPTS, NEW)
  rng, done_B, no_eos = jax.random.key(0), jnp.zeros(2, bool), jnp.asarray(-1, jnp.int32)
  state, _, _, _, logits_BV = generator.prefill(generator.params, prompt_BP, lengths_B, rng,
                                                no_eos, cache_len=cache_len, sampling=GREEDY)
  cached = [logits_BV]
  for t in range(NEW - 1):
    fed_B = jnp.asarray([c[t] for c in continuations], jnp.int32)
    state, _, _, _, logits_BV = generator.step(generator.params, state, fed_B, done_B, rng,
                                               no_eos, cache_len=cache_len, sampling=GREEDY)
    cached.append(logits_BV)
  cached_BNV = np.stack([np.asarray(l) for l in cached], axis=1)
  for b, full_NV in enumerate(_full_logits(name, generator, continuations)):
    scale = np.abs(full_NV).max()
    assert scale > 0.5  # logits with a spread (a large init_std), not all near zero
    np.testing.assert_allclose(cached_BNV[b], full_NV, rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("name", CONFIGS)
def test_greedy_takes_the_argmax_of_the_full_forward_and_compiles_once(name):
  generator = _generator(name)
  out = generator.generate(PROMPTS, max_new_tokens=NEW, temperature=0.0)
  assert [len(t) for t in out.tokens] == [NEW, NEW] and out.finished == [False, False]
  for tokens, full_NV in zip(out.tokens, _full_logits(name, generator, out.tokens)):
    chosen_N = full_NV[np.arange(NEW), tokens]
    # Each token is a maximum of the full pass's logits (ties within float32 noise allowed).
    np.testing.assert_array_less(full_NV.max(axis=-1) - chosen_N, 1e-5 * np.abs(full_NV).max())
  # NEW tokens, one prefill and one step compiled (the first test's shapes are the same).
  assert generator.prefill._cache_size() == 1 and generator.step._cache_size() == 1


def test_the_seed_fixes_the_samples_and_eos_stops_each_sequence():
  sampler = generation.Generator(CONFIGS["decoder"], _generator("decoder").params)
  options = dict(max_new_tokens=NEW, temperature=1.0, top_k=20, top_p=0.9, num_samples=3)
  first = sampler.generate(PROMPTS, seed=1, **options)
  assert len(first.tokens) == 2 * 3  # num_samples per prompt, in prompt order
  assert sampler.generate(PROMPTS, seed=1, **options) == first
  assert sampler.generate(PROMPTS, seed=2, **options).tokens != first.tokens
  assert len({tuple(t) for t in first.tokens[:3]}) > 1  # samples of one prompt differ too
  # The same draws with an EOS id: each sample ends before its first EOS, the rest grow on.
  eos = first.tokens[0][2]
  stopped = sampler.generate(PROMPTS, seed=1, eos_id=eos, **options)
  for tokens, finished, full in zip(stopped.tokens, stopped.finished, first.tokens):
    end = full.index(eos) if eos in full else NEW
    assert tokens == full[:end] and finished == (eos in full)
  assert stopped.finished[0] and len(stopped.tokens[0]) <= 2
  assert sampler.step._cache_size() == 1  # the EOS id is an argument, not a constant


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
  logits_BV = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]] * 2000))
  keys = jax.random.key(0)
  for sampling, allowed in [(generation.Sampling(1.0, top_k=2), {0, 1}),
                            (generation.Sampling(1.0, top_p=0.7), {0, 1}),
                            (generation.Sampling(1.0, top_p=0.1), {0}),
                            (generation.Sampling(1.0), {0, 1, 2, 3})]:
    drawn = set(np.asarray(generation.sample_logits(logits_BV, keys, sampling)).tolist())
    assert drawn == allowed, sampling


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny decoder trained a few steps on Shakespeare's bytes (a run with a tokenizer)."""
  from isoflop.experiments.configs import tiny_shakespeare
  from isoflop.train import build, loop
  c = tiny_shakespeare.get_config()
  c.steps, c.batch_size, c.seq_len, c.log_every, c.eval_every = 4, 8, 16, 2, 0  # no eval
  c.optimizer.warmup_steps = 1
  c.model.d_model = 32
  workdir = tmp_path_factory.mktemp("trained")
  loop.run(build.prepare(c), str(workdir), progress=False)
  return workdir


def _sample(capsys, *args):
  status = cli.main(["isoflop", "sample", *map(str, args)])
  out, err = capsys.readouterr()
  return status, out, err


def test_the_command_prints_the_json_contract(trained, capsys):
  # Every call has the same shapes and settings: one compilation, from the persistent cache.
  common = [f"--workdir={trained}", "--num_samples=2", "--max_new_tokens=5", "--seed=3"]
  status, out, err = _sample(capsys, *common, "--prompt=ROMEO:", "--prompt=KING:", "--json")
  assert status == 0, err
  result = json.loads(out)
  assert list(result) == ["tokens", "text"]
  assert len(result["tokens"]) == len(result["text"]) == 4  # 2 prompts x 2 samples
  assert all(len(t) <= 5 for t in result["tokens"])
  assert result["text"] == [bytes(t).decode("utf-8", errors="replace") for t in result["tokens"]]
  # The same prompts as ids (UTF-8 bytes) give the same samples.
  ids = [f"--prompt_tokens={','.join(str(b) for b in p)}" for p in (b"ROMEO:", b"KING:")]
  status, out, _ = _sample(capsys, *common, *ids, "--json")
  assert status == 0 and json.loads(out) == result
  status, out, _ = _sample(capsys, *common, "--prompt=ROMEO:", "--prompt=KING:")
  assert status == 0 and out == "".join(  # readable: a header, then the text
      f"--- prompt {i // 2 + 1}, sample {i % 2 + 1} ({len(tokens)} tokens) ---\n{text}\n"
      for i, (tokens, text) in enumerate(zip(result["tokens"], result["text"])))


@pytest.mark.parametrize("case", ["too_long", "temperature", "top_p_zero", "top_p_above_one",
                                  "top_k", "no_checkpoint", "no_config", "family",
                                  "no_tokenizer"])
def test_bad_input_is_refused_in_one_line(trained, tmp_path, capsys, case):
  workdir, args = tmp_path / "run", ["--prompt=ROMEO:"]
  if case in ("no_checkpoint", "family", "no_tokenizer"):
    shutil.copytree(trained, workdir, ignore=shutil.ignore_patterns(
        *{"no_checkpoint": ["checkpoints"], "no_tokenizer": ["tokenizer"]}.get(case, [])))
  if case == "family":
    record = json.loads((workdir / "config.json").read_text())
    record["config"]["model"]["family"] = "encoder"
    (workdir / "config.json").write_text(json.dumps(record))
  if case == "no_config":
    workdir.mkdir()
  if case in ("too_long", "temperature", "top_p_zero", "top_p_above_one", "top_k"):
    workdir = trained
  args += {"too_long": ["--prompt_tokens=" + ",".join(["65"] * 10), "--max_new_tokens=8"],
           "temperature": ["--temperature=-0.5"], "top_p_zero": ["--top_p=0"],
           "top_p_above_one": ["--top_p=1.5"], "top_k": ["--top_k=-1"]}.get(case, [])
  before = sorted(p.relative_to(workdir) for p in workdir.rglob("*"))
  status, out, err = _sample(capsys, f"--workdir={workdir}", *args)
  assert status == 2 and out == ""
  assert err.startswith("isoflop sample: error: ") and err.count("\n") == 1, err
  expected = {"too_long": "longer than the model's context", "temperature": "temperature=-0.5",
              "top_p_zero": "top_p=0", "top_p_above_one": "top_p=1.5", "top_k": "top_k=-1",
              "no_checkpoint": "holds no checkpoint", "no_config": "has no config.json",
              "family": "cannot sample; only decoder, lstm, encdec",
              "no_tokenizer": "--prompt_tokens"}[case]
  assert expected in err, err
  assert sorted(p.relative_to(workdir) for p in workdir.rglob("*")) == before  # nothing written
