"""Scaling-law analysis: Chinchilla's three approaches on synthetic data with known constants,
Epoch AI's reproduction on Hoffmann et al.'s Figure 4 points, fit.json, figures, bad input."""

import csv
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.optimize

from conftest import REPO
from isoflop.experiments.analysis import analyze
from isoflop.experiments.analysis import approach1
from isoflop.experiments.analysis import approach2
from isoflop.experiments.analysis import approach3
from isoflop.experiments.analysis import figures
from isoflop.experiments.analysis import inputs
from isoflop.experiments.analysis import powerlaw

# Hoffmann et al.'s rounded Approach-3 constants, as the synthetic truth.
TRUTH = approach3.Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
TRUTH_6N = approach3.Optimum(TRUTH)  # its compute-optimal frontier when C = 6 N D
# FLOPs per token 300 N^0.85: 1.7-4.0 x 6N over the sizes below, falling with N as Chinchilla's
# count does for small models (embeddings and attention weigh more there).
FLOPS_PER_TOKEN = powerlaw.PowerLaw(300.0, 0.85)
EPOCH_DATA = REPO / "experiments" / "data" / "chinchilla_fig4_epoch_extracted.csv"
EPOCH = {"alpha": 0.3478, "beta": 0.3658, "E": 1.817}  # Besiroglu et al. 2024, 240 points
FIGURES = ("isoflop_curves", "optimal_scaling", "approach3_contours")


def _points(n, d, loss, c=None, **extra) -> inputs.Points:
  c = 6.0 * n * d if c is None else c
  table = pd.DataFrame({"N": n, "D": d, "C": c, "loss": loss, **extra})
  return inputs.Points(table=table, source="synthetic", loss_column="loss")


def _isoflop_points(rng, budgets, noise, sizes_per_budget=9, flops_per_token=approach3.SIX_N):
  """(N, D, loss) at fixed budgets C (FLOPs), sizes spanning a decade around TRUTH's optimum
  when a token costs flops_per_token(N); each run trains on D = C / flops_per_token(N)."""
  optimum = approach3.Optimum(TRUTH, flops_per_token)
  rows = []
  for c in budgets:
    for n in optimum.frontier().n_opt(c) * np.geomspace(10 ** -0.5, 10 ** 0.5, sizes_per_budget):
      d = c / flops_per_token(n)
      rows.append((n, d, TRUTH.loss(n, d) * np.exp(noise * rng.standard_normal())))
  return np.array(rows).T


def test_objective_gradient_is_exact():
  rng = np.random.default_rng(0)
  n, d = 10 ** rng.uniform(7, 10, 50), 10 ** rng.uniform(9, 12, 50)
  args = (np.stack([np.log(n), np.log(d), np.zeros(50)]), np.log(TRUTH.loss(n, d)))
  for x in ([6.0, 6.0, 0.5, 0.3, 0.3], [1.0, 20.0, -1.0, 1.5, 0.5]):
    error = scipy.optimize.check_grad(lambda v: approach3.objective(v, *args)[0],
                                      lambda v: approach3.objective(v, *args)[1], x)
    assert error < 1e-6 * max(1.0, np.abs(approach3.objective(np.array(x), *args)[1]).max())


def test_approach3_fits_the_same_with_and_without_worker_processes(monkeypatch):
  rng = np.random.default_rng(2)
  n, d = 10 ** rng.uniform(7, 10, 12), 10 ** rng.uniform(8.5, 11.5, 12)
  loss = TRUTH.loss(n, d) * np.exp(0.01 * rng.standard_normal(12))
  monkeypatch.setattr(approach3, "_workers", lambda: 2)
  pooled = approach3.fit(_points(n, d, loss), bootstrap=12, seed=3).to_json(1e23)
  monkeypatch.setenv("ISOFLOP_ANALYSIS_PROCESSES", "1")
  serial = approach3.fit(_points(n, d, loss), bootstrap=12, seed=3).to_json(1e23)
  assert pooled == serial


def test_approach3_recovers_known_constants():
  rng = np.random.default_rng(1)
  n, d = 10 ** rng.uniform(7, 10, 80), 10 ** rng.uniform(8.5, 11.5, 80)
  loss = TRUTH.loss(n, d) * np.exp(0.002 * rng.standard_normal(80))
  fit = approach3.fit(_points(n, d, loss), bootstrap=50, seed=0).to_json(5.76e23)
  # Tolerances: 0.002 multiplicative noise on 80 points leaves the exponents to ~0.02.
  for key, tolerance in (("alpha", 0.02), ("beta", 0.02), ("E", 0.02), ("a", 0.02)):
    truth = TRUTH_6N.values()[key]
    assert fit[key]["value"] == pytest.approx(truth, abs=tolerance), key
    low, high = fit[key]["ci95"]
    assert low <= truth <= high, (key, low, high)
  assert fit["bootstrap_replicates"] == 50


