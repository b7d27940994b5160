"""Fine-tuning: a language model's body under a fresh classification head (init_from),
freezing by name and by role, LoRA adapters and their merge, the play-classification source,
trainable/frozen counts, and bad input."""

import json
import re
import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isoflop.experiments import cli
from isoflop.experiments.configs import base, tiny
from isoflop.models import families, param_roles
from isoflop.models.encoder import EncoderConfig
from isoflop.train import build, finetune, init_from, loop, lora_export
from isoflop.train import data as data_lib
from isoflop.train import state as state_lib
from isoflop.train.data import documents, plays

K = 38  # plays
# One worker runs the module: its language models are pretrained once.
pytestmark = pytest.mark.xdist_group("finetune")

HEAD = ["params/classifier/bias", "params/classifier/kernel"]


def _config(family="decoder", task="causal_lm"):
  """A tiny run on the plays: causal LM (the encoder: masked LM) or classification."""
  c = tiny.get_config()
  c.steps, c.batch_size, c.seq_len, c.log_every = 4, 8, 16, 2
  c.model.d_model, c.optimizer.warmup_steps = 32, 1
  c.data.source = plays.SOURCE
  if family == "moe":
    c.model.update(num_experts=4, experts_per_token=2, expert_d_ff=32)
  elif family == "encoder":  # BERT-shaped; its vocabulary has masked LM's two special tokens
    c.model = base.family_model_block("encoder", EncoderConfig, vocab_size=258, d_model=32,
                                      n_heads=4, max_len=None)
    task = "masked_lm" if task == "causal_lm" else task
  c.task = task
  if task == "classification":
    c.model.num_classes = K
  return c


def _flat(tree) -> dict[str, np.ndarray]:
  return {finetune.path_name(p): np.asarray(v) for p, v in
          jax.tree_util.tree_leaves_with_path(jax.device_get(tree))}


_PRETRAINED: dict[str, tuple] = {}


@pytest.fixture
def pretrained(tmp_path_factory):
  """family -> (workdir, final params) of a language model trained on the training scenes."""
  def get(family):
    if family not in _PRETRAINED:
      workdir = str(tmp_path_factory.mktemp(f"lm_{family}"))
      result = loop.train(_config(family), workdir, progress=False)
      _PRETRAINED[family] = workdir, _flat(result.state.params)
    return _PRETRAINED[family]
  return get


def _initial_params(prepared):
  """The parameters a fresh run of ``prepared`` starts from (the loop's own initialization)."""
  with jax.set_mesh(prepared.mesh), nn.logical_axis_rules(prepared.rules):
    state = state_lib.create_state(
        prepared.task, prepared.tx, prepared.batch_shapes,
        state_lib.seed_keys(prepared.config.seed),
        jax.tree.map(lambda a: a.sharding, prepared.abstract_state))
  return _flat(state.params)


@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_init_from_a_language_model_loads_the_body_under_a_fresh_head(
    family, pretrained, tmp_path, capsys):
  source, lm_params = pretrained(family)
  c = _config(family, "classification")
  c.init_from, c.finetune.trainable, c.eval_every = source, "^classifier/", 4
  result = loop.train(c, str(tmp_path / "cls"))
  record = json.loads((tmp_path / "cls" / "config.json").read_text())
  assert record["initialized_from"]["fresh"] == HEAD
  params = _flat(result.state.params)
  body = {name for name in params if not name.startswith("classifier/")}
  assert record["initialized_from"]["loaded"] == len(body)
  for name in body:  # loaded from the LM run, and frozen: bitwise the LM's
    np.testing.assert_array_equal(params[name], lm_params[name])
  assert np.any(params["classifier/bias"] != 0)  # the head trained from zero biases
  head = 32 * K + K
  total = sum(v.size for v in params.values())
  assert record["param_counts"]["head"] == head and record["param_counts"]["total"] == total
  assert (record["n_params_trainable"], record["n_params_frozen"]) == (head, total - head)
  assert f"trainable={head:,}, frozen={total - head:,}" in capsys.readouterr().out
  assert 0.0 <= result.rows[-1]["eval_accuracy"] <= 1.0


