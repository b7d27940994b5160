"""Sweeps: expansion into members, the shape rule, running, skipping, failing, resuming."""

import json
import math
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import REPO
from isoflop.experiments import shapes, sweep_definition
from isoflop.models import counting, transformer

SWEEP = """
import ml_collections

def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = {kind!r}
  s.config = "experiments/configs/tiny.py"
  s.n_convention = "chinchilla"
  s.flop_convention = "chinchilla"
  s.budgets = (2e9, 6e9)
  s.sizes_per_budget = 2
  s.size_span = 4.0
  s.tokens_per_param = 20.0
  s.sizes = (20000.0, 40000.0)
  s.grid = {{"optimizer": {{"lr": {lrs!r}}}}}
  s.shape = ml_collections.ConfigDict({{"aspect_ratio": 32.0, "head_size": 8}})
  s.overrides = {{"batch_size": 8, "seq_len": 32, "log_every": 5, "eval_every": 0,
                 "checkpoint_every": 10, "steps": {steps},
                 "optimizer": {{"warmup_steps": 2}}}}
  return s
"""


def _write_sweep_text(kind="isoflop", lrs=(1e-3, 3e-3), steps=30):
  return SWEEP.format(kind=kind, lrs=lrs, steps=steps)


def _write_sweep(tmp_path, kind="isoflop", lrs=(1e-3, 3e-3), steps=30):
  path = tmp_path / f"{kind}.py"
  path.write_text(_write_sweep_text(kind, lrs, steps))
  return str(path)


def _expand(path):
  sweep = sweep_definition.load(path)
  return sweep, sweep_definition.members(sweep, sweep_definition.base_config(sweep, path))


def test_shape_rule_gives_exact_counts_of_real_models():
  base = transformer.TransformerConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4)
  for target in (5e3, 3e4, 2e5):
    cfg, n = shapes.shape_for(target, base, aspect_ratio=32, head_size=8,
                              convention="chinchilla")
    assert n == counting.n_by_convention(cfg)["chinchilla"]
    assert cfg.d_model % 8 == 0 and cfg.n_layers == max(1, round(cfg.d_model / 32))
    assert abs(math.log(n / target)) < 0.5


def test_isoflop_members_meet_their_budgets(tmp_path):
  sweep, members = _expand(_write_sweep(tmp_path))
  assert [m.budget for m in members] == [2e9, 2e9, 6e9, 6e9]
  for m in members:
    config = sweep_definition.base_config(sweep, _write_sweep(tmp_path))
    from isoflop.experiments import sweep_estimate
    counts = sweep_estimate.member_counts(sweep, config, m)
    assert counts["C"] == pytest.approx(m.budget, rel=0.05)  # steps are whole numbers
  sizes = [m.overrides["model.d_model"] for m in members]
  assert sizes[0] < sizes[1] and sizes[2] < sizes[3]


@pytest.mark.parametrize("config_name", ["moe_tiny", "lstm_tiny", "bert_tiny", "t5_tiny",
                                         "vit_tiny", "resnet_tiny"])
def test_other_families_are_sized_by_the_shape_rule(tmp_path, config_name):
  """A sweep over any family (a routed decoder, an LSTM, an encoder, an encoder-decoder, a ViT,
  a ResNet) sizes its members through the family's own shape rule and accounting (the MoE by
  its active-path FLOPs, the vision families per image), and each member's overrides give a
  valid config of the family."""
  from isoflop.experiments import sweep_estimate
  from isoflop.models import families
  path = tmp_path / f"{config_name}.py"
  text = _write_sweep_text().replace("experiments/configs/tiny.py",
                                     f"experiments/configs/{config_name}.py")
  if config_name in ("vit_tiny", "resnet_tiny"):  # per-image FLOPs: budgets of more images
    text = text.replace("s.budgets = (2e9, 6e9)", "s.budgets = (2e11, 6e11)")
  path.write_text(text)
  sweep, members = _expand(str(path))
  config = sweep_definition.base_config(sweep, str(path))
  sizes = []
  for m in members:
    counts = sweep_estimate.member_counts(sweep, config, m)
    assert counts["C"] == pytest.approx(m.budget, rel=0.05)
    member_config = sweep_definition.resolved_config(config, m)
    cfg = families.model_config(member_config)
    family = families.get(member_config.model.family)
    assert type(cfg) is family.config_class
    sizes.append(family.n_by_convention(cfg)["chinchilla"])
  assert sizes[0] < sizes[1] and sizes[2] < sizes[3]


