"""Distillation against training from scratch at equal student compute (issue 17): two student
sizes on the embedded Shakespeare bytes, each trained twice on the same batches and steps,
from the labels alone and with a larger decoder as teacher (alpha 0.5, T 2), three seeds per
run (a seed ensemble: error bars from one compiled step). First train the teacher:

  isoflop train --config=experiments/configs/tiny_shakespeare.py --workdir=runs/distill_teacher \\
    --config.model.d_model=96 --config.model.n_layers=4 --config.model.n_heads=24 \\
    --config.steps=1000 --config.batch_size=32 --config.seq_len=64 --config.optimizer.lr=1e-2 \\
    --config.optimizer.warmup_steps=20 --config.eval_every=1000000 --config.eval_batches=8

The teacher's forward pass adds to each distilled step's cost (config.json: distill, and
flops_per_token.measured counts it); the students' own training FLOPs are equal.
"""

import ml_collections

TEACHER = "runs/distill_teacher"


def get_sweep():
  s = ml_collections.ConfigDict()
  s.kind = "ladder"
  s.config = "experiments/configs/tiny_shakespeare.py"
  s.n_convention = "kaplan"
  s.flop_convention = "chinchilla"
  s.sizes = (1.5e4, 4e4)
  s.tokens_per_param = 20.0
  s.shape = ml_collections.ConfigDict({"aspect_ratio": 32.0, "head_size": 4})
  s.compression = {"distill": {"teacher": [None, TEACHER]}}
  s.overrides = {"batch_size": 32, "seq_len": 64, "log_every": 25, "eval_every": 1_000_000,
                 "eval_batches": 8, "checkpoint_every": 1000, "ensemble": 3,
                 "data": {"source": "shakespeare", "tokenizer": "bytes"},
                 "optimizer": {"lr": 1e-2, "warmup_steps": 5, "schedule": "cosine"},
                 "distill": {"alpha": 0.5, "temperature": 2.0}}
  return s
