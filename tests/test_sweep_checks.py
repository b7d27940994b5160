"""Sweep members are checked before anything runs, grid members have safe names, and the
dry-run estimate counts each member's start-up. All in-process: no member is trained."""

import json
import os
import re
import subprocess

import pytest

from conftest import REPO
from isoflop.experiments import sweep_definition, sweep_estimate

SWEEP = """
import ml_collections

def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "isoflop"
  s.config = "experiments/configs/tiny.py"
  s.budgets = (2e9, 6e9)
  s.sizes_per_budget = 2
  s.size_span = 4.0
  s.tokens_per_param = 20.0
  s.sizes = (20000.0, 40000.0)
  s.grid = {"optimizer": {"lr": [1e-3, 3e-3]}}
  s.shape = ml_collections.ConfigDict({"aspect_ratio": 32.0, "head_size": 8})
  s.overrides = {"batch_size": 8, "seq_len": 32, "steps": 30,
                 "optimizer": {"warmup_steps": 2}}
  return s
"""


def _load(tmp_path, **changes):
  """The sweep above with ``changes`` (sweep keys, as Python source) applied, and its base
  config."""
  text = SWEEP.replace("  return s\n", "".join(f"  s.{k} = {v}\n" for k, v in changes.items())
                       + "  return s\n")
  path = tmp_path / "sweep.py"
  path.write_text(text)
  sweep = sweep_definition.load(str(path))
  return sweep, sweep_definition.base_config(sweep, str(path))


def _refusal(tmp_path, **changes) -> str:
  sweep, config = _load(tmp_path, **changes)
  with pytest.raises(ValueError) as error:
    sweep_definition.members(sweep, config)
  message = str(error.value)
  assert "\n" not in message
  return message


@pytest.mark.parametrize("name", ["shakespeare_isoflop", "mup_lr_transfer"])
def test_the_sweep_files_here_pass_the_checks(name):
  path = str(REPO / "experiments" / "sweeps" / f"{name}.py")
  sweep = sweep_definition.load(path)
  config = sweep_definition.base_config(sweep, path)
  members = sweep_definition.members(sweep, config)
  assert len(members) == {"shakespeare_isoflop": 15, "mup_lr_transfer": 42}[name]
  assert sweep_definition.member_problems(sweep, config, members) == {}


def test_load_records_the_check_limits():
  path = str(REPO / "experiments" / "sweeps" / "shakespeare_isoflop.py")
  sweep = sweep_definition.load(path)
  assert (sweep.budget_tolerance, sweep.size_tolerance, sweep.min_steps) == (1.5, 3.0, 20)


def test_budgets_too_small_for_one_step_are_refused(tmp_path):
  # 1e6 FLOPs is less than one step of the smallest model: each member would run one step
  # at many times its budget, on a model far above its target size.
  message = _refusal(tmp_path, budgets="(1e6,)")
  assert message.startswith("2 of 2 sweep members would not be usable: C1e06_N")
  assert "1 step, fewer than min_steps=20" in message
  assert re.search(r"FLOPs for a budget of 1e\+06 \([\d.]+x\)", message)
  assert re.search(r"N=[\d,]+ for a target of", message)
  assert "raise the budgets" in message and "loosen min_steps" in message


def test_only_the_first_three_members_are_named(tmp_path):
  message = _refusal(tmp_path, budgets="(1e6, 2e6, 4e6)")
  assert message.startswith("6 of 6 ") and "and 3 more." in message
  assert message.count("(1 step") == 3


def test_min_steps_is_a_sweep_key(tmp_path):
  overrides = '{"steps": 10, "optimizer": {"warmup_steps": 2}}'
  assert "10 steps, fewer than min_steps=20" in _refusal(tmp_path, kind='"grid"',
                                                         overrides=overrides)
  sweep, config = _load(tmp_path, kind='"grid"', overrides=overrides, min_steps=10)
  assert len(sweep_definition.members(sweep, config)) == 2


def test_runs_that_are_all_warmup_are_refused(tmp_path):
  overrides = '{"steps": 30, "optimizer": {"warmup_steps": %d}}'
  message = _refusal(tmp_path, kind='"grid"', overrides=overrides % 30)
  assert "30 steps, none after the 30 warmup steps" in message
  assert "lower optimizer.warmup_steps" in message
  sweep, config = _load(tmp_path, kind='"grid"', overrides=overrides % 29)
  assert len(sweep_definition.members(sweep, config)) == 2


def test_budget_tolerance_bounds_the_compute_of_a_member(tmp_path):
  sweep, config = _load(tmp_path)
  member = sweep_definition.members(sweep, config)[0]
  twice = sweep_definition.Member(member.name, member.overrides, 2 * member.budget,
                                  member.target_params)
  problems = sweep_definition.member_problems(sweep, config, [twice])
  assert "short" in dict(problems[member.name])
  assert "for a budget of 4e+09 (0.5" in dict(problems[member.name])["short"]
  sweep.budget_tolerance = 2.5
  assert sweep_definition.member_problems(sweep, config, [twice]) == {}


