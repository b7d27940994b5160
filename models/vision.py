"""Checks shared by the vision families: does the data fit the model?

``check_image_data`` is what a vision family's ``check_data`` calls at the boundary (before
anything is compiled or written): the images' height, width and channels must be the model's,
the labels must lie in [0, num_classes), and a BatchNorm needs at least two examples per
data-parallel device (its statistics are over the global microbatch, synchronized by the one
jitted program, but one example per device is refused as a layout mistake).
"""

from typing import Any


def check_image_data(cfg: Any, data: dict[str, Any], per_device_batch: int, *,
                     batch_norm: bool = False) -> None:
  shape = data.get("image_shape")
  if shape is None:
    raise ValueError(f"data.source {data.get('source')!r} gives no images; the vision "
                     "families need an image source (digits, or tfds:<name> with image and "
                     "label features)")
  height, width, channels = shape
  if (height, width) != (cfg.image_size, cfg.image_size):
    raise ValueError(f"the images are {height}x{width} but model.image_size={cfg.image_size}; "
                     f"set model.image_size={height}" + ("" if height == width else
                                                         " (square images only)"))
  if channels != cfg.channels:
    raise ValueError(f"the images have {channels} channel(s) but model.channels="
                     f"{cfg.channels}; set model.channels={channels}")
  low, high = data.get("label_range", (0, 0))
  if low < 0 or high >= cfg.num_classes:
    raise ValueError(f"the labels run from {low} to {high}, outside the model's classes 0.."
                     f"{cfg.num_classes - 1}; set model.num_classes={high + 1}")
  if batch_norm and per_device_batch < 2:
    raise ValueError(f"BatchNorm needs at least 2 examples per data-parallel device and "
                     f"has {per_device_batch} (batch_size / (data-parallel size x "
                     "microbatches)); raise batch_size or lower microbatches")