def test_approach2_recovers_the_exponent_and_is_reproducible():
  rng = np.random.default_rng(2)
  n, d, loss = _isoflop_points(rng, [1e18, 1e19, 1e20, 1e21], noise=0.001)
  points = _points(n, d, loss)
  result = approach2.fit(points, bootstrap=50, seed=0)
  fit = result.to_json(5.76e23)
  assert len(fit["points"]) == 4 and not fit["rejected_budgets"]
  assert fit["a"]["value"] == pytest.approx(TRUTH_6N.a, abs=0.01)
  # With C = 6 N D exactly, the fitted b comes out as 1 - a (not so in general: see below).
  assert fit["b"]["value"] == pytest.approx(1.0 - fit["a"]["value"], abs=1e-9)
  low, high = fit["a"]["ci95"]
  assert low <= TRUTH_6N.a <= high
  assert approach2.fit(points, bootstrap=50, seed=0).to_json(5.76e23) == fit
  # The budgets' minimum losses against C: the slope through the points, inside its interval.
  c_opt = np.log([p["C"] for p in fit["points"]])
  slope = np.polyfit(c_opt, np.log([p["loss"] for p in fit["points"]]), 1)[0]
  law = fit["loss_opt_law"]["c"]
  assert law["value"] == pytest.approx(slope, rel=1e-9) and law["value"] < 0
  assert law["ci95"][0] <= law["value"] <= law["ci95"][1]


def test_approach2_records_downward_parabolas_and_needs_two_budgets():
  n = np.array([1e8, 2e8, 4e8] * 2)
  c = np.repeat([1e19, 1e20], 3)
  loss = np.array([3.0, 2.9, 3.0, 2.5, 2.6, 2.5])  # the second budget opens downward
  with pytest.raises(inputs.NotEnoughData, match="found 1 of 2 budgets"):
    approach2.fit(_points(n, c / (6 * n), loss), bootstrap=0, seed=0)
  profile = approach2.profile(n[3:], c[3:] / (6 * n[3:]), c[3:], loss[3:])
  assert profile.rejected == approach2.OPENS_DOWNWARD


def _points_at_flops_per_token(noise):
  """isoFLOP points of TRUTH whose runs cost FLOPS_PER_TOKEN(N) per token, not 6 N."""
  n, d, loss = _isoflop_points(np.random.default_rng(2), [1e18, 1e19, 1e20, 1e21], noise,
                               flops_per_token=FLOPS_PER_TOKEN)
  return _points(n, d, loss, c=d * FLOPS_PER_TOKEN(n))


def test_approach2_takes_d_from_the_runs_and_fits_b():
  result = approach2.fit(_points_at_flops_per_token(noise=0.001), bootstrap=20, seed=0)
  fit = result.to_json(5.76e23)
  assert len(fit["points"]) == 4
  for point in fit["points"]:
    # Within a budget ln D is linear in ln N, so D_opt is what a run of N_opt trains on.
    tokens = point["C"] / FLOPS_PER_TOKEN(point["N_opt"])
    assert point["D_opt"] == pytest.approx(tokens, rel=1e-9)
    assert point["tokens_per_param"] == pytest.approx(tokens / point["N_opt"], rel=1e-9)
    assert point["D_opt"] < 0.6 * point["C"] / (6 * point["N_opt"])  # C/(6N) overstates it
  truth = approach3.Optimum(TRUTH, FLOPS_PER_TOKEN)  # a = 0.484, b = 1 - 0.85 a = 0.588
  # D_opt = C / (300 N_opt^0.85) at every budget makes the fitted b = 1 - 0.85 a exactly, so
  # b errs by 0.85 times a's error, and a's tolerance is that of the 6N test above.
  assert fit["a"]["value"] == pytest.approx(truth.a, abs=0.01)
  assert fit["b"]["value"] == pytest.approx(truth.b, abs=0.01)
  assert fit["b"]["value"] > 1.0 - fit["a"]["value"] + 0.05  # fitted: 1 - a would be 0.516
  # The figures draw the same optima.
  _, (c, n_opt, d_opt) = analyze._frontier_and_points(result)
  np.testing.assert_allclose(d_opt, [p["D_opt"] for p in fit["points"]], rtol=1e-12)


@pytest.fixture
def small_grid(monkeypatch):
  """Approach 3 from the 180 starts with alpha = beta = 0.5, not all 4500: a second, not 20.

  For tests about what surrounds the search; the search itself is tested on the full grid
  (the recovery test, the Epoch bar).
  """
  grid = approach3.GRID
  monkeypatch.setattr(approach3, "GRID", grid[(grid[:, 3] == 0.5) & (grid[:, 4] == 0.5)])


