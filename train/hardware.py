"""What the hardware can do, and what it used: peak bf16 FLOP/s per device (for MFU), each TPU
chip's HBM (capacity and bandwidth, for plans of slices that are not attached) and the NVIDIA
energy counter (NVML). Unknown devices and missing counters give None, never a guess."""

import glob
import importlib.util
import os
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
    (r"TPU v4", 275e12, "Google Cloud TPU v4 documentation, cloud.google.com/tpu/docs/v4 "
     "(bf16 per chip)"),
    (r"TPU v5 ?lite|TPU v5e", 197e12, "Google Cloud TPU v5e documentation, "
     "cloud.google.com/tpu/docs/v5e (bf16 per chip)"),
    (r"TPU v5p|TPU v5$", 459e12, "Google Cloud TPU v5p documentation, "
     "cloud.google.com/tpu/docs/v5p (bf16 per chip)"),
    (r"TPU v6 ?lite|TPU v6e|Trillium", 918e12, "Google Cloud TPU v6e documentation, "
     "cloud.google.com/tpu/docs/v6e (bf16 per chip)"),
]

# HBM per TPU chip: (device_kind pattern, capacity in bytes, bandwidth in bytes/s, source).
# The pages give capacities as "32 GiB" (v4) and "16 GB", "95 GB", "32 GB" (v5e, v5p, v6e);
# HBM stacks come in binary sizes, so all are read as GiB. The runtime keeps a little of it
# for itself, so a plan within a few percent of the capacity is marginal.
TPU_HBM: list[tuple[str, int, float, str]] = [
    (r"TPU v4", 32 * 2**30, 1200e9, "Google Cloud TPU v4 documentation, "
     "cloud.google.com/tpu/docs/v4 (HBM2 32 GiB, 1200 GBps per chip)"),
    (r"TPU v5 ?lite|TPU v5e", 16 * 2**30, 819e9, "Google Cloud TPU v5e documentation, "
     "cloud.google.com/tpu/docs/v5e (HBM2 16 GB, 819 GBps per chip)"),
    (r"TPU v5p|TPU v5$", 95 * 2**30, 2765e9, "Google Cloud TPU v5p documentation, "
     "cloud.google.com/tpu/docs/v5p (HBM2e 95 GB, 2765 GBps per chip)"),
    (r"TPU v6 ?lite|TPU v6e|Trillium", 32 * 2**30, 1638e9, "Google Cloud TPU v6e "
     "documentation, cloud.google.com/tpu/docs/v6e (HBM 32 GB, 1638 GBps per chip; earlier "
     "revisions of the page said 1600 and 1640)"),
]


def tpu_hbm(device_kind: str) -> tuple[int, float, str] | None:
  """(HBM bytes, HBM bandwidth in bytes/s, source) of a TPU chip, or None if unknown."""
  for pattern, capacity, bandwidth, source in TPU_HBM:
    if re.search(pattern, device_kind):
      return capacity, bandwidth, source
  return None


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
  """(bytes one device can hold, what that is). Accelerators report their own limit; TPU
  devices that cannot (compile-only ones) get their chip's HBM from ``TPU_HBM``; CPU devices
  share the host's RAM, so each gets its share of it."""
  device = devices[0]
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # some backends do not implement it
    pass
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"]), f"{device.device_kind} memory"
  if device.platform == "tpu":  # libtpu's compile-only devices (a plan) report no stats
    hbm = tpu_hbm(device.device_kind)
    return (None, "unknown") if hbm is None else (hbm[0], f"{device.device_kind} HBM per "
                                                          "chip, hardware.TPU_HBM")
  if device.platform == "cpu":
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    local = sum(1 for d in devices if d.process_index == device.process_index)
    share = f", shared by {local} CPU devices" if local > 1 else ""
    return ram // local, f"{ram / 2**30:.1f} GiB of host RAM{share}"
  return None, "unknown"


_GOOGLE_PCI_VENDOR = "0x1ae0"
GPU_DEVICE_FILES = ("/dev/nvidia0", "/dev/nvidiactl", "/dev/dxg", "/dev/kfd")  # NVIDIA, AMD
_GOOGLE_NON_TPU_PCI_DEVICES = {"0x0042"}  # gVNIC, the network card of Google Cloud VMs


def tpu_attached() -> bool:
  """Whether this machine may have a TPU, judged from device files alone (no runtime is
  started): a Google PCI device other than its network card, or /dev/accel*. Errs towards
  yes, so an unknown chip is never hidden."""
  if glob.glob("/dev/accel*"):
    return True
  for vendor_path in glob.glob("/sys/bus/pci/devices/*/vendor"):
    try:
      with open(vendor_path, encoding="ascii") as f:
        if f.read().strip() != _GOOGLE_PCI_VENDOR:
          continue
      with open(os.path.join(os.path.dirname(vendor_path), "device"), encoding="ascii") as f:
        if f.read().strip() not in _GOOGLE_NON_TPU_PCI_DEVICES:
          return True
    except OSError:
      continue
  return False


def default_jax_platforms(environ=os.environ) -> str | None:
  """``"cpu"`` where JAX, left to choose, would try libtpu's TPU backend on a machine without
  TPUs or GPUs (libtpu installed for plans, ``isoflop[tpu]``): that attempt fails after
  printing warnings about TPU_ACCELERATOR_TYPE and TPU_WORKER_HOSTNAMES. None (JAX chooses)
  when JAX_PLATFORMS is set, libtpu is absent, or a TPU or GPU may be present."""
  if "JAX_PLATFORMS" in environ or importlib.util.find_spec("libtpu") is None:
    return None
  if tpu_attached() or any(os.path.exists(path) for path in GPU_DEVICE_FILES):
    return None
  return "cpu"