def _expected_trainable(name, names, regex, roles):
  role = param_roles.role_of(names).kind
  return (regex is None or re.search(regex, name)) and (roles is None or role in roles)


@pytest.mark.parametrize("family,regex,roles", [("decoder", "attention/", None),
                                                ("moe", None, "vector"),
                                                ("encoder", "^layers/", "hidden,vector")])
def test_frozen_parameters_stay_bitwise_while_the_others_move(family, regex, roles, tmp_path):
  c = _config(family)
  c.finetune.trainable, c.finetune.trainable_roles = regex, roles
  prepared = build.prepare(c)  # weight decay 0.1 is on: a frozen matrix would still shrink
  before = _initial_params(prepared)
  after = _flat(loop.run(prepared, str(tmp_path / "run"), progress=False).state.params)
  specs = {finetune.path_name(p): tuple(s) for p, s in jax.tree_util.tree_leaves_with_path(
      nn.get_partition_spec(state_lib.abstract_variables(prepared.task,
                                                         prepared.batch_shapes))["params"],
      is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))}
  trains = {n: bool(_expected_trainable(n, specs[n], regex, roles)) for n in before}
  assert any(trains.values()) and not all(trains.values())
  for name, trainable in trains.items():
    if trainable:
      assert not np.array_equal(before[name], after[name]), name
    else:
      np.testing.assert_array_equal(before[name], after[name], err_msg=name)
  size = sum(v.size for n, v in before.items() if trains[n])
  assert prepared.record["n_params_trainable"] == size
  assert prepared.record["n_params_frozen"] == sum(v.size for v in before.values()) - size


def _model_and_tokens(family):
  """The classifier of ``_config`` (the vocabulary of its pretraining run) and some tokens."""
  c = _config(family, "classification")
  c.model.vocab_size = 258 if family == "encoder" else 256
  model = families.family_of(c).make_model(families.model_config(c))
  return model, jax.random.randint(jax.random.key(1), (4, 16), 0, 256)


@pytest.mark.parametrize("family,expected", [
    ("decoder", {"attention/query_kernel", "attention/key_kernel", "attention/value_kernel",
                 "attention/out_kernel", "mlp/wi/kernel", "mlp/wo/kernel"}),
    ("moe", {"attention/query_kernel", "attention/key_kernel", "attention/value_kernel",
             "attention/out_kernel", "moe/wi", "moe/wo"}),
    ("encoder", {"attention/query_kernel", "attention/key_kernel", "attention/value_kernel",
                 "attention/out_kernel", "mlp/wi/kernel", "mlp/wo/kernel"})])
def test_lora_starts_as_its_base_model_and_merges_to_w_plus_scaled_ab(family, expected):
  model, tokens_BL = _model_and_tokens(family)
  boxed = jax.eval_shape(model.init, jax.random.key(0), tokens_BL)
  settings = finetune.Settings(lora_rank=4, lora_alpha=8.0)
  targets = finetune.lora_targets(nn.get_partition_spec(boxed)["params"], settings, family)
  assert {t.removeprefix("layers/") for t in targets} == expected
  lora = finetune.LoraModel(model, targets, 4, settings.scale)
  key = jax.random.key(0)  # compiled as the trainer's own initialization is: briefly
  params = jax.jit(lambda key: nn.meta.unbox(lora.init({"params": key}, tokens_BL))).lower(
      key).compile(compiler_options=state_lib.ONE_OFF_COMPILE)(key)["params"]
  base_params = {k: v for k, v in params.items() if k != finetune.LORA}
  lora_BK, base_BK = jax.jit(lambda p, b: (lora.apply({"params": p}, tokens_BL),
                                           model.apply({"params": b}, tokens_BL)))(
      params, base_params)
  np.testing.assert_array_equal(lora_BK, base_BK)  # B = 0: exactly the base model
  # With B nonzero, the merged kernel is W + (alpha / r) A B, each layer / expert apart.
  adapters = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(jax.random.key(2), x.shape),
                          params[finetune.LORA])
  merged = _flat(finetune.merge_lora({**base_params, finetune.LORA: adapters}, settings.scale))
  flat_adapters, flat_base = _flat(adapters), _flat(base_params)
  for target in targets:
    w, a, b = flat_base[target], flat_adapters[f"{target}/a"], flat_adapters[f"{target}/b"]
    copies = a.ndim + b.ndim - 2 - w.ndim
    lead = w.shape[:copies]
    a_CIR = a.reshape(int(np.prod(lead)), -1, a.shape[-1])
    b_CRO = b.reshape(int(np.prod(lead)), b.shape[copies], -1)
    expected_w = w + settings.scale * np.matmul(a_CIR, b_CRO).reshape(w.shape)
    np.testing.assert_allclose(merged[target], expected_w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["decoder", "encoder"])