def test_approach3_frontier_uses_the_points_flops_per_token(small_grid):
  # On noise-free points the small grid reaches the truth (to the optimizer's tolerance).
  fit = approach3.fit(_points_at_flops_per_token(noise=0.0), bootstrap=2, seed=0).to_json(1e23)
  truth = approach3.Optimum(TRUTH, FLOPS_PER_TOKEN)
  # Noise-free losses pin the law down to the optimizer's tolerance (about 1e-9 relative),
  # so the frontier must match the closed form for F = 300 N^0.85 to far better than 1e-4.
  for key in ("a", "b", "G"):
    assert fit[key]["value"] == pytest.approx(truth.values()[key], rel=1e-4), key
  assert fit["N_opt"]["value"] == pytest.approx(truth.frontier().n_opt(1e23), rel=1e-4)
  assert fit["D_opt"]["value"] == pytest.approx(truth.frontier().d_opt(1e23), rel=1e-4)
  assert abs(fit["a"]["value"] - TRUTH_6N.a) > 0.03  # what C = 6 N D would give: 0.452
  assert fit["kappa"]["value"] == pytest.approx(300.0, rel=1e-9)
  assert fit["phi"]["value"] == pytest.approx(0.85, rel=1e-9)
  assert "kappa * N**phi" in fit["law"]


@pytest.mark.parametrize("flops_per_token", [approach3.SIX_N, FLOPS_PER_TOKEN])
def test_optimum_is_the_minimum_of_the_loss_at_fixed_compute(flops_per_token):
  optimum = approach3.Optimum(TRUTH, flops_per_token)
  frontier = optimum.frontier()
  for c in (1e19, 1e23):
    def loss_at(log_n):
      n = np.exp(log_n)
      return TRUTH.loss(n, c / flops_per_token(n))

    best = scipy.optimize.minimize_scalar(loss_at, bounds=(np.log(1e3), np.log(1e15)),
                                          method="bounded", options={"xatol": 1e-10})
    assert frontier.n_opt(c) == pytest.approx(np.exp(best.x), rel=1e-5)
    assert frontier.d_opt(c) == pytest.approx(c / flops_per_token(frontier.n_opt(c)), rel=1e-12)
  assert optimum.b == pytest.approx(1.0 - flops_per_token.exponent * optimum.a, rel=1e-12)


def test_optimum_with_six_n_is_hoffmanns():
  alpha, beta = TRUTH.alpha, TRUTH.beta
  assert TRUTH_6N.a == pytest.approx(beta / (alpha + beta), rel=1e-12)
  assert TRUTH_6N.b == pytest.approx(alpha / (alpha + beta), rel=1e-12)
  g = (alpha * TRUTH.A / (beta * TRUTH.B)) ** (1.0 / (alpha + beta))
  assert TRUTH_6N.G == pytest.approx(g, rel=1e-12)
  assert TRUTH_6N.frontier().n_opt(6e20) == pytest.approx(g * 1e20 ** TRUTH_6N.a, rel=1e-12)


