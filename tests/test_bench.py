"""``isoflop bench`` on CPU: the JSON contract, the peak table, and the NVML path."""

import json
import subprocess
import sys
import types

import pytest

from conftest import REPO
from isoflop.train import hardware

REQUIRED = {"step_time_s", "tokens_per_s", "mfu", "flop_convention", "peak_memory_bytes",
            "compile_time_s", "device", "batch_size", "seq_len", "versions",
            "joules_per_token", "average_watts"}


def test_bench_on_cpu_writes_the_contract(tmp_path):
  out = subprocess.run([sys.executable, "-m", "isoflop.experiments.cli", "bench",
                        "--config=experiments/configs/tiny.py", f"--out={tmp_path}/b.json",
                        "--steps=5", "--config.mesh.data=1", "--config.batch_size=8"],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ,
                            "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  assert out.returncode == 0, out.stderr
  result = json.loads((tmp_path / "b.json").read_text())
  assert REQUIRED <= set(result)
  assert result["tokens_per_s"] == pytest.approx(8 * 64 / result["step_time_s"])
  assert result["mfu"] is None and "no peak FLOP/s known" in out.stderr  # never a made-up peak
  assert result["joules_per_token"] is None and result["average_watts"] is None
  assert {"jax", "jaxlib", "flax"} <= set(result["versions"])
  assert result["device"]["platform"] == "cpu"
  assert "--peak_flops" in out.stderr  # the warning says how to give the peak


def test_a_peak_on_the_command_line_gives_mfu(tmp_path, capsys):
  from isoflop.experiments import cli
  assert cli.main(["isoflop", "bench", "--config=experiments/configs/tiny.py",
                   f"--out={tmp_path}/b.json", "--steps=2", "--warmup=1",
                   "--peak_flops=1e9"]) == 0
  result = json.loads((tmp_path / "b.json").read_text())
  assert result["peak_flops_per_device"] == 1e9
  assert result["peak_flops_source"] == "--peak_flops (command line)"
  expected = result["flops_per_step"] / result["step_time_s"] / (1e9 * result["device"]["count"])
  assert result["mfu"] == pytest.approx(expected)


@pytest.mark.parametrize("kind, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12),
    ("NVIDIA A100-SXM4-80GB", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
    ("TPU v5p", 459e12), ("TPU v6 lite", 918e12)])
def test_peak_table(kind, peak):
  value, source = hardware.peak_bf16_flops(kind)
  assert value == peak and source


def test_unknown_device_has_no_peak():
  with pytest.warns(UserWarning, match="MFU is reported as null"):
    assert hardware.peak_bf16_flops("Some Future Chip") == (None, None)


def test_energy_meter_reads_nvml_when_present(monkeypatch):
  counters = {0: 5_000, 1: 7_000}  # millijoules
  fake = types.SimpleNamespace(
      nvmlInit=lambda: None, nvmlDeviceGetCount=lambda: 2,
      nvmlDeviceGetHandleByIndex=lambda i: i,
      nvmlDeviceGetTotalEnergyConsumption=lambda h: counters[h])
  monkeypatch.setitem(sys.modules, "pynvml", fake)
  meter = hardware.EnergyMeter()
  assert meter.available and meter.joules() == pytest.approx(12.0)
  monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML: null, with the reason
  absent = hardware.EnergyMeter()
  assert not absent.available and absent.joules() is None and "NVML" in absent.reason


def test_ensemble_mfu_counts_every_model(tiny_config, tmp_path, monkeypatch):
  """A K-seed ensemble step trains K models: MFU must divide K models' FLOPs by the step's
  time, not one model's."""
  from isoflop.experiments import bench
  monkeypatch.setattr(hardware, "peak_bf16_flops", lambda kind: (1e9, "a test peak"))
  tiny_config.ensemble = 2
  result = bench.run(tiny_config, str(tmp_path / "b.json"), steps=2, warmup=1,
                     flop_convention="palm")
  per_model = result["flops_per_token"]["palm"] * result["tokens_per_step"]
  assert result["flops_per_step"] == pytest.approx(2 * per_model)
  n_devices = result["device"]["count"]
  assert result["mfu"] == pytest.approx(
      2 * per_model / result["step_time_s"] / (1e9 * n_devices))
  assert result["hfu"] == pytest.approx(2 * result["flops_per_token"]["measured"]
                                        * result["tokens_per_step"] / result["step_time_s"]
                                        / (1e9 * n_devices))
