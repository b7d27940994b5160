"""``<workdir>/config.json``: the resolved config, versions, devices, N and FLOPs."""

import importlib.metadata
import json
import os
import platform
from typing import Any

import jax

_PACKAGES = ("isoflop", "jax", "jaxlib", "flax", "optax", "numpy", "ml_collections",
             "orbax-checkpoint")


def versions() -> dict[str, str | None]:
  found: dict[str, str | None] = {"python": platform.python_version()}
  for package in _PACKAGES:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  return found


def devices_summary(mesh) -> dict[str, Any]:
  device = mesh.devices.flat[0]
  return {"platform": device.platform, "kind": device.device_kind,
          "count": int(mesh.devices.size), "process_count": jax.process_count(),
          "mesh": dict(mesh.shape)}


def write_json_atomically(path: str, payload: dict[str, Any]) -> None:
  """Write to a temporary file then rename, so a reader never sees half a file."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)