def _write_sweep(root, rng):
  """A fake sweep: 3 isoFLOP budgets x 7 sizes with training curves from TRUTH."""
  rows = []
  for c in (1e17, 1e18, 1e19):
    for n in TRUTH_6N.frontier().n_opt(c) * np.geomspace(10 ** -0.5, 10 ** 0.5, 7):
      name = f"C{c:.0e}_N{n:.3g}"
      run = root / name
      run.mkdir()
      d_final = c / (6.0 * n)
      n_kaplan, n_palm = n - 2e6, n - 1e6  # embeddings left out, as Kaplan and PaLM count
      per_token = {"kaplan": 6 * n_kaplan, "chinchilla": 6 * n, "palm": 6 * n_palm,
                   "measured": 6.6 * n}
      (run / "config.json").write_text(json.dumps(
          {"flops_per_token": per_token, "config": {"optimizer": {"schedule": "wsd"}}}))
      with open(run / "metrics.jsonl", "w") as f:
        for step in range(1, 51):
          tokens = d_final * step / 50
          loss = TRUTH.loss(n, tokens) * np.exp(0.001 * rng.standard_normal())
          f.write(json.dumps({"step": step, "loss": loss, "tokens_seen": tokens}) + "\n")
          if step % 25 == 0:
            f.write(json.dumps({"step": step, "eval_loss": loss + 0.01}) + "\n")
      rows.append({"name": name, "workdir": name, "status": "done", "N_kaplan": n_kaplan,
                   "N_chinchilla": n, "N_palm": n_palm, "D": d_final,
                   **{f"C_{k}": v * d_final for k, v in per_token.items()},
                   "final_train_loss": loss, "final_eval_loss": "", "wall_time_s": 1.0,
                   "budget": c})
  rows.append({**rows[0], "name": "broken", "workdir": "missing", "status": "failed",
               "final_train_loss": "nan"})
  rows.append({**rows[0], "name": "later", "workdir": "missing", "status": "pending"})
  with open(root / "runs.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return root


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
  return _write_sweep(tmp_path_factory.mktemp("sweep"), np.random.default_rng(3))


def test_approach1_recovers_the_exponent_from_training_curves(sweep_dir):
  points = inputs.from_sweep(str(sweep_dir))
  assert len(points.table) == 21 and len(points.curves) == 21
  assert points.loss_column == "final_train_loss"  # final_eval_loss is empty
  result = approach1.fit(points, bootstrap=50, seed=0)
  fit = result.to_json(5.76e23)
  assert len(fit["points"]) >= 10
  # The envelope can only pick trained sizes (7 per budget, 0.17 dex apart): a is within 0.04.
  assert fit["a"]["value"] == pytest.approx(TRUTH_6N.a, abs=0.04)
  assert fit["a"]["ci95"][0] < fit["a"]["value"] < fit["a"]["ci95"][1]
  # The curves' intermediate points are not decayed under WSD: fit.json says so.
  assert fit["schedules"] == ["wsd"] and "not decayed" in fit["note"]


def test_approach1_on_final_points_of_sizes_trained_to_several_lengths():
  """A ladder: 13 sizes, each to 2-200 tokens per parameter; only final points are used."""
  rng = np.random.default_rng(4)
  n, d = (np.array(v).ravel() for v in np.meshgrid(np.geomspace(1e7, 1e10, 13),
                                                    np.geomspace(2, 200, 5), indexing="ij"))
  d = d * n
  n, d = np.append(n, 3e8), np.append(d, 6e9)  # a size trained once: no curve, left out
  loss = TRUTH.loss(n, d) * np.exp(0.001 * rng.standard_normal(len(n)))
  points = _points(n, d, loss)
  with pytest.raises(inputs.NotEnoughData, match="training curves"):
    approach1.fit(points, bootstrap=0, seed=0)  # the default needs the runs' curves
  fit = approach1.fit(points, bootstrap=20, seed=0, source="final").to_json(5.76e23)
  assert analyze._run(points, ["approach1"], 20, 0, "final")["approach1"].to_json(5.76e23) == fit
  assert (fit["curves"], fit["runs"]) == (13, 65) and "note" not in fit
  assert len(fit["points"]) >= 10
  # Sizes 0.25 dex apart, as in the training-curve test: a within 0.04.
  assert fit["a"]["value"] == pytest.approx(TRUTH_6N.a, abs=0.04)
  for point in fit["points"]:  # each envelope point lies on its size's interpolated curve
    assert point["D_opt"] == pytest.approx(point["C"] / (6 * point["N_opt"]), rel=1e-9)


def test_sweep_analysis_writes_fit_json_contrast_and_figures(sweep_dir, tmp_path, small_grid):
  out = tmp_path / "out"
  analysis = analyze.run_analysis(out=str(out), workdir=str(sweep_dir), bootstrap=20)
  fit = json.loads((out / "fit.json").read_text())
  assert fit["inputs"] == {"count": 21, "source": str(sweep_dir),
                           "loss_column": "final_train_loss", "dropped_highest_loss": 0,
                           "compute": inputs.SWEEP_COMPUTE.format("chinchilla", "chinchilla")}
  assert fit["identified_rule"] == powerlaw.IDENTIFIED_RULE
  assert isinstance(fit["warnings"], dict)
  for name in ("approach1", "approach2", "approach3"):
    assert not fit[name].get("skipped"), fit[name]
    assert set(fit[name]["a"]) == {"value", "ci95", "identified"}
    assert len(fit[name]["a"]["ci95"]) == 2
    assert {"N_opt", "D_opt", "b"} <= set(fit[name])
  assert fit["approach2"]["a"]["value"] == pytest.approx(TRUTH_6N.a, abs=0.01)
  for label in ("kaplan", "chinchilla"):
    for name in ("approach2", "approach3"):
      assert set(fit["contrast"][label][name]["a"]) == {"value", "ci95", "identified"}
  assert "Porian" in fit["contrast"]["note"]
  # Leaving out the embeddings (2M parameters) makes N_opt grow faster with C at small scale.
  assert (fit["contrast"]["kaplan"]["approach2"]["a"]["value"]
          > fit["contrast"]["chinchilla"]["approach2"]["a"]["value"])
  for name in FIGURES + ("contrast",):
    for ext in ("png", "svg"):
      assert (out / f"{name}.{ext}").stat().st_size > 1000
  assert str(out / "fit.json") == analysis.paths[-1]


@pytest.fixture(scope="module")
def epoch_refit(tmp_path_factory):
  out = tmp_path_factory.mktemp("epoch_refit")
  argv = ["isoflop analyze", f"--csv={EPOCH_DATA}", "--drop_highest_loss=5", f"--out={out}",
          "--bootstrap=20"]
  assert analyze.main(argv) == 0
  return out, json.loads((out / "fit.json").read_text())


def test_epoch_reproduction_meets_the_bar(epoch_refit):
  _, fit = epoch_refit
  assert fit["inputs"]["count"] == 240
  for key, published in EPOCH.items():
    assert fit["approach3"][key]["value"] == pytest.approx(published, abs=0.01), key


def test_csv_fit_json_structure_and_figures(epoch_refit):
  out, fit = epoch_refit
  assert {"approach1", "approach2", "approach3", "inputs", "n_convention", "flop_convention",
          "bootstrap"} <= set(fit)
  assert "contrast" not in fit
  assert fit["approach1"] == {"skipped": True, "reason": inputs.NO_CURVES}
  assert fit["approach1_points"] == "curves"
  # From N and C alone, D = C / (6 N): FLOPs per token are 6 N and the frontier Hoffmann's.
  third = fit["approach3"]
  assert third["kappa"]["value"] == pytest.approx(6.0, rel=1e-9)
  assert third["phi"]["value"] == pytest.approx(1.0, rel=1e-9)
  alpha, beta = third["alpha"]["value"], third["beta"]["value"]
  assert third["a"]["value"] == pytest.approx(beta / (alpha + beta), rel=1e-9)
  assert third["b"]["value"] == pytest.approx(alpha / (alpha + beta), rel=1e-9)
  assert fit["bootstrap"] == 20 and fit["inputs"]["loss_column"] == "loss"
  for key in ("E", "A", "B", "alpha", "beta", "a", "b", "G", "N_opt", "D_opt"):
    low, high = fit["approach3"][key]["ci95"]
    assert low <= fit["approach3"][key]["value"] <= high, key
  assert {"C", "N_opt", "D_opt", "loss"} <= set(fit["approach2"]["points"][0])
  # 240 points pin every constant of the law down.
  for key in ("E", "A", "B", "alpha", "beta", "a"):
    assert fit["approach3"][key]["identified"] is True, key
  # Without --extrapolate_to, N_opt is reported a decade past the largest compute of the data.
  largest = pd.read_csv(EPOCH_DATA)["Training FLOP"].max()
  assert fit["extrapolate_to"] == pytest.approx(10 * largest, rel=1e-12)
  assert fit["extrapolate_to_from"].startswith("default")
  assert fit["inputs"]["compute"] == inputs.CSV_COMPUTE
  for name in FIGURES:
    for ext in ("png", "svg"):
      assert (out / f"{name}.{ext}").exists()
  assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def _write_csv(path, header, rows):
  path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
  return path


GOOD_ROWS = [(n, 6 * n * 20 * n, 2.0 + 1e4 / n) for n in (1e6, 2e6, 4e6, 8e6)]
BAD_INPUTS = {
    "missing_column": (["N", "C"], [(1e6, 1e18)], "lacks column(s) loss"),
    "missing_d_and_c": (["N", "loss"], [(1e6, 3.0)], "lacks column(s) D or C"),
    "negative_n": (["N", "C", "loss"], [(-1e6, 1e18, 3.0)], "N must be a positive"),
    "zero_loss": (["N", "C", "loss"], [(1e6, 1e18, 0)], "line 2"),
    "infinite_c": (["N", "C", "loss"], [(1e6, "inf", 3.0)], "C must be a positive"),
    "text_loss": (["N", "C", "loss"], [(1e6, 1e18, "abc")], "has loss = abc"),
    "too_few_points": (["N", "C", "loss"], GOOD_ROWS, "no approach can run on the 4 points"),
}


def _main_fails(argv, capsys, expected):
  code = analyze.main(["isoflop analyze"] + argv)
  err = capsys.readouterr().err
  assert code == 2
  assert err.count("\n") == 1 and err.startswith("isoflop analyze: error: "), err
  assert expected in err and "Traceback" not in err
  return err


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_csv_is_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys):
  header, rows, expected = BAD_INPUTS[name]
  path = _write_csv(tmp_path / "points.csv", header, rows)
  _main_fails([f"--csv={path}", f"--out={tmp_path / 'out'}"], capsys, expected)
  assert not (tmp_path / "out" / "fit.json").exists()


