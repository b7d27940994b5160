"""Build a device mesh with the axes ``data``, ``fsdp`` and ``tensor`` from a config."""

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


def resolve_mesh_shape(sizes: Mapping[str, int], n_devices: int) -> dict[str, int]:
  """Fills a single ``-1`` entry so the product equals ``n_devices``; checks the rest."""
  unknown = set(sizes) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"unknown mesh axes {sorted(unknown)}; the mesh axes are {MESH_AXES}")
  shape = {axis: int(sizes.get(axis, 1)) for axis in MESH_AXES}
  fill = [axis for axis, size in shape.items() if size == -1]
  if len(fill) > 1:
    raise ValueError(f"mesh axes {fill} are all -1; at most one axis may be -1 (fills the rest)")
  bad = [axis for axis, size in shape.items() if size == 0 or size < -1]
  if bad:
    raise ValueError(f"mesh sizes must be positive or -1, got {shape}")
  known = math.prod(size for size in shape.values() if size != -1)
  if fill:
    if n_devices % known:
      raise ValueError(f"mesh {shape} cannot fill {n_devices} devices: {known} does not divide "
                       f"{n_devices}; choose mesh sizes whose product divides the device count")
    shape[fill[0]] = n_devices // known
  if math.prod(shape.values()) != n_devices:
    raise ValueError(
        f"mesh data={shape['data']} x fsdp={shape['fsdp']} x tensor={shape['tensor']} = "
        f"{_devices(math.prod(shape.values()))}, but "
        f"{'1 is' if n_devices == 1 else f'{n_devices} are'} available; make the "
        "product equal the device count (or set one axis to -1)")
  return shape


def _devices(count: int) -> str:
  return f"{count} device" + ("" if count == 1 else "s")


def build_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over ``devices`` (default: all) in MESH_AXES order, with automatic sharding."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(sizes, len(devices))
  grid = [shape[axis] for axis in MESH_AXES]
  if len(devices) == jax.device_count():
    return jax.make_mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                         devices=devices)
  # A subset of devices (tests, or one member of a sweep sharing a host): keep their order.
  return Mesh(np.asarray(devices).reshape(grid), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))
