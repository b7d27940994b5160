"""Which play is this passage from? The tiny decoder classifying 64-byte passages of the 38
plays (``data.source=shakespeare_plays``: held out by scene), with held-out accuracy.

Pretrain on the training scenes' text, then fine-tune from it::

  isoflop train --config=experiments/configs/plays_lm.py --workdir=runs/plays_lm
  isoflop train --config=experiments/configs/plays_tiny.py --workdir=runs/plays_ft \\
      --config.init_from=runs/plays_lm [--config.finetune.lora.rank=8]
"""

from isoflop.experiments.configs import plays_lm


def get_config():
  c = plays_lm.get_config()
  c.task = "classification"
  c.model.num_classes = 38
  c.eval_batches = 24  # 768 of the held-out passages (their order is fixed)
  return c