@pytest.mark.parametrize("argv,expected", [
    ([], "exactly one of --csv"),
    (["--csv=a.csv", "--workdir=b"], "exactly one of --csv"),
    (["--csv={tmp}/none.csv"], "not found"),
    (["--workdir={tmp}"], "runs.csv not found"),
    (["--csv=a.csv", "--bootstrap=-1"], "bootstrap"),
    (["--csv=a.csv", "--n_convention=gpt"], "n_convention"),
    (["--csv=a.csv", "--bogus=1"], "bogus"),
    (["--csv=a.csv", "--approach1_points=all"], "approach1_points"),
])
def test_bad_flags_are_one_line_exit_2(argv, expected, tmp_path, capsys):
  argv = [a.format(tmp=tmp_path) for a in argv] + [f"--out={tmp_path / 'out'}"]
  _main_fails(argv, capsys, expected)


def test_missing_out_and_sweep_without_done_runs(tmp_path, capsys):
  _main_fails([f"--csv={EPOCH_DATA}"], capsys, "missing --out")
  header = ["name", "workdir", "status", "N_chinchilla", "D", "C_chinchilla",
            "final_train_loss", "final_eval_loss"]
  _write_csv(tmp_path / "runs.csv", header, [("r", "r", "failed", 1e6, 1e8, 6e14, 3.0, "")])
  _main_fails([f"--workdir={tmp_path}", f"--out={tmp_path}/out"], capsys, "1 failed")


