"""What the hardware can do, and what it used: peak bf16 FLOP/s per device (for MFU) and the
NVIDIA energy counter (NVML). Unknown devices and missing counters give None, never a guess."""

import re
import warnings

# Dense (not sparse) bf16 peak per device, FLOP/s, matched against jax's device_kind.
PEAK_BF16_FLOPS: list[tuple[str, float, str]] = [
    (r"H100.*(SXM|HBM3)", 989e12, "NVIDIA H100 Tensor Core GPU datasheet (SXM5, BF16 dense)"),
    (r"H100.*(PCIe|NVL)", 756e12, "NVIDIA H100 datasheet (PCIe, BF16 dense)"),
    (r"H200", 989e12, "NVIDIA H200 Tensor Core GPU datasheet (SXM, BF16 dense)"),
    (r"B200", 2250e12, "NVIDIA DGX B200 / HGX B200 datasheet (BF16 dense, per GPU)"),
    (r"A100", 312e12, "NVIDIA A100 Tensor Core GPU datasheet (BF16 dense)"),
    (r"L40S", 362e12, "NVIDIA L40S datasheet (BF16 dense)"),
    (r"TPU v4", 275e12, "Google Cloud TPU v4 documentation (bf16 per chip)"),
    (r"TPU v5 ?lite|TPU v5e", 197e12, "Google Cloud TPU v5e documentation (bf16 per chip)"),
    (r"TPU v5p|TPU v5$", 459e12, "Google Cloud TPU v5p documentation (bf16 per chip)"),
    (r"TPU v6 ?lite|TPU v6e|Trillium", 918e12, "Google Cloud TPU v6e documentation (bf16)"),
]


def peak_bf16_flops(device_kind: str) -> tuple[float | None, str | None]:
  """(peak FLOP/s, source) for a device kind, or (None, None) with a warning if unknown."""
  for pattern, peak, source in PEAK_BF16_FLOPS:
    if re.search(pattern, device_kind):
      return peak, source
  warnings.warn(f"no peak FLOP/s known for device {device_kind!r}: MFU is reported as null; "
                "pass the device's peak as isoflop bench --peak_flops=<FLOP/s per device>",
                stacklevel=2)
  return None, None


class EnergyMeter:
  """Cumulative energy of this process's NVIDIA GPUs through NVML, in joules.

  ``available`` is False (and ``reason`` says why) on machines without NVML or an NVIDIA GPU;
  then ``joules()`` returns None."""

  def __init__(self, device_ids: list[int] | None = None):
    self.available, self.reason, self._handles = False, None, []
    try:
      import pynvml  # nvidia-ml-py
      pynvml.nvmlInit()
      count = pynvml.nvmlDeviceGetCount()
      ids = range(count) if device_ids is None else device_ids
      self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in ids]
      self._nvml = pynvml
      for handle in self._handles:  # raises where the counter is unsupported
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
      self.available = bool(self._handles)
      self.reason = None if self.available else "no NVIDIA GPU"
    except Exception as e:  # ImportError, NVMLError (no driver, no GPU, unsupported)
      self.reason = f"NVML not available ({type(e).__name__}: {e})"

  def joules(self) -> float | None:
    if not self.available:
      return None
    millijoules = sum(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self._handles)
    return millijoules / 1000.0


def memory_limit_bytes(devices) -> tuple[int | None, str]:
  """(bytes one device can hold, what that is). Accelerators report their own limit; CPU
  devices share the host's RAM, so each gets its share of it."""
  device = devices[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # some backends do not implement it
    pass
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} memory"
  if device.platform == "cpu":
    import os
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    local = sum(1 for d in devices if d.process_index == device.process_index)
    share = f", shared by {local} CPU devices" if local > 1 else ""
    return ram // local, f"{ram / 2**30:.1f} GiB of host RAM{share}"
  return None, "unknown"
