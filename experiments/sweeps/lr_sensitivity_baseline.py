"""Learning-rate sensitivity of small decoders (after Wortsman et al. 2023, "Small-scale
proxies for large-scale Transformer training instabilities"): final held-out loss against the
AdamW learning rate over two and a half decades, at widths 64, 128 and 256 (heads of 32, two
layers), on the embedded Shakespeare bytes: the baseline, without QK-norm or z-loss. Its
stabilized twin is ``lr_sensitivity_stabilized.py``; ``python -m
isoflop.experiments.lr_sensitivity`` compares them (docs/reproductions.md, "Stability").

  isoflop sweep --sweep=experiments/sweeps/lr_sensitivity_baseline.py \\
    --workdir=runs/lr_sens_baseline --workers=2
"""

import ml_collections

WIDTHS = (64, 128, 256)
HEAD_SIZE = 32
LRS = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)


def sweep(stabilized: bool) -> ml_collections.ConfigDict:
  s = ml_collections.ConfigDict()
  s.kind = "grid"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.grid = {"optimizer": {"lr": list(LRS)}}
  s.zipped = {"model": {"d_model": list(WIDTHS),
                        "n_heads": [w // HEAD_SIZE for w in WIDTHS]}}
  # No warmup to speak of and no clipping: the instabilities the paper studies show at high
  # learning rates; independent weight decay as the paper's runs use.
  s.overrides = {"steps": 300, "batch_size": 16, "seq_len": 64, "log_every": 25,
                 "eval_every": 1_000_000, "eval_batches": 8, "checkpoint_every": 1_000_000,
                 "model": {"qk_norm": stabilized},
                 "loss": {"z_loss": 1e-4 if stabilized else 0.0},
                 "optimizer": {"schedule": "cosine", "warmup_steps": 15, "clip_norm": 0.0,
                               "independent_weight_decay": True, "weight_decay": 1e-4}}
  return s


def get_sweep():
  return sweep(stabilized=False)