def test_identified_rule_for_scales_and_exponents():
  def ends(low, high):  # replicates whose 95% interval is [low, high]
    return [low] * 20 + [high] * 20

  assert powerlaw.identified(ends(1.0, 99.0), exponent=False) is True
  assert powerlaw.identified(ends(1.0, 101.0), exponent=False) is False  # over two decades
  assert powerlaw.identified(ends(-1.0, 2.0), exponent=False) is False  # not a positive scale
  assert powerlaw.identified(ends(0.3, 0.79), exponent=True) is True
  assert powerlaw.identified(ends(0.3, 0.81), exponent=True) is False  # wider than 0.5
  assert powerlaw.identified([1.0], exponent=True) is None  # no interval
  # A tight interval over the finite refits, but 1 in 20 refits overflowed.
  assert powerlaw.identified([1.0] * 19 + [np.inf], exponent=False) is False
  assert powerlaw.identified([1.0] * 40 + [np.inf], exponent=False) is True
  assert powerlaw.estimate(2.0, ends(1.0, 1e3)) == {"value": 2.0, "ci95": [1.0, 1e3],
                                                    "identified": False}


def test_approach2_says_which_parameters_the_data_identify():
  rng = np.random.default_rng(2)
  n, d, loss = _isoflop_points(rng, [1e18, 1e19, 1e20, 1e21], noise=0.001)
  fit = approach2.fit(_points(n, d, loss), bootstrap=50, seed=0).to_json(1e21)
  for key in ("a", "b", "G", "N_opt", "D_opt"):
    assert fit[key]["identified"] is True, (key, fit[key])
  # Three budgets a decade apart, 5 sizes each, 2% noise: a's interval is 0.18-0.72 wide and
  # G's spans 10 decades.
  n, d, loss = _isoflop_points(np.random.default_rng(3), [1e18, 1e19, 1e20], noise=0.02,
                               sizes_per_budget=5)
  fit = approach2.fit(_points(n, d, loss), bootstrap=50, seed=0).to_json(1e21)
  assert fit["a"]["identified"] is False and fit["G"]["identified"] is False


def _noisy_isoflop_csv(path):
  n, d, loss = _isoflop_points(np.random.default_rng(3), [1e18, 1e19, 1e20], noise=0.02,
                               sizes_per_budget=5)
  return _write_csv(path, ["N", "D", "loss"], zip(n, d, loss))


def test_main_flags_poor_fits_and_keeps_warnings_off_the_terminal(tmp_path, capsys, small_grid,
                                                                  monkeypatch):
  fit_approach2 = analyze.APPROACHES["approach2"]

  def overflowing_fit(*args, **kwargs):
    np.exp(np.array([1e4]))  # numpy warns of the overflow, as a wild bootstrap refit does
    return fit_approach2(*args, **kwargs)

  monkeypatch.setitem(analyze.APPROACHES, "approach2", overflowing_fit)
  path = _noisy_isoflop_csv(tmp_path / "points.csv")
  with warnings.catch_warnings(record=True) as escaped:
    warnings.simplefilter("always")
    code = analyze.main(["isoflop analyze", f"--csv={path}", f"--out={tmp_path / 'out'}",
                         "--bootstrap=20"])
  assert code == 0 and not escaped, [str(w.message) for w in escaped]
  printed = capsys.readouterr()
  assert "Warning" not in printed.err
  fit = json.loads((tmp_path / "out" / "fit.json").read_text())
  assert fit["warnings"]["approach2"] == {
      "count": 1, "messages": ["RuntimeWarning: overflow encountered in exp"]}
  # 15 noisy points leave Approach 3's law and exponent a loose: flagged in fit.json and printed.
  assert fit["approach3"]["a"]["identified"] is False
  assert fit["approach3"]["E"]["identified"] is False
  assert fit["approach2"]["N_opt"]["identified"] is True
  lines = printed.out.splitlines()
  third = next(x for x in lines if x.startswith("approach3:"))
  assert third.split(", b = ")[0].endswith(analyze.POORLY_IDENTIFIED)
  second = next(x for x in lines if x.startswith("approach2:"))
  assert second.split("FLOPs) = ")[1].count(analyze.POORLY_IDENTIFIED) == 0
  assert any(x.startswith(f"{analyze.POORLY_IDENTIFIED}: the 95% interval") for x in lines)
  assert "1 numerical warning (" in printed.out


