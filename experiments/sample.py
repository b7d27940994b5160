"""`isoflop sample`: generate text from a trained run (decoder, MoE decoder, LSTM, T5-style
encoder-decoder), decoding with a key/value cache (``models/generation.py``).

  isoflop sample --workdir=<run> --prompt="ROMEO:" [--max_new_tokens=32 --temperature=0.8
      --top_k=40 --top_p=0.95 --seed=0 --num_samples=2 --step=S --json]
  isoflop sample --workdir=<run> --prompt_tokens=1,2,3 --json

``--prompt`` and ``--prompt_tokens`` may each be repeated (one batch of prompts). ``--json``
prints ``{"tokens": [[...]], "text": [...]}``: one entry per sample, prompts in order and each
prompt's samples together, the prompt excluded, ending before EOS; ``text`` entries are null
for a run without a tokenizer. ``--benchmark`` times decoding instead (EOS ignored) and prints
tokens/s as JSON.

Notebook use::

    from isoflop.experiments import sample
    run = sample.load_run("runs/x")
    run.sample(["ROMEO:", "JULIET:"], max_new_tokens=40, temperature=0.8, seed=1)
    # {"tokens": [[...], [...]], "text": ["...", "..."]}
"""

import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Sequence

PROG = "isoflop sample"


class SampleError(ValueError):
  """Input sample cannot use; the message is the one line the user sees."""


@dataclasses.dataclass
class Run:
  """A trained run ready to sample: its model config, parameters and tokenizer."""

  workdir: str
  step: int
  family: str
  model_config: Any
  params: Any
  tokenizer: Any  # None: a run on synthetic tokens (prompts only as token ids)
  eos_id: int | None
  start_id: int | None  # the encoder-decoder's first decoder input (T5's <pad>)
  _generator: Any = None

  @property
  def generator(self):
    if self._generator is None:
      from isoflop.models import generation
      self._generator = generation.Generator(self.model_config, self.params,
                                             eos_id=self.eos_id, start_id=self.start_id)
    return self._generator

  def encode(self, prompts: Sequence[str]) -> list[list[int]]:
    if self.tokenizer is None:
      raise SampleError(f"{self.workdir} has no tokenizer (it trained on token ids); give the "
                        "prompt as ids, e.g. --prompt_tokens=1,2,3")
    return [[int(i) for i in self.tokenizer.encode(prompt)] for prompt in prompts]

  def decode(self, tokens: Sequence[int]) -> str | None:
    return None if self.tokenizer is None else self.tokenizer.decode(tokens)

  def sample(self, prompts: Sequence[str] | None = None,
             prompt_tokens: Sequence[Sequence[int]] | None = None, **options) -> dict[str, list]:
    """``{"tokens": [...], "text": [...]}`` of ``num_samples`` samples per prompt (text, or
    token ids as ``prompt_tokens``); options as ``Generator.generate``."""
    ids = list(prompt_tokens or []) + (self.encode(prompts) if prompts else [])
    generated = self.generator.generate(ids, **options)
    return {"tokens": generated.tokens, "text": [self.decode(t) for t in generated.tokens]}