def test_ladder_and_grid_members(tmp_path):
  sweep, ladder = _expand(_write_sweep(tmp_path, "ladder"))
  assert len(ladder) == 2 and ladder[0].overrides["steps"] < ladder[1].overrides["steps"]
  _, grid = _expand(_write_sweep(tmp_path, "grid", lrs=(1e-3, 3e-3, 1e-2)))
  assert [m.overrides for m in grid] == [{"optimizer.lr": v} for v in (1e-3, 3e-3, 1e-2)]


def test_zipped_keys_advance_together(tmp_path):
  path = tmp_path / "zipped.py"
  text = _write_sweep_text("grid", lrs=(1e-3, 3e-3))
  text = text.replace('s.n_convention = "chinchilla"', "").replace(
      's.flop_convention = "chinchilla"', "")
  path.write_text(text + """
get_plain_sweep = get_sweep

def get_sweep():
  s = get_plain_sweep()
  s.zipped = {"model": {"d_model": [64, 128], "n_heads": [4, 8]}}
  return s
""")
  sweep, grid = _expand(str(path))
  assert sweep.flop_convention == "chinchilla"  # the default of a sweep that names none
  assert [m.overrides for m in grid] == [
      {"model.d_model": d, "model.n_heads": h, "optimizer.lr": lr}
      for d, h in ((64, 4), (128, 8)) for lr in (1e-3, 3e-3)]
  assert len({m.name for m in grid}) == 4
  path.write_text(path.read_text().replace("[4, 8]", "[4, 8, 16]"))
  with pytest.raises(ValueError, match="must have one length"):
    _expand(str(path))


