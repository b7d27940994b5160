"""``isoflop compare``: sweeps side by side, power laws, their crossing, loss by position."""

import json

import numpy as np
import pandas as pd
import pytest

from isoflop.experiments.analysis import compare


def _fake_sweep(root, coefficient, exponent, context_slope, seeds_std=None):
  """Four finished members with loss = coefficient * N^exponent and a per-position loss that
  falls by ``context_slope`` nats per e-fold of context from position 16 on."""
  root.mkdir()
  rows = []
  for i, n in enumerate((1e4, 3e4, 1e5, 3e5)):
    name = f"n{int(n)}"
    loss = coefficient * n ** exponent
    positions = np.arange(1, 65)
    by_position = loss + np.where(positions < 16, 1.0 / positions, 0.0) + context_slope * np.log(np.maximum(positions, 16) / 64)
    (root / name).mkdir()
    (root / name / "config.json").write_text(
        json.dumps({"config": {"model": {"num_experts": 4 * (i % 2)}}}))
    (root / name / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": loss}) + "\n" +
        json.dumps({"step": 10, "eval_loss": loss,
                    "eval_loss_by_position": by_position.tolist()}) + "\n")
    rows.append({"name": name, "workdir": name, "status": "done", "N_kaplan": n,
                 "final_train_loss": loss, "final_eval_loss": loss,
                 "final_eval_loss_std": seeds_std, "model_family": "x"})
  rows.append({**rows[0], "name": "broken", "workdir": "broken", "status": "failed"})
  pd.DataFrame(rows).to_csv(root / "runs.csv", index=False)
  return str(root)


def test_power_laws_their_crossing_and_context_slopes(tmp_path, capsys):
  steep = _fake_sweep(tmp_path / "steep", 20.0, -0.25, context_slope=-0.2, seeds_std=0.01)
  flat = _fake_sweep(tmp_path / "flat", 6.0, -0.12, context_slope=0.0)
  out = tmp_path / "out"
  assert compare.main(["isoflop compare", f"--workdirs={steep},{flat}", "--labels=A,B",
                       f"--out={out}"]) == 0
  result = json.loads((out / "compare.json").read_text())
  assert result["power_law"]["A"]["exponent"] == pytest.approx(-0.25, abs=1e-9)
  assert result["power_law"]["B"]["coefficient"] == pytest.approx(6.0, rel=1e-9)
  # 20 N^-0.25 = 6 N^-0.12 at N = (20/6)^(1/0.13), about 1.05e4: inside the range [1e4, 3e5].
  crossing = result["crossing"]
  assert crossing["x"] == pytest.approx((20 / 6) ** (1 / 0.13), rel=1e-9)
  assert crossing["inside_measured_range"] and crossing["lower_beyond"] == "A"
  points = result["series"]["A"]["points"]
  assert len(points) == 4 and points[0]["loss_std"] == 0.01  # the failed member is left out
  assert points[0]["by_position"]["context_slope"] == pytest.approx(-0.2, abs=1e-9)
  assert result["series"]["B"]["points"][0]["by_position"]["context_slope"] == \
      pytest.approx(0.0, abs=1e-9)
  assert (out / "loss_vs_N_kaplan.png").exists() and (out / "loss_by_position.png").exists()
  assert "crossing: beyond x = 1.05e+04 the fitted laws put A lower" in capsys.readouterr().out


def test_group_by_splits_a_sweep_by_a_config_value(tmp_path):
  sweep = _fake_sweep(tmp_path / "moe", 20.0, -0.25, 0.0)
  result = compare.run([sweep], ["moe"], "N_kaplan", str(tmp_path / "out"),
                       group_by="model.num_experts")
  assert {name: [p["x"] for p in entry["points"]] for name, entry in result["series"].items()} \
      == {"moe num_experts=0": [1e4, 1e5], "moe num_experts=4": [3e4, 3e5]}
  assert result["crossing"] is not None  # two series, two laws


@pytest.mark.parametrize("args, message", [
    (["--x=N_nope"], "--x=N_nope is not a column"),
    (["--labels=one"], "1 --labels for 2 --workdirs"),
    (["--group_by=model.nope"], "--group_by=model.nope is not a config key"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
  a = _fake_sweep(tmp_path / "a", 20.0, -0.25, 0.0)
  b = _fake_sweep(tmp_path / "b", 6.0, -0.12, 0.0)
  out = tmp_path / "out"
  assert compare.main(["isoflop compare", f"--workdirs={a},{b}", f"--out={out}", *args]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0]
  assert not (out / "compare.json").exists()
  assert compare.main(["isoflop compare", f"--workdirs={a},{tmp_path}/none",
                       f"--out={out}"]) == 2
  assert "runs.csv not found" in capsys.readouterr().err


def _isoflop_sweep(root, a):
  """Three budgets x five sizes whose loss is a parabola in ln N around N_opt = 1e-3 C^a."""
  root.mkdir()
  rows = []
  for budget in (1e12, 1e13, 1e14):
    n_opt = 1e-3 * budget ** a
    for factor in (0.25, 0.5, 1.0, 2.0, 4.0):
      n = n_opt * factor
      loss = 5.0 * budget ** -0.05 + 0.1 * np.log(factor) ** 2
      name = f"C{budget:.0e}_N{n:.3g}"
      rows.append({"name": name, "workdir": name, "status": "done", "budget": budget,
                   "N_chinchilla": n, "C_chinchilla": budget, "D": budget / (6 * n),
                   "final_train_loss": loss, "final_eval_loss": loss})
  pd.DataFrame(rows).to_csv(root / "runs.csv", index=False)
  return str(root)


def test_frontier_compares_compute_optimal_laws_with_intervals(tmp_path):
  sweeps = [_isoflop_sweep(tmp_path / "half", 0.5), _isoflop_sweep(tmp_path / "small", 0.2)]
  out = tmp_path / "out"
  assert compare.main(["isoflop compare", f"--workdirs={','.join(sweeps)}",
                       "--labels=half,small", "--x=C_chinchilla", "--frontier",
                       f"--out={out}"]) == 0
  result = json.loads((out / "compare.json").read_text())
  for label, a in (("half", 0.5), ("small", 0.2)):
    entry = result["series"][label]
    assert entry["a"]["value"] == pytest.approx(a, abs=1e-6)
    assert entry["loss_opt_law"]["c"]["value"] == pytest.approx(-0.05, abs=1e-6)
    assert [p["x"] for p in entry["points"]] == [1e12, 1e13, 1e14]
  assert (out / "n_opt_vs_C_chinchilla.png").exists()
  assert compare.main(["isoflop compare", f"--workdirs={sweeps[0]}", "--x=N_kaplan",
                       "--frontier", f"--out={tmp_path / 'bad'}"]) == 2
