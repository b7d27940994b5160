"""TPU plans compiled on this CPU machine through libtpu's compile-only devices:
``isoflop train --dry_run --topology=...`` and ``isoflop sweep --dry_run --topology=...``."""

import importlib.util
import json

import pandas as pd
import pytest

from isoflop.experiments import cli
from isoflop.train import hardware, tpu_plan

pytestmark = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                reason="libtpu is not installed (pip install isoflop[tpu])")

TINY = "--config=experiments/configs/tiny.py"
LLAMA_1B = "--config=experiments/configs/llama_1b.py"
HBM = {"v5e:2x2": (4, 16 * 2**30, 197e12, 819e9), "v5p:2x2x2": (8, 95 * 2**30, 459e12, 2765e9)}


def _plan(capsys, workdir, *args):
  code = cli.main(["isoflop", "train", *args, f"--workdir={workdir}", "--dry_run"])
  out, err = capsys.readouterr()
  return code, out, err, json.loads((workdir / "dry_run.json").read_text())


def _check_roofline(plan, topology):
  chips, hbm, peak, bandwidth = HBM[topology]
  assert plan["topology"] == topology and plan["chips"] == chips
  assert plan["hbm_per_chip_bytes"] == hbm and plan["peak_bf16_flops_per_chip"] == peak
  assert "cloud.google.com/tpu/docs" in plan["sources"]["hbm"]
  assert "cloud.google.com/tpu/docs" in plan["sources"]["peak_bf16_flops"]
  needed = plan["memory_per_device_bytes"]["needed"]
  assert plan["memory_needed_per_chip_bytes"] == needed
  assert plan["fits"] == (needed <= hbm) == plan["memory_fit"]["fits"]
  # the HBM table, not the host's RAM, is the limit of a TPU chip
  assert plan["memory_fit"]["limit_bytes_per_device"] == hbm
  assert plan["flops_per_chip"] == pytest.approx(plan["flops_per_step"]["measured"] / chips)
  compute_s = plan["flops_per_chip"] / peak
  memory_s = (0.0 if plan["bytes_accessed_per_chip"] is None
              else plan["bytes_accessed_per_chip"] / bandwidth)
  assert plan["roofline"]["compute_s"] == pytest.approx(compute_s)
  assert plan["estimated_step_time_s"] == pytest.approx(max(compute_s, memory_s))
  assert plan["roofline"]["bound"] == ("compute" if compute_s >= memory_s else "memory")
  step_s, steps = plan["estimated_step_time_s"], plan["steps"]
  assert plan["tokens_per_s"] == pytest.approx(plan["tokens_per_step"] / step_s)
  assert plan["estimated_chip_hours"] == pytest.approx(steps * step_s * chips / 3600)
  assert plan["versions"]["libtpu"] and plan["versions"]["jax"]
  # all of the dry run's keys are kept
  for key in ("memory_per_device_bytes", "flops_per_step", "flops_per_token", "param_counts",
              "n_params", "tokens_per_step", "compile_time_s", "devices", "versions"):
    assert key in plan
  assert plan["devices"]["platform"] == "tpu" and plan["devices"]["count"] == chips


@pytest.mark.parametrize("topology", ["v5e:2x2", "v5p:2x2x2"])
def test_tiny_fits_and_gets_a_roofline(topology, tmp_path, capsys):
  code, out, err, plan = _plan(capsys, tmp_path / "run", TINY, f"--topology={topology}")
  assert code == 0, err
  assert err == ""  # libtpu's warnings about a missing TPU VM stay out of the output
  assert f"TPU plan for {topology}" in out and "roofline step time" in out
  _check_roofline(plan, topology)
  assert plan["fits"] and plan["hbm_fraction"] < 0.01  # a 0.12M-parameter model
  # the compiled step's costs, its two-layer scan counted in full
  cost = plan["cost_per_chip"]
  assert cost["loop_scale_bytes_accessed"] > 1.0 and cost["loop_scale_flops"] > 1.0
  assert plan["bytes_accessed_per_chip"] == pytest.approx(
      cost["compiled_bytes_accessed"] * cost["loop_scale_bytes_accessed"])
  assert cost["flops"] == pytest.approx(plan["flops_per_chip"], rel=0.25)
  # tiny: 16 sequences of 64 tokens, a few MFLOPs per chip: HBM-bound
  assert plan["roofline"]["bound"] == "memory"


@pytest.mark.parametrize("topology", ["v5e:2x2", "v5p:2x2x2"])
def test_1b_at_its_default_batch_does_not_fit_and_says_so_in_one_line(topology, tmp_path,
                                                                       capsys):
  """The real 1B model at batch 64 x 2048 on 4 or 8 chips, data parallel (mesh.data=-1), no
  rematerialization: the compiler refuses the step for the chips' HBM."""
  workdir = tmp_path / "run"
  code, out, err, plan = _plan(capsys, workdir, LLAMA_1B, f"--topology={topology}")
  assert code == tpu_plan.EXIT_DOES_NOT_FIT
  assert out == ""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err
  assert lines[0].startswith(f"isoflop train: does not fit {topology}: ")
  assert "largest per chip: temporaries" in lines[0] and "params/layers/mlp/" in lines[0]
  assert str(workdir / "dry_run.json") in lines[0]
  _check_roofline(plan, topology)
  assert plan["fits"] is False and plan["memory_fit"]["fits"] is False
  assert plan["n_params"]["chinchilla"] > 1e9  # the 1B config's own model
  memory = plan["memory_per_device_bytes"]
  assert "RESOURCE_EXHAUSTED" in memory["compile_error"]
  # XLA's temporaries alone exceed the chip: activations of 16 or 8 sequences x 2048 x 20
  assert memory["temporaries"] > HBM[topology][1] > memory["arguments"] > 0
  assert plan["memory_needed_per_chip_bytes"] == memory["arguments"] + memory["temporaries"]
  # without a compiled step: no HBM term
  assert plan["bytes_accessed_per_chip"] is None and plan["roofline"]["memory_s"] is None