def _init_from():
  """train/init_from.py, imported without Orbax's warning that train/checkpointing.py
  overrides its jax.Array handler (on purpose): errors here are one line on stderr."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    from isoflop.train import init_from
  finally:
    absl_logger.setLevel(level)
  return init_from


def _recorded(workdir: str, step: int | None) -> tuple[dict[str, Any], int]:
  init_from = _init_from()
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise SampleError(f"--workdir={workdir} has no config.json; point it at a trained run")
  try:
    _, step = init_from.resolve(os.path.abspath(workdir) + ("" if step is None else f":{step}"),
                                flag="--workdir")
  except ValueError as e:
    raise SampleError(str(e)) from None
  with open(path, encoding="utf-8") as f:
    return json.load(f), step


def _tokenizer(workdir: str, special_ids: dict[str, int]):
  """The run's tokenizer, with the objective's special tokens (T5's sentinels) shown by name."""
  from isoflop.train.data import examples, tokenizers
  base = tokenizers.load_saved(os.path.join(workdir, "tokenizer"))
  if base is None:
    return None
  names = [name for name, i in sorted(special_ids.items(), key=lambda kv: kv[1])
           if i is not None and i >= base.vocab_size]
  if names and all(special_ids[n] == base.vocab_size + k for k, n in enumerate(names)):
    return examples.SpecialTokens(base, names)
  return base


def _params(workdir: str, step: int, family, model_config) -> Any:
  """The run's parameters at ``step``, read onto one device in the model's dtypes."""
  import flax.linen as nn
  import jax
  import jax.numpy as jnp
  init_from = _init_from()
  tokens = jnp.zeros((1, 1), jnp.int32)
  inputs = (tokens, tokens) if family.name == "encdec" else (tokens,)
  abstract = nn.meta.unbox(jax.eval_shape(
      lambda: family.make_model(model_config).init(jax.random.key(0), *inputs))["params"])
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  wanted = {f"params/{jax.tree_util.keystr(path, simple=True, separator='/')}":
            jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
            for path, leaf in jax.tree_util.tree_leaves_with_path(abstract)}
  try:
    restored = init_from.read_arrays(workdir, step, wanted)
  except Exception as e:  # a checkpoint of another shape or tree: name it, in one line
    raise SampleError(f"checkpoint {step} of {workdir} does not hold this model's parameters "
                      f"({' '.join(str(e).split())[:200]}); is config.json the run's own?"
                      ) from None
  return jax.tree_util.tree_map_with_path(
      lambda path, _: restored[f"params/{jax.tree_util.keystr(path, simple=True, separator='/')}"],
      abstract)


def load_run(workdir: str, step: int | None = None) -> Run:
  """A trained run's newest (or ``step``'s) parameters, model config and tokenizer; a
  one-line SampleError for a workdir without config.json or checkpoint, or a family that
  cannot sample."""
  from isoflop.experiments import compress
  from isoflop.models import families, generation
  recorded, step = _recorded(workdir, step)
  config = compress.run_config(recorded["config"])
  name = config.model.get("family", families.DEFAULT)
  if name not in generation.SAMPLING_FAMILIES:
    raise SampleError(f"model.family={name!r} cannot sample; only "
                      f"{', '.join(generation.SAMPLING_FAMILIES)} runs generate (MoE decoders "
                      "included)")
  family = families.get(name)
  model_config = families.model_config(config)
  special_ids = dict((recorded.get("data") or {}).get("special_tokens") or {})
  tokenizer = _tokenizer(workdir, special_ids)
  eos_id = special_ids.get("<eos>", getattr(tokenizer, "eos_id", None))
  return Run(workdir, step, name, model_config, _params(workdir, step, family, model_config),
             tokenizer, eos_id, special_ids.get("<pad>"))


def benchmark(run: Run, prompt_tokens: list[list[int]], max_new_tokens: int, seed: int,
              num_samples: int, repeats: int = 5) -> dict[str, Any]:
  """Decoding throughput, EOS ignored so every sample runs max_new_tokens: the median of
  ``repeats`` timed calls after one that compiles."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from isoflop.models import generation
  generator = run.generator
  options = dict(max_new_tokens=max_new_tokens, temperature=1.0, seed=seed,
                 num_samples=num_samples, eos_id=None)
  generator.generate(prompt_tokens, **options)  # compiles the prefill and the step
  prompt_BP, lengths_B, cache_len = generator.batch(prompt_tokens, max_new_tokens, num_samples)
  totals, prefills = [], []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(generator.prefill(
        generator.params, prompt_BP, lengths_B, jax.random.key(seed), jnp.int32(-1),
        cache_len=cache_len, sampling=generation.Sampling(1.0)))
    prefills.append(time.perf_counter() - start)
    start = time.perf_counter()
    generator.generate(prompt_tokens, **options)
    totals.append(time.perf_counter() - start)
  total, prefill = float(np.median(totals)), float(np.median(prefills))
  batch, P = prompt_BP.shape
  return {"family": run.family, "batch": batch, "prompt_tokens": P,
          "new_tokens": max_new_tokens, "total_s": total, "prefill_s": prefill,
          "tokens_per_s": batch * max_new_tokens / total,
          "decode_tokens_per_s": batch * (max_new_tokens - 1) / max(total - prefill, 1e-9),
          "step_ms": 1e3 * (total - prefill) / max(max_new_tokens - 1, 1),
          "device": str(jax.devices()[0].device_kind), "jax": jax.__version__}


def _flags(argv: Sequence[str]):
  from absl import flags
  flag_values = flags.FlagValues()
  define = dict(flag_values=flag_values)
  flags.DEFINE_string("workdir", None, "the trained run to sample from", **define)
  flags.DEFINE_multi_string("prompt", [], "prompt text, one per sequence of the batch;",
                            **define)
  flags.DEFINE_multi_string("prompt_tokens", [], "a prompt as comma-separated token ids, "
                            "e.g. 1,2,3 (a run without a tokenizer needs them);", **define)
  flags.DEFINE_integer("max_new_tokens", 32, "tokens to generate per sample (fewer if EOS)",
                       **define)
  flags.DEFINE_float("temperature", 1.0, "softmax temperature; 0 is greedy", **define)
  flags.DEFINE_integer("top_k", 0, "sample among the k most likely tokens (0: all)", **define)
  flags.DEFINE_float("top_p", 1.0, "nucleus: the smallest set of tokens with this much "
                     "probability, in (0, 1]", **define)
  flags.DEFINE_integer("seed", 0, "the samples are a function of the seed", **define)
  flags.DEFINE_integer("num_samples", 1, "samples per prompt", **define)
  flags.DEFINE_integer("step", None, "checkpoint to sample from (default: the newest)", **define)
  flags.DEFINE_bool("json", False, 'print {"tokens": [[...]], "text": [...]} (prompt excluded)',
                    **define)
  flags.DEFINE_bool("benchmark", False, "time decoding (EOS ignored) and print tokens/s as "
                    "JSON instead of the samples", **define)
  return flags, flag_values


def _token_ids(values: Sequence[str]) -> list[list[int]]:
  prompts = []
  for value in values:
    try:
      prompts.append([int(i) for i in value.replace(" ", "").split(",") if i != ""])
    except ValueError:
      raise SampleError(f"--prompt_tokens={value} is not a comma-separated list of token "
                        "ids; write e.g. --prompt_tokens=1,2,3") from None
  return prompts


def _run(flag_values) -> int:
  from isoflop.models import generation
  v = flag_values
  if not v.workdir:
    raise SampleError("missing --workdir; pass a trained run, e.g. --workdir=runs/x")
  if not v.prompt and not v.prompt_tokens:
    raise SampleError('missing --prompt; pass e.g. --prompt="ROMEO:" (or --prompt_tokens=1,2,3)')
  generation.Sampling(v.temperature, v.top_k, v.top_p)  # bad settings fail before any loading
  for name in ("max_new_tokens", "num_samples"):
    if v[name].value < 1:
      raise SampleError(f"--{name}={v[name].value} must be positive")
  prompt_tokens = _token_ids(v.prompt_tokens)
  run = load_run(v.workdir, v.step)
  prompts = prompt_tokens + (run.encode(v.prompt) if v.prompt else [])
  run.generator.check(prompts, v.max_new_tokens)  # too long or out of vocabulary: one line
  if v.benchmark:
    print(json.dumps(benchmark(run, prompts, v.max_new_tokens, v.seed, v.num_samples)))
    return 0
  result = run.sample(prompt_tokens=prompts, max_new_tokens=v.max_new_tokens,
                      temperature=v.temperature, top_k=v.top_k, top_p=v.top_p, seed=v.seed,
                      num_samples=v.num_samples)
  if v.json:
    print(json.dumps(result))
    return 0
  for i, (tokens, text) in enumerate(zip(result["tokens"], result["text"])):
    prompt, sample = divmod(i, v.num_samples)
    print(f"--- prompt {prompt + 1}, sample {sample + 1} ({len(tokens)} tokens) ---")
    print(" ".join(map(str, tokens)) if text is None else text)
  return 0


def main(argv: Sequence[str]) -> int:
  from isoflop.experiments import cli
  flags, flag_values = _flags(argv)
  try:
    try:
      extra = cli.parse_flags(flag_values, argv)[1:]
    except flags.Error as e:
      raise SampleError(cli.one_line(e)) from None
    if extra:
      raise SampleError(f"unexpected arguments {' '.join(extra)}")
    from isoflop.train import compile_cache
    compile_cache.enable()
    return _run(flag_values)
  except ValueError as e:  # SampleError and the checks of the prompts and sampling settings
    if os.environ.get("ISOFLOP_DEBUG"):
      raise
    print(f"{PROG}: error: {cli.one_line(e)}", file=sys.stderr)
    return cli.EXIT_BAD_INPUT