def test_lora_trains_only_adapters_and_head_on_the_mesh_and_exports_a_dense_run(
    family, pretrained, tmp_path):
  source, lm_params = pretrained(family)
  c = _config(family, "classification")
  c.init_from, c.finetune.lora.rank, c.finetune.lora.alpha = source, 4, 8.0
  c.mesh.update(data=2, fsdp=2, tensor=2)
  result = loop.train(c, str(tmp_path / "lora"), progress=False)
  record = json.loads((tmp_path / "lora" / "config.json").read_text())
  assert record["finetune"]["lora"] == {"rank": 4, "alpha": 8.0,
                                        "targets": finetune.DEFAULT_LORA_TARGETS}
  params = _flat(result.state.params)
  adapters = [n for n in params if n.startswith("lora/")]
  trained = sum(params[n].size for n in adapters) + 32 * K + K
  assert record["n_params_trainable"] == trained
  for name, value in params.items():
    if name in lm_params:  # the base: frozen at the LM's weights
      np.testing.assert_array_equal(value, lm_params[name], err_msg=name)
  assert all(np.any(params[n] != 0) for n in adapters if n.endswith("/b"))  # B moved from 0
  kernel = result.state.params["layers"]["attention"]["query_kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)

  out = tmp_path / "merged"
  merged = lora_export.export_merged(c, str(tmp_path / "lora"), 4, str(out))
  assert len(merged["adapters"]) == len(adapters) // 2
  dense = lora_export._saved_params(str(out), 4)
  assert finetune.LORA not in dense
  model, tokens_BL = _model_and_tokens(family)
  targets = tuple(sorted({n.removeprefix("lora/").rsplit("/", 1)[0] for n in adapters}))
  lora = finetune.LoraModel(model, targets, 4, 2.0)
  lora_BK, dense_BK = jax.jit(lambda p, d: (lora.apply({"params": p}, tokens_BL),
                                            model.apply({"params": d}, tokens_BL)))(
      jax.device_get(result.state.params), dense)
  np.testing.assert_allclose(dense_BK, lora_BK, rtol=1e-5, atol=1e-5)
  # The export is a plain dense run: init_from loads every parameter of the dense model.
  shapes = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), tokens_BL)))
  plan = init_from.plan(str(out), types.SimpleNamespace(params=shapes["params"], model_state={}))
  assert plan.fresh == () and plan.ignored == ()
  record = json.loads((out / "config.json").read_text())
  assert record["merged_from"]["step"] == 4 and "finetune" not in record
  assert record["n_params_frozen"] == 0