def test_isoflop_curves_are_drawn_when_approach2_is_skipped(tmp_path, small_grid):
  # 3 sizes at each of 3 budgets, but two budgets' parabolas open downward.
  n = np.array([1e6, 2e6, 4e6] * 3)
  c = np.repeat([1e15, 1e16, 1e17], 3)
  loss = np.array([3.0, 2.9, 3.0, 2.5, 2.6, 2.5, 2.3, 2.4, 2.3])
  path = _write_csv(tmp_path / "points.csv", ["N", "C", "loss"], zip(n, c, loss))
  fit = analyze.run_analysis(out=str(tmp_path / "out"), csv=str(path), bootstrap=0).fit
  assert fit["approach2"]["skipped"] and "found 1 of 3 budgets" in fit["approach2"]["reason"]
  for ext in ("png", "svg"):
    assert (tmp_path / "out" / f"isoflop_curves.{ext}").stat().st_size > 1000
  assert "isoflop_curves.png" in fit["figures"]


def test_optimal_scaling_reaches_a_decade_past_the_data_by_default():
  c_range = (1e10, 1e11)
  assert analyze.default_extrapolation(c_range) == pytest.approx(1e12)
  assert figures.compute_axis(c_range, 1e12) == (1e10, 1e12)
  assert figures.compute_axis(c_range, 5.76e23) == (1e10, 5.76e23)
  assert figures.compute_axis(c_range, 1e8) == (1e8, 1e11)
  frontier = powerlaw.Frontier(powerlaw.PowerLaw(0.1, 0.5), powerlaw.PowerLaw(1.0, 0.5))
  fig = figures.optimal_scaling_figure({"approach2": (frontier, None)}, c_range,
                                       analyze.default_extrapolation(c_range))
  assert fig.axes[0].get_xlim() == pytest.approx((1e10, 1e12))


def test_extrapolate_to_flag_sets_where_n_opt_is_reported(tmp_path, small_grid):
  path = _noisy_isoflop_csv(tmp_path / "points.csv")
  code = analyze.main(["isoflop analyze", f"--csv={path}", f"--out={tmp_path / 'out'}",
                       "--bootstrap=0", "--extrapolate_to=5.76e23"])
  fit = json.loads((tmp_path / "out" / "fit.json").read_text())
  assert code == 0 and fit["extrapolate_to"] == 5.76e23
  assert fit["extrapolate_to_from"] == "--extrapolate_to"
  frontier = powerlaw.PowerLaw(fit["approach2"]["G"]["value"], fit["approach2"]["a"]["value"])
  assert fit["approach2"]["N_opt"]["value"] == pytest.approx(frontier(5.76e23), rel=1e-9)


def test_approach3_contours_name_the_flop_count_and_place_points_at_their_c(tmp_path):
  n, d, loss = _isoflop_points(np.random.default_rng(2), [1e18, 1e19], 0.0,
                               flops_per_token=FLOPS_PER_TOKEN)
  c = d * FLOPS_PER_TOKEN(n)
  result = approach3.Result(approach3.Optimum(TRUTH, FLOPS_PER_TOKEN), 0.0, (), len(n))
  label = inputs.SWEEP_COMPUTE.format("palm", "palm")
  ax = figures.approach3_contours_figure(result, n, c, label).axes[0]
  assert ax.get_xlabel().startswith(label) and "6ND" not in ax.get_xlabel()
  offsets = next(points.get_offsets() for points in ax.collections
                 if len(points.get_offsets()) == len(n))
  np.testing.assert_allclose(offsets, np.column_stack([c, n]))
  # The label follows where C came from (a sweep's: see the sweep analysis test).
  only_d = _write_csv(tmp_path / "d.csv", ["N", "D", "loss"], [(1e6, 2e7, 3.0)])
  assert inputs.from_csv(str(only_d)).compute_label == inputs.CSV_SIX_N_D
  with_c = _write_csv(tmp_path / "c.csv", ["N", "C", "loss"], [(1e6, 1.2e14, 3.0)])
  assert inputs.from_csv(str(with_c)).compute_label == inputs.CSV_COMPUTE


def _write_budgetless_sweep(root, kind):
  """runs.csv of a sweep whose members have no compute budget (the column is empty)."""
  header = ["name", "workdir", "status", "budget", "N_chinchilla", "D", "C_chinchilla",
            "final_train_loss", "final_eval_loss", "lr", "d_model"]
  rows = [(f"r{i}", f"r{i}", "done", "", n, 20 * n, 6 * 20 * n * n, 3.0 - 0.1 * i, "", 1e-3, 64)
          for i, n in enumerate((1e6, 2e6, 4e6))]
  _write_csv(root / "runs.csv", header, rows)
  (root / "sweep.json").write_text(json.dumps({"sweep": {"kind": kind}}))
  return root


