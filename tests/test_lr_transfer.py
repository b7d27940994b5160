"""`isoflop transfer`: the best learning rate per width and its drift, from a sweep's runs.csv."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from isoflop.experiments import cli
from isoflop.experiments.analysis import lr_transfer

LRS = [2.0 ** -e for e in range(10, 3, -1)]
WIDTHS = (64, 128, 256, 512)


def _runs(tmp_path, drift_sp: float = -1.0, diverged: tuple = ()):
  """A runs.csv whose losses are parabolas in log2(lr) around known optima: under SP the
  optimum moves as width^drift_sp, under muP it stays at 2^-7."""
  rows = []
  for parametrization, drift in (("sp", drift_sp), ("mup", 0.0)):
    for width in WIDTHS:
      best = -7.0 + drift * math.log2(width / 64)
      for lr in LRS:
        failed = (parametrization, width, lr) in diverged
        rows.append({"name": f"{parametrization}_{width}_{lr}", "status":
                     "failed" if failed else "done", "lr": lr, "d_model": width,
                     "parametrization": parametrization, "final_train_loss": 9.0,
                     "final_eval_loss": None if failed else
                     2.0 + 0.05 * (math.log2(lr) - best) ** 2 - 0.01 * math.log2(width)})
  pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
  return tmp_path


def test_optima_and_drift(tmp_path):
  out = tmp_path / "out"
  result = lr_transfer.run(str(_runs(tmp_path, diverged={("sp", 64, LRS[-1])})), str(out))
  sp, mup = result["parametrizations"]["sp"], result["parametrizations"]["mup"]
  assert result["loss_column"] == "final_eval_loss"
  # The parabola through three grid points of a parabola finds its vertex exactly.
  assert sp["widths"]["64"]["optimum"]["lr"] == pytest.approx(2.0 ** -7)
  assert sp["widths"]["512"]["optimum"]["lr"] == pytest.approx(2.0 ** -10, rel=1e-6)
  assert sp["widths"]["512"]["optimum"]["at_edge"]
  assert sp["log2_lr_opt_slope_vs_log2_width"] == pytest.approx(-1.0, abs=1e-6)
  assert mup["log2_lr_opt_slope_vs_log2_width"] == pytest.approx(0.0, abs=1e-6)
  assert mup["lr_opt_range_factor"] == pytest.approx(1.0)
  assert sp["widths"]["64"]["loss"][-1] is None  # the failed run is not a loss
  saved = json.loads((out / "lr_transfer.json").read_text())
  assert saved["parametrizations"]["sp"]["optimum_at_grid_edge"]
  assert (out / "lr_transfer.png").stat().st_size > 0


def test_off_grid_optimum_is_refined(tmp_path):
  result = lr_transfer.run(str(_runs(tmp_path, drift_sp=-0.5)), str(tmp_path / "out"))
  sp = result["parametrizations"]["sp"]
  assert sp["widths"]["128"]["optimum"]["lr"] == pytest.approx(2.0 ** -7.5, rel=1e-6)
  assert sp["log2_lr_opt_slope_vs_log2_width"] == pytest.approx(-0.5, abs=1e-6)


def test_optimum_of_a_curve_without_finite_points():
  best = lr_transfer.optimum(np.array(LRS[:3]), np.array([np.nan, np.nan, np.nan]))
  assert best["lr"] is None


@pytest.mark.parametrize("content, expected", [
    (None, "runs.csv not found"),
    ("name,status\na,done\n", "lacks columns"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, content, expected):
  if content is not None:
    (tmp_path / "runs.csv").write_text(content)
  code = cli.main(["isoflop", "transfer", f"--workdir={tmp_path}", f"--out={tmp_path}/out"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and expected in err
  assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused_before_reading_the_sweep(tmp_path, capsys):
  out = tmp_path / "taken"
  out.write_text("mine\n")
  # No runs.csv here: the --out error shows that --out is checked first.
  code = cli.main(["isoflop", "transfer", f"--workdir={tmp_path}", f"--out={out}"])
  err = capsys.readouterr().err.strip()
  assert code == 2 and len(err.splitlines()) == 1 and f"--out={out} is an existing file" in err
  assert out.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
