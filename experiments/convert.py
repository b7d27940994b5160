"""`isoflop convert`: Hugging Face checkpoints into isoflop runs, and runs back out.

  isoflop convert --from_hf=<dir: config.json + *.safetensors> --workdir=<new run>
  isoflop convert --workdir=<run> --to_hf=<dir> [--step=S]

``--from_hf`` makes a run holding the checkpoint's parameters at step 0 (GPT-2, Llama, BERT,
T5), loadable as ``config.init_from``, by ``isoflop compress`` and ``isoflop sample``; its
``tokenizer.json`` comes along (``data.tokenizer=hf``), and ``train_config.py`` in the run is its
config for fine-tuning. ``--to_hf`` writes ``config.json`` + ``model.safetensors`` (+ the run's
``tokenizer.json``) for transformers' ``from_pretrained``. The mechanics are in
``train/hf_convert.py``; this module is the command line and the converted run's config.
"""

import dataclasses
import json
import os
import sys
from typing import Any, Sequence

PROG = "isoflop convert"
TRAIN_CONFIG = "train_config.py"
# The objective each family was pre-trained with: the converted run's task.
TASKS = {"decoder": "causal_lm", "encoder": "masked_lm", "encdec": "span_corruption"}
# The run's train_config.py: `isoflop train --config=<run>/train_config.py` fine-tunes it.
TRAIN_CONFIG_TEXT = '''"""The config of the run in this directory (converted by `isoflop convert --from_hf`): its
model, its tokenizer (data.tokenizer=hf) and defaults for fine-tuning. Fine-tune with

  isoflop train --config=<this file> --config.init_from=<this directory> \\
      --config.data.source='files:my/*.txt' --workdir=<new run> [--config.a.b=value ...]
"""

import json
import os

from isoflop.experiments import compress


def get_config():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.json")
  with open(path, encoding="utf-8") as f:
    return compress.run_config(json.load(f)["config"])
'''


class ConvertError(ValueError):
  """Input convert cannot use; the message is the one line the user sees."""