def test_grid_sweep_says_it_has_no_budgets_and_names_transfer(tmp_path, capsys):
  sweep = _write_budgetless_sweep(tmp_path, "grid")
  err = _main_fails([f"--workdir={sweep}", f"--out={tmp_path / 'out'}"], capsys,
                    f"isoflop transfer --workdir={sweep} --out=")
  assert "grid sweep" in err and "no compute budgets" in err and "nan" not in err
  assert not (tmp_path / "out").exists()


def test_ladder_sweep_without_budgets_is_read(tmp_path):
  points = inputs.from_sweep(str(_write_budgetless_sweep(tmp_path, "ladder")))
  assert "budget" not in points.table and len(points.table) == 3  # Approach 2 groups by C
  assert points.curves is None  # no run directories in this fake


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
  out = _write_csv(tmp_path / "taken", ["mine"], [])
  # The 4 points are too few for any approach: the --out error shows it is checked first.
  points = _write_csv(tmp_path / "points.csv", ["N", "C", "loss"], GOOD_ROWS)
  _main_fails([f"--csv={points}", f"--out={out}"], capsys, f"--out={out} is an existing file")
  assert out.read_text() == "mine\n" and sorted(os.listdir(tmp_path)) == ["points.csv", "taken"]


def test_counts_in_messages_agree_with_their_nouns(tmp_path, capsys):
  assert (inputs.plural(1, "point"), inputs.plural(2, "point")) == ("1 point", "2 points")
  path = _write_csv(tmp_path / "one.csv", ["N", "C", "loss"], GOOD_ROWS[:1])
  err = _main_fails([f"--csv={path}", "--drop_highest_loss=1", f"--out={tmp_path / 'out'}"],
                    capsys, "which has 1 point;")
  assert "1 points" not in err
  with pytest.raises(inputs.NotEnoughData, match="found 0 of 1 budget$"):
    approach2.fit(_points(np.array([1e6, 2e6]), np.array([1e8, 5e7]), np.array([3.0, 2.9])),
                  bootstrap=0, seed=0)


def test_a_degenerate_fit_gives_an_infinite_frontier_not_a_crash():
  """A bootstrap or a small sweep can fit A = 0 (no parameter term): G is then 0 and the
  optimum unbounded; the frontier says so with inf rather than raising."""
  flat = approach3.Law(E=1.69, A=0.0, B=410.7, alpha=0.34, beta=0.28)
  frontier = approach3.Optimum(flat).frontier()
  assert np.isinf(frontier.d_opt(1e20))


def test_vision_frontier_recovers_a_saturating_law(tmp_path):
  """Runs of three sizes whose held-out error follows E = a (C + d)^-b + c, the smaller ones
  worse late in their runs: the frontier is the running minimum over C, and the fit recovers
  b and c inside their intervals."""
  from isoflop.experiments.analysis import vision_frontier
  a, b, c, d = 1.5e4, 0.5, 0.02, 1e9
  rows = []
  for i, per_example in enumerate((1e6, 1e7, 1e8)):
    name = f"m{i}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(
        {"flops_per_example": {"chinchilla": per_example}, "config": {"batch_size": 10},
         "n_params": {"chinchilla": 1000 * (i + 1)}}))
    evals = []
    for step in (100, 300, 1000, 3000, 10000):
      compute = per_example * 10 * step
      saturated = 1.0 + 0.5 * max(0.0, np.log10(step / 1000))  # a small model stops improving
      error = (a * (compute + d) ** -b + c) * (saturated if i < 2 else 1.0)
      evals.append(json.dumps({"step": step, "eval_accuracy": 1.0 - error}))
    (tmp_path / name / "metrics.jsonl").write_text("\n".join(evals) + "\n")
    rows.append({"name": name, "workdir": name, "status": "done"})
  pd.DataFrame(rows).to_csv(tmp_path / "runs.csv", index=False)
  out = tmp_path / "out"
  assert vision_frontier.main(["prog", f"--workdirs={tmp_path}", "--labels=x",
                               f"--out={out}", "--bootstrap=30"]) == 0
  entry = json.loads((out / "frontier.json").read_text())["series"]["x"]
  front = np.array(entry["frontier"])
  assert (np.diff(front[:, 0]) > 0).all() and (np.diff(front[:, 1]) < 0).all()
  for key, truth, tolerance in (("b", b, 0.05), ("c", c, 0.005)):
    fitted = entry["fit"][key]
    assert fitted["value"] == pytest.approx(truth, abs=tolerance), key
    assert fitted["ci95"][0] <= truth <= fitted["ci95"][1], key
  assert (out / "error_vs_compute.png").exists()