def test_1b_at_8_sequences_of_128_fits_v5p(tmp_path, capsys):
  """The same model at a batch shrunk for the test's time (~15 s to compile on two cores):
  its replicated parameters and AdamW moments (fp32: 12 bytes a parameter) are most of what
  a chip holds."""
  code, out, err, plan = _plan(capsys, tmp_path / "run", LLAMA_1B, "--topology=v5p:2x2x2",
                               "--config.batch_size=8", "--config.seq_len=128")
  assert code == 0, err
  _check_roofline(plan, "v5p:2x2x2")
  memory = plan["memory_per_device_bytes"]
  n = plan["param_counts_padded"]["total"]
  assert memory["arguments"] >= 12 * n > 11 * 2**30
  assert plan["fits"] and 0.1 < plan["hbm_fraction"] < 0.5
  assert plan["flops_per_chip"] == pytest.approx(plan["flops_per_step"]["measured"] / 8)
  assert plan["bytes_accessed_per_chip"] > 12 * n  # the optimizer reads and writes the state


def _no_libtpu(monkeypatch):
  monkeypatch.setattr(tpu_plan, "libtpu_version", lambda: None)


BAD = {
    "unknown_topology": (["--dry_run", "--topology=v9:2x2"], None,
                         "unknown TPU topology 'v9:2x2'"),
    "unknown_grid": (["--dry_run", "--topology=v5e:3x3"], None, "libtpu refused"),
    "no_libtpu": (["--dry_run", "--topology=v5e:2x2"], _no_libtpu, "pip install isoflop[tpu]"),
    "no_dry_run": (["--topology=v5e:2x2"], None, "add --dry_run"),
    "mesh_of_other_size": (["--dry_run", "--topology=v5p:2x2x2", "--config.mesh.data=4"], None,
                           "--topology=v5p:2x2x2 has 8 chips"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(name, tmp_path, capsys, monkeypatch):
  args, patch, expected = BAD[name]
  if patch:
    patch(monkeypatch)
  workdir = tmp_path / "run"
  assert cli.main(["isoflop", "train", TINY, f"--workdir={workdir}", *args]) == 2
  out, err = capsys.readouterr()
  lines = err.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], err
  assert out == "" and not workdir.exists()


def test_v4_has_one_device_per_chip():
  devices = tpu_plan.topology_devices("v4:2x2x2")
  assert len(devices) == 8 and devices[0].device_kind == "TPU v4"  # megacore, as on a TPU VM


def test_cpu_is_the_default_only_without_tpus_and_gpus(monkeypatch):
  assert hardware.default_jax_platforms({"JAX_PLATFORMS": "tpu"}) is None
  monkeypatch.setattr(hardware, "GPU_DEVICE_FILES", ())
  monkeypatch.setattr(hardware, "tpu_attached", lambda: True)
  assert hardware.default_jax_platforms({}) is None
  monkeypatch.setattr(hardware, "tpu_attached", lambda: False)
  assert hardware.default_jax_platforms({}) == "cpu"  # libtpu is installed here


SWEEP = """
import ml_collections

def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/tiny.py"
  s.n_convention = "chinchilla"
  s.flop_convention = "chinchilla"
  s.grid = {"model": {"d_model": (32, 64)}}
  s.overrides = {"batch_size": 16, "seq_len": 64, "steps": 200,
                 "optimizer": {"warmup_steps": 2}}
  return s
"""


def test_sweep_plan_writes_plan_csv(tmp_path, capsys):
  sweep_file = tmp_path / "grid.py"
  sweep_file.write_text(SWEEP)
  out_dir = tmp_path / "plan"
  assert cli.main(["isoflop", "sweep", f"--sweep={sweep_file}", "--dry_run",
                   "--topology=v5e:2x2", f"--workdir={out_dir}"]) == 0
  out = capsys.readouterr().out
  assert "2 of 2 members fit v5e:2x2 on 4 chips" in out and "chip-hours" in out
  table = pd.read_csv(out_dir / "plan.csv")
  assert list(table.name) == ["d_model32", "d_model64"]
  assert table.fits.all() and table.error.isna().all() and (table.chips == 4).all()
  assert (table.hbm_per_chip_bytes == 16 * 2**30).all()
  assert table.memory_needed_per_chip_bytes.is_monotonic_increasing
  assert list(table.estimated_chip_hours) == pytest.approx(
      list(table.trained_steps * table.estimated_step_time_s * 4 / 3600))
  assert not (out_dir / "plan.csv.tmp").exists()
  assert sorted(p.name for p in out_dir.iterdir()) == ["plan.csv"]  # no member run started