def _sweep_cli(*args, **kwargs):
  return subprocess.run([sys.executable, "-m", "isoflop.experiments.cli", "sweep", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=900, **kwargs)


def test_sweep_runs_skips_finished_members_and_records_failures(tmp_path):
  # lr=-1 is refused by its member's run: that member fails, the others finish.
  path = _write_sweep(tmp_path, "grid", lrs=(3e-3, -1.0, 1e-2))
  out = _sweep_cli(f"--sweep={path}", f"--workdir={tmp_path}/run", "--workers=2")
  assert out.returncode == 1, out.stderr
  assert "2/3 members done" in out.stdout
  table = pd.read_csv(tmp_path / "run" / "runs.csv")
  assert sorted(table.status) == ["done", "done", "failed"]
  done = table[table.status == "done"]
  assert (done.D == 30 * 8 * 32).all() and (done.C_chinchilla > 0).all()
  assert done.final_train_loss.notna().all()
  failed = table[table.status == "failed"].name.item()
  assert "lr=-1.0 must be positive" in (tmp_path / "run" / failed / "status.json").read_text()
  before = {n: (tmp_path / "run" / n / "metrics.jsonl").read_text() for n in done.name}
  again = _sweep_cli(f"--sweep={path}", f"--workdir={tmp_path}/run", "--workers=2")
  assert again.returncode == 1
  for name, text in before.items():  # finished members are skipped, untouched
    assert (tmp_path / "run" / name / "metrics.jsonl").read_text() == text


def test_a_stopped_sweep_resumes_its_members(tmp_path):
  path = _write_sweep(tmp_path, "grid", lrs=(1e-3, 2e-3), steps=150)
  overrides = ["--workdir=" + str(tmp_path / "run")]
  process = subprocess.Popen([sys.executable, "-m", "isoflop.experiments.cli", "sweep",
                              f"--sweep={path}", *overrides], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and process.poll() is None:
    if any((tmp_path / "run").glob("*/metrics.jsonl")):
      break
    time.sleep(0.05)
  process.send_signal(signal.SIGTERM)
  out, err = process.communicate(timeout=300)
  assert process.returncode == 75, err
  table = pd.read_csv(tmp_path / "run" / "runs.csv")
  assert set(table.status) - {"done"}, "the stop came too late to interrupt anything"
  assert set(table.status) <= {"done", "interrupted", "pending"}, table.status  # none failed
  assert "sweep" in out and "members done" in out
  rerun = _sweep_cli(f"--sweep={path}", *overrides)
  assert rerun.returncode == 0, rerun.stderr
  assert set(pd.read_csv(tmp_path / "run" / "runs.csv").status) == {"done"}


def test_dry_run_lists_members(tmp_path):
  out = _sweep_cli(f"--sweep={_write_sweep(tmp_path)}", "--dry_run")
  assert out.returncode == 0, out.stderr
  assert "4 members" in out.stdout and "est. s" in out.stdout


@pytest.mark.parametrize("content, message", [
    ("x = 1\n", "does not define get_sweep()"),
    ("def get_sweep():\n  return {'kind': 'isoflop'}\n", "must return a ConfigDict"),
])
def test_bad_sweep_files(tmp_path, content, message):
  path = tmp_path / "bad.py"
  path.write_text(content)
  out = _sweep_cli(f"--sweep={path}", f"--workdir={tmp_path}/run")
  assert out.returncode == 2
  assert len(out.stderr.strip().splitlines()) == 1 and message in out.stderr
  assert not (tmp_path / "run").exists()


def test_missing_sweep_file(tmp_path):
  out = _sweep_cli("--sweep=experiments/sweeps/nope.py", f"--workdir={tmp_path}/run")
  assert out.returncode == 2 and "not found" in out.stderr


def test_wsd_branches_equal_runs_trained_alone_and_save_compute(tmp_path):
  import numpy as np
  import orbax.checkpoint as ocp

  def ladder(branching):
    text = SWEEP.format(kind="ladder", lrs=(1e-3,), steps=30).replace(
        "s.sizes = (20000.0, 40000.0)", "s.sizes = (20000.0,)").replace(
        "s.tokens_per_param = 20.0", "s.tokens_per_param = (2.0, 4.0)").replace(
        '"warmup_steps": 2', '"warmup_steps": 2, "schedule": "wsd"')
    text = text.replace("  return s\n", f"  s.wsd_branching = {branching}\n  return s\n")
    path = tmp_path / f"ladder_{branching}.py"
    path.write_text(text)
    return str(path)

  for branching in (True, False):
    out = _sweep_cli(f"--sweep={ladder(branching)}", f"--workdir={tmp_path}/{branching}")
    assert out.returncode == 0, out.stderr + out.stdout
  branched = pd.read_csv(tmp_path / "True" / "runs.csv")
  assert len(branched) == 2 and branched.branched.all()
  summary = json.loads((tmp_path / "True" / "sweep_summary.json").read_text())
  assert summary["wsd_branching"]["saved_flops"] > 0
  for name in branched.name:  # the final parameters are those of the run trained alone
    finals = []
    for branching in ("True", "False"):
      directory = tmp_path / branching / name / "checkpoints"
      last = max(int(d.name) for d in directory.iterdir() if d.name.isdigit())
      finals.append(jax_leaves(ocp.StandardCheckpointer().restore(directory / str(last) /
                                                                  "state")))
    for a, b in zip(*finals):
      np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
  import jax
  import numpy as np
  return [np.asarray(x) for x in jax.tree.leaves(tree["params"])]


def test_final_train_loss_is_the_mean_over_the_last_log_interval(tmp_path):
  from isoflop.experiments import sweep
  member = sweep_definition.Member(name="m", overrides={}, budget=None, target_params=None)
  (tmp_path / "m").mkdir()

  def row_of(*rows):
    (tmp_path / "m" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return sweep.runs_row(str(tmp_path), member)

  row = row_of({"step": 5, "loss": 3.0, "loss_mean": 3.4},
               {"step": 10, "loss": 2.0, "loss_std": 0.3, "loss_mean": 2.5, "loss_mean_std": 0.1},
               {"step": 10, "eval_loss": 2.2})
  assert (row["final_train_loss"], row["final_train_loss_std"]) == (2.5, 0.1)
  assert row["final_eval_loss"] == 2.2
  old = row_of({"step": 10, "loss": 2.0, "loss_std": 0.3})  # logged before loss_mean existed
  assert (old["final_train_loss"], old["final_train_loss_std"]) == (2.0, 0.3)