def test_ladder_members_must_train_near_their_target_tokens(tmp_path):
  # 20000 parameters x 0.001 tokens each: 20 tokens, but one step is already 256.
  message = _refusal(tmp_path, kind='"ladder"', sizes="(20000.0,)", tokens_per_param="0.001",
                     min_steps=1)
  assert "256 tokens for a target of 20 (12.8x)" in message
  sweep, config = _load(tmp_path, kind='"ladder"', sizes="(20000.0,)", tokens_per_param="0.001",
                        min_steps=1, budget_tolerance=13.0)
  assert len(sweep_definition.members(sweep, config)) == 1


def test_targets_below_the_smallest_model_are_refused(tmp_path):
  # Enough steps, but the shape rule's smallest model is far above a 100-parameter target.
  message = _refusal(tmp_path, kind='"ladder"', sizes="(100.0,)", tokens_per_param="1000.0")
  assert re.search(r"N=[\d,]+ for a target of 100 \([\d.]+x\)", message)
  assert "aim at sizes the shape rule can build" in message
  sweep, config = _load(tmp_path, kind='"ladder"', sizes="(100.0,)", tokens_per_param="1000.0",
                        size_tolerance=1000.0)
  assert len(sweep_definition.members(sweep, config)) == 1


def test_repeated_members_are_refused(tmp_path):
  message = _refusal(tmp_path, kind='"grid"', grid='{"optimizer": {"lr": [1e-3, 1e-3]}}')
  assert message.startswith("1 of 2 ")
  assert "lr0.001 (the same run as lr0.001)" in message
  assert "drop the budgets, sizes or grid values that repeat" in message
  assert "loosen" not in message  # no limit would let a repeat through
  # Two sizes the shape rule gives the same model: one name, so one directory for two runs.
  message = _refusal(tmp_path, kind='"ladder"', sizes="(20000.0, 20100.0)")
  assert "(the same name, so the same directory, as another member)" in message


def test_a_wsd_trunk_is_not_held_to_min_steps(tmp_path):
  sweep, config = _load(tmp_path)
  trunk = sweep_definition.Member("stable_d8_L1", {"steps": 5}, None, None, is_stable_run=True)
  assert sweep_definition.member_problems(sweep, config, [trunk]) == {}
  alone = sweep_definition.Member("alone", {"steps": 5}, None, None)
  assert "alone" in sweep_definition.member_problems(sweep, config, [alone])


@pytest.mark.parametrize("key, value", [("budget_tolerance", "0.5"), ("size_tolerance", "'x'"),
                                        ("min_steps", "0"), ("min_steps", "2.5")])
def test_bad_check_limits(tmp_path, key, value):
  assert f"the sweep's {key} must be" in _refusal(tmp_path, **{key: value})


def test_grid_member_names_are_safe_unique_and_readable():
  path = str(REPO / "experiments" / "sweeps" / "mup_lr_transfer.py")
  sweep = sweep_definition.load(path)
  members = sweep_definition.members(sweep, sweep_definition.base_config(sweep, path))
  names = [m.name for m in members]
  assert len(set(names)) == len(names)
  assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in names)
  assert names[0] == "d_model64_n_heads4_parametrizationsp_lr0.00048828125"
  name = sweep_definition.grid_member_name
  assert name({"optimizer.lr": -1.0}) == "lr-1.0"
  assert name({"model.x": 1, "optimizer.x": 2}) == "model.x1_optimizer.x2"  # shared last part
  tuple_names = {name({"model.window": v}) for v in ((1, 2), [1, 2], (1, 2, 3))}
  assert len(tuple_names) == 3
  assert all(re.fullmatch(r"window-1-2(-3)?-[0-9a-f]{6}", n) for n in tuple_names)
  assert name({"model.window": (1, 2)}) == name({"model.window": (1, 2)})  # stable
  assert name({}) == "base"


