"""`isoflop compress` on a trained run: held-out loss before and after, non-zero counts, a
loadable output run, and one-line refusals that write nothing."""

import json

import pytest

from isoflop.experiments import cli
from isoflop.train import build, init_from


def _compress(*args):
  return cli.main(["isoflop", "compress", *map(str, args)])


@pytest.mark.xdist_group("trained_tiny_run")  # the shared trained run, built once
def test_prune_reports_before_and_after_and_writes_a_loadable_run(trained_tiny_run, tmp_path):
  workdir, c = trained_tiny_run
  out = tmp_path / "pruned"
  assert _compress(f"--workdir={workdir}", "--method=prune", f"--out={out}",
                   "--config.prune.sparsity=0.75") == 0
  report = json.loads((out / "compress.json").read_text())
  selected = report["pruned_params"]
  assert selected == report["planned_pruned_params"] > 0
  assert report["n_params_nonzero"] == report["n_params_dense"] - selected
  assert report["loss_after"] > report["loss_before"]  # 75% of the matrices gone costs loss
  assert report["weight_bytes"] < report["weight_bytes_dense"]
  record = json.loads((out / "config.json").read_text())
  assert record["compression"]["method"] == "prune"
  fresh = build.prepare(c)  # the compressed run seeds another run of the same shape
  plan = init_from.plan(str(out), fresh.abstract_state)
  assert not plan.fresh and plan.step == 0


@pytest.mark.xdist_group("trained_tiny_run")  # the shared trained run, built once
def test_finetune_recovers_with_the_masks_held(trained_tiny_run, tmp_path):
  workdir, _ = trained_tiny_run
  out = tmp_path / "tuned"
  assert _compress(f"--workdir={workdir}", "--method=prune", f"--out={out}",
                   "--config.prune.method=nm", "--finetune_steps=6") == 0
  report = json.loads((out / "compress.json").read_text())
  assert report["loss_after_finetune"] < report["loss_after"]
  rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
  assert all(row["sparsity"] == 0.5 for row in rows if "sparsity" in row)


@pytest.mark.xdist_group("trained_tiny_run")  # the shared trained run, built once
def test_quantize_reports_bytes_and_writes_the_quantized_values(trained_tiny_run, tmp_path):
  """int8 then int4 weight-only PTQ: fewer bytes at fewer bits, a held-out loss measured on the
  quantized model, and a run holding at most 16 distinct values per output channel at int4."""
  import numpy as np
  workdir, _ = trained_tiny_run
  reports = {}
  for bits in (8, 4):
    out = tmp_path / f"int{bits}"
    assert _compress(f"--workdir={workdir}", "--method=quantize", f"--out={out}",
                     f"--config.quant.bits={bits}") == 0
    reports[bits] = json.loads((out / "compress.json").read_text())
  assert reports[4]["weight_bytes"] < reports[8]["weight_bytes"] < reports[8]["weight_bytes_dense"]
  for report in reports.values():
    assert report["loss_after"] != report["loss_before"]
    assert abs(report["loss_after"] - report["loss_before"]) < 0.1 * report["loss_before"]
    assert report["n_params_nonzero"] == report["n_params_dense"]
  import orbax.checkpoint as ocp
  saved = ocp.PyTreeCheckpointer().restore(str(tmp_path / "int4" / "checkpoints" / "0" / "state"))
  kernel = saved["params"]["layers"]["mlp"]["wi"]["kernel"]  # (layers, embed, mlp)
  for layer in np.asarray(kernel):
    assert max(len(np.unique(layer[:, j])) for j in range(layer.shape[1])) <= 16


@pytest.mark.parametrize("case", ["no_checkpoint", "out_not_empty", "bad_sparsity",
                                  "bad_bits"])
@pytest.mark.xdist_group("trained_tiny_run")  # the shared trained run, built once
def test_bad_compress_input_is_one_line_and_writes_nothing(trained_tiny_run, tmp_path, capsys,
                                                           case):
  workdir, _ = trained_tiny_run
  out = tmp_path / "out"
  args = [f"--workdir={workdir}", "--method=prune", f"--out={out}"]
  if case == "no_checkpoint":
    empty = tmp_path / "empty_run"
    empty.mkdir()
    (empty / "config.json").write_text((workdir / "config.json").read_text())
    args[0] = f"--workdir={empty}"
  elif case == "out_not_empty":
    out.mkdir()
    (out / "keep.txt").write_text("mine")
  elif case == "bad_sparsity":
    args.append("--config.prune.sparsity=1.0")
  else:
    args[1:2] = ["--method=quantize", "--config.quant.bits=3"]
  capsys.readouterr()
  assert _compress(*args) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("isoflop compress: error:"), err
  if case == "out_not_empty":
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
  else:
    assert not out.exists()
