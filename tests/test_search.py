"""The search sweep kind: Optuna proposes trials that run as sweep members, the study resumes
from the sweep directory (a trial left running is finished, a raised budget adds trials), and
bad spaces are refused in one line with nothing written."""

import json
import textwrap

import optuna
import pandas as pd
import pytest

from isoflop.experiments import cli, search, sweep_definition

SWEEP = """
import ml_collections

def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "search"
  s.config = "experiments/configs/tiny.py"
  s.search = ml_collections.ConfigDict()
  s.search.space = {SPACE}
  s.search.trials = {TRIALS}
  s.search.metric = "final_train_loss"
  s.search.parallel = 2
  s.overrides = {{"steps": 12, "batch_size": 8, "seq_len": 16, "log_every": 6,
                  "checkpoint_every": 6, "model": {{"d_model": 32, "vocab_size": 64}},
                  "optimizer": {{"warmup_steps": 2}}}}
  return s
"""
LR_SPACE = '{"optimizer": {"lr": {"low": 1e-4, "high": 1e-1, "log": True}}}'


def _sweep_file(tmp_path, trials: int, space: str = LR_SPACE):
  path = tmp_path / "search_sweep.py"
  path.write_text(textwrap.dedent(SWEEP.format(SPACE=space, TRIALS=trials)))
  return str(path)


def _sweep(path, workdir) -> int:
  return cli.main(["isoflop", "sweep", f"--sweep={path}", f"--workdir={workdir}",
                   "--workers=2"])


def test_search_finishes_a_left_trial_and_resumes_with_a_larger_budget(tmp_path):
  workdir = tmp_path / "search"
  workdir.mkdir()
  # A driver that stopped after proposing a trial: it is still RUNNING in the study.
  options = search.settings(sweep_definition.load(_sweep_file(tmp_path, 2)))
  study = search._open_study(str(workdir), options)
  left = study.ask({"optimizer.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1,
                                                                          log=True)})
  assert _sweep(_sweep_file(tmp_path, 2), workdir) == 0
  trials = pd.read_csv(workdir / "trials.csv")
  assert list(trials.name) == ["trial0000", "trial0001"] and set(trials.state) == {"COMPLETE"}
  assert trials.value[0] == pytest.approx(json.loads(
      (workdir / "trial0000" / "metrics.jsonl").read_text().splitlines()[-1])["loss_mean"])
  config = json.loads((workdir / "trial0000" / "config.json").read_text())["config"]
  assert config["optimizer"]["lr"] == pytest.approx(left.params["optimizer.lr"])
  first_logs = {n: (workdir / n / "metrics.jsonl").read_text() for n in trials.name}

  assert _sweep(_sweep_file(tmp_path, 3), workdir) == 0  # the budget raised by one trial
  trials = pd.read_csv(workdir / "trials.csv")
  assert len(trials) == 3 and set(trials.state) == {"COMPLETE"}
  for name, text in first_logs.items():  # the finished trials were not run again
    assert (workdir / name / "metrics.jsonl").read_text() == text
  summary = json.loads((workdir / "search.json").read_text())
  assert summary["best_value"] == pytest.approx(trials.value.min())
  assert summary["best_trial"] == trials.name[trials.value.idxmin()]
  assert summary["best_value_after_each_trial"][-1] == summary["best_value"]
  runs = pd.read_csv(workdir / "runs.csv")
  assert sorted(runs.name) == list(trials.name) and set(runs.status) == {"done"}


@pytest.mark.parametrize("space, trials, message", [
    ("{}", 4, "search.space is empty"),
    ('{"optimizer": {"lr": {"low": 1e-1, "high": 1e-4, "log": True}}}', 4,
     "has low=0.1 > high=0.0001"),
    ('{"optimizer": {"lr": {"low": 0.0, "high": 1e-1, "log": True}}}', 4,
     "must start above 0"),
    ('{"optimizer": {"nonexistent": {"low": 1, "high": 2}}}', 4, "is not a config key"),
    (LR_SPACE, 0, "search.trials=0 must be at least 1"),
])
def test_bad_search_is_one_line_and_writes_nothing(tmp_path, capsys, space, trials, message):
  workdir = tmp_path / "search"
  assert _sweep(_sweep_file(tmp_path, trials, space), workdir) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
  assert not workdir.exists()
