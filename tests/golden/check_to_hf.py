"""Checks `isoflop convert` against transformers itself: HF -> isoflop -> HF, by hand.

For GPT-2, Llama (grouped-query attention, rope_theta 5e5, RMSNorm eps 1e-5, saved sharded),
BERT and T5 (v1.0 and v1.1) it builds a random-weight transformers model from a config
(nothing is downloaded), saves it with ``save_pretrained`` (safetensors), converts it with
``isoflop convert --from_hf`` into a run and back out with ``--to_hf``, loads the result with
``AutoModelFor...from_pretrained`` and prints the largest |logits difference| between the
original model, the reloaded one and isoflop's own forward pass of the run. GPT-2 carries a
small tokenizer.json, which must come back and load with ``AutoTokenizer``.

It runs where torch and transformers are installed, and calls isoflop's command and Python
(another environment) in subprocesses; the test suite never runs it:

    python3 -m venv /tmp/torchenv
    /tmp/torchenv/bin/pip install "torch==2.13.0+cpu" transformers safetensors tokenizers numpy
    /tmp/torchenv/bin/python tests/golden/check_to_hf.py --isoflop_python=.venv/bin/python

The numbers are in docs/hf_parity.md ("The way back").
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

# isoflop's keyword arguments of each family's __call__ -> transformers' names.
CALL_NAMES = {"decoder": {"tokens_BL": "input_ids"},
              "encoder": {"tokens_BL": "input_ids", "token_types_BL": "token_type_ids",
                          "key_mask_BL": "attention_mask"},
              "encdec": {"inputs_BL": "input_ids", "input_mask_BL": "attention_mask",
                         "decoder_inputs_BT": "decoder_input_ids"}}
VOCAB, LENGTH = 128, 24


def _models():
  """(name, family, transformers model, AutoModel class name, save_pretrained options)."""
  import transformers as tf
  eager = {"attn_implementation": "eager"}
  return [
      ("gpt2", "decoder", tf.GPT2LMHeadModel(tf.GPT2Config(
          vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=32,
          activation_function="gelu_new", bos_token_id=0, eos_token_id=0, **eager)),
       "AutoModelForCausalLM", {}),
      ("llama", "decoder", tf.LlamaForCausalLM(tf.LlamaConfig(
          vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
          num_key_value_heads=2, intermediate_size=96, max_position_embeddings=64,
          rms_norm_eps=1e-5, rope_theta=5e5, tie_word_embeddings=False, bos_token_id=1,
          eos_token_id=2, **eager)), "AutoModelForCausalLM", {"max_shard_size": "60KB"}),
      ("bert", "encoder", tf.BertForMaskedLM(tf.BertConfig(
          vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
          intermediate_size=96, max_position_embeddings=32, hidden_act="gelu", **eager)),
       "AutoModelForMaskedLM", {}),
      ("t5", "encdec", tf.T5ForConditionalGeneration(tf.T5Config(
          vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_heads=4,
          relative_attention_num_buckets=8, relative_attention_max_distance=16,
          feed_forward_proj="relu", dropout_rate=0.0, **eager)), "AutoModelForSeq2SeqLM", {}),
      ("t5_v1_1", "encdec", tf.T5ForConditionalGeneration(tf.T5Config(
          vocab_size=VOCAB, d_model=64, d_kv=16, d_ff=96, num_layers=2, num_decoder_layers=3,
          num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
          feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
          **eager)), "AutoModelForSeq2SeqLM", {}),
  ]


def _redraw(model, seed: int) -> None:
  """Weights of order one (transformers' std-0.02 init hides mapping errors): norm scales
  1 + 0.1 N, biases 0.1 N, tables N, matrices N / sqrt(fan in)."""
  import torch
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      if p.ndim == 1:
        p.copy_(0.1 * noise if name.endswith("bias") else 1.0 + 0.1 * noise)
      elif any(k in name for k in ("wte", "wpe", "embed", "shared", "relative_attention")):
        p.copy_(noise)
      else:  # GPT-2's Conv1D is (in, out); torch's Linear (out, in)
        fan_in = p.shape[0] if any(k in name for k in ("c_attn", "c_proj", "c_fc")) else p.shape[1]
        p.copy_(noise / fan_in ** 0.5)


def _inputs(family: str, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, VOCAB, (2, LENGTH)).astype(np.int32)
  if family == "decoder":
    return {"tokens_BL": tokens}
  mask = np.ones_like(tokens)
  mask[1, -5:] = 0  # padding at the end of the second row
  if family == "encoder":
    types = np.zeros_like(tokens)
    types[:, LENGTH // 2:] = 1
    return {"tokens_BL": tokens, "token_types_BL": types, "key_mask_BL": mask}
  return {"inputs_BL": tokens, "input_mask_BL": mask,
          "decoder_inputs_BT": rng.integers(0, VOCAB, (2, LENGTH - 4)).astype(np.int32)}


def _hf_logits(model, family: str, inputs: dict[str, np.ndarray]) -> np.ndarray:
  import torch
  kwargs = {CALL_NAMES[family][k]: torch.from_numpy(v.astype(np.int64))
            for k, v in inputs.items()}
  with torch.no_grad():
    return model.eval()(**kwargs).logits.numpy()


def _tokenizer(path: pathlib.Path) -> None:
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
  tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
  tokenizer.train_from_iterator(["the king spoke to the queen", "a young queen walked home"],
                                trainers.WordLevelTrainer(special_tokens=["</s>", "[UNK]"]))
  tokenizer.save(str(path))


def isoflop_logits(run: str, inputs_path: str, out_path: str) -> None:
  """Run by isoflop's Python (--isoflop_logits): the run's forward pass on the inputs."""
  import jax.numpy as jnp
  from isoflop.experiments import compress
  from isoflop.models import families
  from isoflop.train import hf_convert
  record = json.loads(pathlib.Path(run, "config.json").read_text())
  config = compress.run_config(record["config"])
  model = families.get(config.model.family).make_model(families.model_config(config))
  with np.load(inputs_path) as z:
    call = {k: jnp.asarray(z[k]) for k in z.files}
  logits = model.apply({"params": hf_convert.run_params(run, 0)}, **call)
  np.save(out_path, np.asarray(logits))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--isoflop_python", default=sys.executable,
                      help="the Python with isoflop installed (e.g. .venv/bin/python)")
  parser.add_argument("--isoflop_logits", nargs=3, metavar=("RUN", "INPUTS", "OUT"),
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.isoflop_logits:
    isoflop_logits(*args.isoflop_logits)
    return
  import torch
  import transformers
  transformers.logging.set_verbosity_error()
  transformers.utils.logging.disable_progress_bar()
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  isoflop = [args.isoflop_python, "-m", "isoflop.experiments.cli", "convert"]
  print(f"transformers {transformers.__version__}, torch {torch.__version__}")
  print(f"{'model':<8} {'orig vs reloaded':>17} {'reloaded vs isoflop':>20} "
        f"{'orig vs isoflop':>16} {'max |logits|':>13}")
  with tempfile.TemporaryDirectory() as tmp:
    for seed, (name, family, model, auto, save_options) in enumerate(_models()):
      torch.manual_seed(seed)
      model = model.to(torch.float32)
      _redraw(model, seed)
      hf_dir, run, back = (pathlib.Path(tmp, f"{name}_{part}") for part in ("hf", "run", "back"))
      model.save_pretrained(hf_dir, safe_serialization=True, **save_options)
      if name == "gpt2":
        _tokenizer(hf_dir / "tokenizer.json")
      for flags in ([f"--from_hf={hf_dir}", f"--workdir={run}"],
                    [f"--workdir={run}", f"--to_hf={back}"]):
        subprocess.run(isoflop + flags, check=True, env=env, stdout=subprocess.DEVNULL)
      inputs = _inputs(family, seed)
      np.savez(pathlib.Path(tmp, f"{name}_inputs.npz"), **inputs)
      subprocess.run([args.isoflop_python, __file__, "--isoflop_logits", str(run),
                      str(pathlib.Path(tmp, f"{name}_inputs.npz")),
                      str(pathlib.Path(tmp, f"{name}_logits.npy"))], check=True, env=env)
      ours = np.load(pathlib.Path(tmp, f"{name}_logits.npy"))[..., :VOCAB]
      original = _hf_logits(model, family, inputs)
      reloaded_model = getattr(transformers, auto).from_pretrained(back, attn_implementation="eager")
      reloaded = _hf_logits(reloaded_model, family, inputs)
      print(f"{name:<8} {np.abs(original - reloaded).max():>17.2e} "
            f"{np.abs(reloaded - ours).max():>20.2e} {np.abs(original - ours).max():>16.2e} "
            f"{np.abs(original).max():>13.1f}")
      if name == "gpt2":
        tokenizer = transformers.AutoTokenizer.from_pretrained(back)
        same = tokenizer("the queen spoke")["input_ids"] == transformers.AutoTokenizer \
            .from_pretrained(hf_dir)("the queen spoke")["input_ids"]
        print(f"{'':<8} tokenizer.json back with the run: AutoTokenizer gives the same ids: "
              f"{same}")


if __name__ == "__main__":
  main()
