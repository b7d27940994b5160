"""Build a device mesh whose axes are the ones a rules table shards over (``rules.mesh_axes``)."""

import math
from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

# The axes of the package's own tables; a mesh has those its rules table names.
MESH_AXES = ("data", "fsdp", "expert", "tensor")


def resolve_mesh_shape(sizes: Mapping[str, int], n_devices: int,
                       axes: Sequence[str] = MESH_AXES, table: str | None = None
                       ) -> dict[str, int]:
  """Sizes of ``axes``, filling a single ``-1`` entry so the product equals ``n_devices``.
  A size for an axis outside ``axes`` is refused unless it is 1 (nothing to shard)."""
  unknown = sorted(a for a in set(sizes) - set(axes) if int(sizes[a]) != 1)
  if unknown:
    which = f"the sharding rules table {table!r}" if table else "the sharding rules table"
    raise ValueError(f"mesh axis {unknown[0]!r} (size {sizes[unknown[0]]}) is not one that "
                     f"{which} shards over ({', '.join(axes)}); set it to 1 or pick a table "
                     "that uses it (mesh.rules, sharding/rules.py)")
  shape = {axis: int(sizes.get(axis, 1)) for axis in axes}
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
    product = " x ".join(f"{axis}={size}" for axis, size in shape.items())
    raise ValueError(
        f"mesh {product} = {_devices(math.prod(shape.values()))}, but "
        f"{'1 is' if n_devices == 1 else f'{n_devices} are'} available; make the "
        "product equal the device count (or set one axis to -1)")
  return shape


def _devices(count: int) -> str:
  return f"{count} device" + ("" if count == 1 else "s")


def attached(devices: Sequence[jax.Device]) -> bool:
  """Whether ``devices`` are this process's own, as opposed to compile-only devices (libtpu's
  devices of a TPU slice that is not attached: they compile programs but run nothing)."""
  device = devices[0]
  try:
    return device in jax.devices(device.platform)
  except RuntimeError:  # no backend of that platform here
    return False


def mesh_context(mesh: Mesh):
  """The context a step is traced and lowered in: ``jax.set_mesh``; over compile-only devices
  the abstract mesh alone, so that values made eagerly while tracing stay on this host."""
  if attached(list(mesh.devices.flat)):
    return jax.set_mesh(mesh)
  return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def build_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None,
               axes: Sequence[str] = MESH_AXES, table: str | None = None) -> Mesh:
  """A mesh over ``devices`` (default: all) with ``axes`` in order, automatic sharding."""
  devices = list(jax.devices() if devices is None else devices)
  shape = resolve_mesh_shape(sizes, len(devices), axes, table)
  axes = tuple(shape)
  grid = [shape[axis] for axis in axes]
  if len(devices) == jax.device_count() or not attached(devices):  # a whole slice
    try:  # laid out along the TPU torus's physical axes
      return jax.make_mesh(grid, axes, axis_types=(AxisType.Auto,) * len(axes),
                           devices=devices)
    except NotImplementedError:  # an axis size no product of physical axes (8 on a 4x4)
      from jax.experimental import mesh_utils
      grid_devices = mesh_utils.create_device_mesh(grid, devices,
                                                   allow_split_physical_axes=True)
      return Mesh(grid_devices, axes, axis_types=(AxisType.Auto,) * len(axes))
  # A subset of devices (tests, or one member of a sweep sharing a host): keep their order.
  return Mesh(np.asarray(devices).reshape(grid), axes, axis_types=(AxisType.Auto,) * len(axes))