def converted_config(family: str, model_config, workdir: str, has_tokenizer: bool):
  """The run config of a converted model: its family's task, the model block of its config,
  the tokenizer saved in ``workdir`` (when the checkpoint has one) and fine-tuning defaults.
  The synthetic source only gives the record its shapes; fine-tuning names real data."""
  from isoflop.experiments.configs import base
  c = base.get_config()
  c.task = TASKS[family]
  c.model = base.family_model_block(family, type(model_config),
                                    **dataclasses.asdict(model_config))
  max_len = getattr(model_config, "max_len", None) or 512
  c.seq_len = min(max_len, 1024 if family == "decoder" else 512)
  c.batch_size = 8
  c.optimizer.lr = 1e-4  # fine-tuning a pre-trained model, not training from scratch
  c.data.tokenizer = "hf"
  if has_tokenizer:
    c.data.tokenizer_path = workdir
    c.data.vocab_size = model_config.vocab_size  # the model's rows, maybe more than tokens
  if family == "encdec":  # the synthetic stream's sentinels must fit a small vocabulary
    c.span_corruption.num_sentinels = max(1, min(100, (model_config.vocab_size - 4) // 2))
  return c


def _check_new(path: str, flag: str) -> None:
  from isoflop.experiments import cli
  if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
    raise ConvertError(f"{flag}={path} is not empty; pick a new directory (nothing there is "
                       "overwritten)")
  cli.check_output(path, flag)


def _from_hf(source: str, workdir: str) -> list[str]:
  _check_new(workdir, "--workdir")
  from isoflop.train import compile_cache, hf_convert
  compile_cache.enable()
  checkpoint = hf_convert.read_checkpoint(source)
  params = hf_convert.read_params(checkpoint)
  hf_config = checkpoint.hf_config
  config = converted_config(checkpoint.family, checkpoint.model_config,
                            os.path.abspath(workdir), checkpoint.tokenizer is not None)
  converted_from = {"hf_dir": os.path.abspath(source), "model_type": hf_config["model_type"],
                    "architectures": hf_config.get("architectures"), "hf_config": hf_config,
                    "tokenizer": None if checkpoint.tokenizer is None else "tokenizer.json"}
  record = hf_convert.write_run(config, params, workdir, converted_from, checkpoint.tokenizer,
                                {TRAIN_CONFIG: TRAIN_CONFIG_TEXT.encode()})
  lines = [f"converted {hf_config['model_type']} from {source}: model.family="
           f"{checkpoint.family}, {record['param_counts']['total']:,} parameters, vocabulary "
           f"{checkpoint.model_config.vocab_size:,}"]
  tokenizer = checkpoint.tokenizer
  if tokenizer is None:
    lines.append(f"no tokenizer.json in {source}: the run takes prompts only as token ids "
                 "(isoflop sample --prompt_tokens=...), and fine-tuning data needs "
                 "data.tokenizer_path")
  else:
    lines.append(f"tokenizer: tokenizer.json kept (vocabulary {tokenizer.vocab_size:,}, EOS id "
                 f"{tokenizer.eos_id}); prompts and data.tokenizer=hf use it")
  lines.append(f"wrote {workdir} (checkpoint at step 0); fine-tune with: isoflop train "
               f"--config={os.path.join(workdir, TRAIN_CONFIG)} --config.init_from={workdir} "
               "--config.data.source='files:<your text>' --workdir=<new run>")
  return lines


def _special_ids(recorded: dict[str, Any], family: str, tokenizer) -> dict[str, int]:
  """Special token ids for the HF config: the original checkpoint's (a converted run), else
  the run's own padding and EOS ids, else its tokenizer's EOS."""
  from isoflop.train import hf_convert
  original = recorded.get("converted_from", {}).get("hf_config", {})
  ids = {k: original[k] for k in hf_convert.TOKEN_ID_KEYS if original.get(k) is not None}
  if ids:
    return ids
  specials = recorded.get("data", {}).get("special_tokens") or {}
  if "<pad>" in specials:
    ids["pad_token_id"] = specials["<pad>"]
    if family == "encdec":  # T5 starts the decoder from its padding id
      ids["decoder_start_token_id"] = specials["<pad>"]
  eos = specials.get("<eos>", getattr(tokenizer, "eos_id", None))
  if eos is not None:
    ids["eos_token_id"] = eos
    if family == "decoder":
      ids["bos_token_id"] = eos  # GPT-2's convention: one end-of-text token both ways
  return ids


def _to_hf(workdir: str, out: str, step: int | None) -> list[str]:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise ConvertError(f"--workdir={workdir} has no config.json; point it at an isoflop run")
  _check_new(out, "--to_hf")
  from isoflop.experiments import compress
  from isoflop.models import families
  from isoflop.train import hf_convert, init_from
  from isoflop.train.data import TOKENIZER_DIR, tokenizers
  _, step = init_from.resolve(os.path.abspath(workdir) + ("" if step is None else f":{step}"),
                              flag="--workdir")
  with open(path, encoding="utf-8") as f:
    recorded = json.load(f)
  config = compress.run_config(recorded["config"])
  family = config.model.get("family", families.DEFAULT)
  if config.ensemble > 1:
    raise ConvertError(f"the run trains an ensemble of {config.ensemble} seeds; a Hugging Face "
                       "checkpoint holds one model")
  model_config = families.model_config(config)
  hf_convert.hf_config_of(family, model_config, {}, "float32")  # refuses before any read
  tokenizer_dir = os.path.join(workdir, TOKENIZER_DIR)
  tokenizer = tokenizers.load_saved(tokenizer_dir) if os.path.isdir(tokenizer_dir) else None
  is_hf = isinstance(tokenizer, tokenizers.HfTokenizer)
  params = hf_convert.run_params(workdir, step)
  hf_config = hf_convert.write_hf(out, family, model_config, params,
                                  _special_ids(recorded, family, tokenizer),
                                  tokenizer_dir if is_hf else None)
  lines = [f"wrote {out}: {hf_config['architectures'][0]} (model_type={hf_config['model_type']}"
           f") from {workdir} at step {step}; load it with transformers' "
           f"AutoModel...from_pretrained({out!r})"]
  if is_hf:
    lines.append("tokenizer: the run's tokenizer.json copied")
  elif tokenizer is None:
    lines.append("no tokenizer: the run has none to copy; the model takes token ids")
  else:
    lines.append(f"no tokenizer.json: the run's tokenizer ({tokenizer.identity()}) is not one "
                 "transformers loads; the model takes token ids")
  return lines


def _flags():
  from absl import flags
  flag_values = flags.FlagValues()
  define = dict(flag_values=flag_values)
  flags.DEFINE_string("from_hf", None, "a Hugging Face checkpoint directory (config.json + "
                      "*.safetensors [+ tokenizer.json]) to convert into a new run", **define)
  flags.DEFINE_string("workdir", None, "the run: written with --from_hf, read with --to_hf",
                      **define)
  flags.DEFINE_string("to_hf", None, "directory for the Hugging Face checkpoint of --workdir",
                      **define)
  flags.DEFINE_integer("step", None, "--to_hf: the checkpoint to export (default: the newest)",
                       lower_bound=0, **define)
  return flags, flag_values


def main(argv: Sequence[str]) -> int:
  from isoflop.experiments import cli
  flags, flag_values = _flags()
  try:
    try:
      extra = cli.parse_flags(flag_values, list(argv))[1:]
    except flags.Error as e:
      raise ConvertError(cli.one_line(e)) from None
    if extra:
      raise ConvertError(f"unexpected arguments {' '.join(extra)}")
    usage = cli.SUBCOMMAND_HELP["convert"][1]
    if not flag_values.workdir:
      raise ConvertError(f"missing --workdir; usage: {usage}")
    if bool(flag_values.from_hf) == bool(flag_values.to_hf):
      raise ConvertError(f"pass exactly one of --from_hf and --to_hf; usage: {usage}")
    if flag_values.from_hf:
      lines = _from_hf(flag_values.from_hf, flag_values.workdir)
    else:
      lines = _to_hf(flag_values.workdir, flag_values.to_hf, flag_values.step)
  except cli.UsageError as e:
    print(f"{PROG}: error: {e}", file=sys.stderr)
    return cli.EXIT_BAD_INPUT
  except ValueError as e:  # ConvertError and the mappings' one-line refusals
    print(f"{PROG}: error: {cli.one_line(e)}", file=sys.stderr)
    return cli.EXIT_BAD_INPUT
  print("\n".join(lines))
  return 0