def test_legacy_grid_member_dirs_are_renamed_not_run_again(tmp_path):
  sweep, config = _load(tmp_path, kind='"grid"',
                        zipped='{"model": {"d_model": [32], "n_heads": [2]}}')
  members = sweep_definition.members(sweep, config)
  assert [sweep_definition.legacy_grid_name(m.overrides) for m in members] == [
      "d_model=32,n_heads=2,lr=0.001", "d_model=32,n_heads=2,lr=0.003"]
  run = tmp_path / "run"
  (run / "d_model=32,n_heads=2,lr=0.001").mkdir(parents=True)
  (run / "d_model=32,n_heads=2,lr=0.001" / "status.json").write_text('{"status": "done"}')
  renamed = sweep_definition.adopt_legacy_member_dirs(str(run), sweep, members)
  assert renamed == [("d_model=32,n_heads=2,lr=0.001", "d_model32_n_heads2_lr0.001")]
  assert sorted(os.listdir(run)) == ["d_model32_n_heads2_lr0.001"]
  assert (run / "d_model32_n_heads2_lr0.001" / "status.json").exists()
  assert sweep_definition.adopt_legacy_member_dirs(str(run), sweep, members) == []
  (run / "d_model=32,n_heads=2,lr=0.001").mkdir()
  with pytest.raises(ValueError, match="under both its old name"):
    sweep_definition.adopt_legacy_member_dirs(str(run), sweep, members)


def test_timing_splits_wall_time_into_startup_and_steady_training():
  rows = [{"step": 10, "step_time_s": 0.5}, {"step": 20, "step_time_s": 0.1},
          {"step": 20, "eval_loss": 3.0}]
  timing = sweep_estimate.timing_from_run("m", 12.0, rows, flops_per_step=1e6, steps=20)
  assert timing.startup_s == pytest.approx(12.0 - 20 * 0.1)  # the slow first interval too
  assert timing.seconds_per_flop == pytest.approx(0.1 / 1e6)


def test_the_timed_run_is_timed_from_process_start_to_exit(tmp_path, monkeypatch):
  sweep, config = _load(tmp_path, kind='"grid"', overrides='{"steps": 30, "eval_every": 10}')
  member = sweep_definition.members(sweep, config)[0]
  commands = []

  def fake_run(command, **kwargs):  # a member run that writes what isoflop train writes
    commands.append(command)
    workdir = next(a.split("=", 1)[1] for a in command if a.startswith("--workdir="))
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({"step": 20, "step_time_s": 0.0}) + "\n")
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump({"flops_per_step": {"chinchilla": 1e6}}, f)
    return subprocess.CompletedProcess(command, 0, "", "")

  monkeypatch.setattr(sweep_estimate.subprocess, "run", fake_run)
  timing = sweep_estimate.time_member(sweep, config, member)
  assert timing.startup_s > 0 and timing.member == member.name
  flags = set(commands[0])
  # Its evaluation and checkpoint at the end only, outside the timed steps, as in a member.
  assert {"--config.steps=20", "--config.eval_every=1000000000",
          "--config.checkpoint_every=1000000000"} <= flags


def _report(tmp_path, capsys, members_of=None, timing=None, **changes):
  sweep, config = _load(tmp_path, **changes)
  members = sweep_definition.members(sweep, config)
  members = members_of(members) if members_of else members
  rows = sweep_estimate.report(sweep, config, members, measure=lambda *a: timing)
  return rows, capsys.readouterr().out


def test_the_estimate_adds_each_members_startup_to_its_training(tmp_path, capsys):
  timing = sweep_estimate.Timing("m", seconds_per_flop=1e-9, startup_s=7.0)
  rows, out = _report(tmp_path, capsys, timing=timing)
  header, *lines, summary = out.strip().splitlines()
  assert header.split()[-6:] == ["start", "s", "train", "s", "est.", "s"]
  assert len(lines) == 4
  for row in rows:
    assert row["startup_s"] == 7.0
    assert row["train_time_s"] == pytest.approx(row["C"] * 1e-9)
    assert row["est_time_s"] == pytest.approx(7.0 + row["C"] * 1e-9)
  training = sum(r["C"] for r in rows) * 1e-9
  assert f"estimated time {4 * 7 + training:.0f} s on one worker" in summary
  assert f"= 4 members x 7.0 s start-up + {training:.0f} s training" in summary


def test_a_wsd_branch_is_estimated_from_its_branch_point(tmp_path, capsys):
  timing = sweep_estimate.Timing("m", seconds_per_flop=1e-9, startup_s=0.0)

  def branched(members):
    m = members[0]
    return [sweep_definition.Member(m.name, m.overrides, m.budget, m.target_params,
                                    branch_of="trunk", branch_step=m.overrides["steps"] // 4)]

  rows, _ = _report(tmp_path, capsys, members_of=branched, timing=timing)
  assert rows[0]["train_time_s"] == pytest.approx(rows[0]["C"] * 0.75 * 1e-9, rel=0.02)


def test_one_member_is_one_member_and_a_failed_timing_says_so(tmp_path, capsys):
  rows, out = _report(tmp_path, capsys, kind='"grid"', grid='{"optimizer": {"lr": [1e-3]}}')
  assert "1 member;" in out and "1 members" not in out
  assert "no time estimate: the timed run of lr0.001 failed" in out
  assert out.splitlines()[1].split()[-3:] == ["?", "?", "?"]
  assert rows[0]["est_time_s"] is None
