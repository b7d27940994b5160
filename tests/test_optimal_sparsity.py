"""The optimal sparsity of a sparsity law at equal training compute: with Frantar et al.'s
published T5 coefficients it grows with training length, as the paper reports."""

import json

from isoflop.experiments.analysis import optimal_sparsity

T5 = dict(a=0.568, b=0.722, c=1.523, d=0.245, e=0.634, f=0.203, g=0.651)  # N in M, D in 1e5


def test_optimal_sparsity_grows_with_training_length(tmp_path, capsys):
  lengths = [0.5, 2.5, 10.0, 50.0]
  s_opt = [optimal_sparsity.optimal(T5, 100.0, d)[0] for d in lengths]
  assert s_opt[0] == 0.0 and all(a < b for a, b in zip(s_opt, s_opt[1:])), s_opt
  fit = tmp_path / "fit.json"
  fit.write_text(json.dumps({"coefficients": {k: {"value": v} for k, v in T5.items()}}))
  out = tmp_path / "s_opt.json"
  assert optimal_sparsity.main(["prog", f"--fit={fit}", "--n=100", "--lengths=0.5,50",
                                f"--out={out}"]) == 0
  points = json.loads(out.read_text())["points"]
  assert [p["S_opt"] for p in points] == [s_opt[0], s_opt[-1]]
  assert optimal_sparsity.main(["prog", f"--fit={tmp_path / 'missing.json'}", "--n=1"]) == 2
  assert len(capsys.readouterr().err.strip().splitlines()) == 1