def test_the_play_source_holds_out_whole_scenes_with_the_right_labels():
  c = _config(task="classification")
  source = data_lib.make_source(c)
  assert not set(source.train_scenes) & set(source.eval_scenes)
  assert set(source.eval_labels) == set(range(K)) == set(source.train_labels)
  markdown = [m.encode() for m in documents.shakespeare().read()]
  rng = np.random.default_rng(0)
  for inputs, labels in [(source.train_inputs, source.train_labels),
                         (source.eval_inputs, source.eval_labels)]:
    for row in rng.choice(len(labels), 40, replace=False):  # each passage is in its play
      passage = bytes(inputs[row].astype(np.uint8))
      assert passage in markdown[labels[row]]
      assert b"#" not in passage  # no heading (the title) is part of a passage
  # Deterministic given the seed; another seed reorders the training passages only.
  np.testing.assert_array_equal(source.batch(range(8))["inputs"],
                                data_lib.make_source(c).batch(range(8))["inputs"])
  other = c.copy_and_resolve_references()
  other.seed, other.seq_len = 1, 32
  reordered = data_lib.make_source(other)
  assert set(reordered.eval_scenes) == set(source.eval_scenes)  # neither seed nor seq_len
  assert not np.array_equal(reordered.batch(range(8))["label"], source.batch(range(8))["label"])
  # Past the held-out passages: padding rows, weight 0.
  tail = source.eval_batch(np.arange(source.num_eval_examples - 1, source.num_eval_examples + 2))
  assert list(tail["label"][1:]) == [-1, -1] and tail["label"][0] >= 0
  # The causal-LM form reads the training scenes' text only.
  lm = data_lib.make_source(_config())
  train_text = bytes(np.asarray(lm.train_tokens, np.uint8))
  eval_text = bytes(np.asarray(lm.eval_tokens, np.uint8))
  scenes = plays.read_scenes(c.data.eval_fraction)
  for i in np.flatnonzero(scenes.held_out):
    snippet = scenes.texts[i][200:400].encode()
    assert snippet not in train_text and snippet in eval_text
  for i in np.flatnonzero(~scenes.held_out)[::50]:
    assert scenes.texts[i][-200:].encode() in train_text


BAD_INPUTS = {
    "invalid_regex": (["--config.finetune.trainable=(attention"],
                      "is not a valid regular expression"),
    "regex_matching_nothing": (["--config.finetune.trainable=no_such_param"],
                               "matches no parameter"),
    "unknown_role": (["--config.finetune.trainable_roles=bias"], "names unknown roles"),
    "lora_rank_zero": (["--config.finetune.lora.rank=0"], "finetune.lora.rank=0 must be"),
    "lora_without_matching_kernels": (["--config.finetune.lora.rank=4",
                                       "--config.finetune.lora.targets=^embed"],
                                      "matches no hidden matrix"),
    "lora_on_a_family_without_attention": (
        ["--config=experiments/configs/lstm_tiny.py", "--config.finetune.lora.rank=4"],
        "matches no hidden matrix of model.family='lstm'"),
    "one_class": (["--config.model.num_classes=1"], "num_classes=1 must be at least 2"),
    "classification_without_classes": (["--config=experiments/configs/plays_lm.py",
                                        "--config.task=classification"],
                                       "needs model.num_classes"),
    "head_without_classification": (["--config.task=causal_lm"], "puts a classification head"),
    "init_from_incompatible_shapes": (["--config.model.d_model=48"], "differ in shape"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(name, pretrained, tmp_path, capsys):
  args, expected = BAD_INPUTS[name]
  if name == "init_from_incompatible_shapes":
    args = args + [f"--config.init_from={pretrained('decoder')[0]}"]
  if not args[0].startswith("--config="):
    args = ["--config=experiments/configs/plays_tiny.py", "--config.seq_len=16",
            "--config.batch_size=8", "--config.model.d_model=32",
            "--config.optimizer.warmup_steps=1", *args]
  workdir = tmp_path / "run"
  assert cli.main(["isoflop", "train", f"--workdir={workdir}", *args, "--config.steps=2"]) == 2
  lines = [line for line in capsys.readouterr().err.splitlines() if "isoflop train" in line]
  assert len(lines) == 1 and expected in lines[0], lines
  assert not workdir.exists()
