"""The ``isoflop`` command as a user runs it: in a subprocess, on the 8 fake CPU devices."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO


def _isoflop(*args, cwd=REPO, env_extra=None):
  env = dict(os.environ, **(env_extra or {}))
  return subprocess.run([sys.executable, "-m", "isoflop.experiments.cli", *args], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=600)


def test_train_on_a_2x2x2_mesh_as_the_readme_says(tmp_path):
  workdir = tmp_path / "x"
  out = _isoflop("train", "--config=experiments/configs/tiny.py", f"--workdir={workdir}",
                 "--config.steps=40", "--config.mesh.data=2", "--config.mesh.fsdp=2",
                 "--config.mesh.tensor=2")
  assert out.returncode == 0, out.stderr
  # Not a terminal: plain progress lines, no progress-bar redraws.
  assert "step 40/40: loss" in out.stderr and "tokens/s" in out.stderr
  assert "\r" not in out.stderr
  assert "Involuntary full rematerialization" not in out.stderr  # the embeddings' sharding
  assert "loss floor" in out.stdout and "non_embedding" in out.stdout
  record = json.loads((workdir / "config.json").read_text())
  assert record["config"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2, "expert": 1,
                                      "rules": "fsdp_tensor"}
  assert record["devices"]["mesh"] == {"data": 2, "fsdp": 2, "expert": 1, "tensor": 2}
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["step"] == 40 and np.isfinite(rows[-1]["loss"])


def test_config_path_resolves_from_another_directory(tmp_path):
  out = _isoflop("train", "--config=experiments/configs/tiny.py", f"--workdir={tmp_path}/r",
                 "--config.steps=2", "--config.log_every=1", "--config.optimizer.warmup_steps=0",
                 cwd=tmp_path)
  assert out.returncode == 0, out.stderr


BAD_INPUTS = {
    "heads_not_dividing_width": (["--config.model.n_heads=7"], "n_heads=7 does not divide"),
    "kv_heads_not_dividing_heads": (["--config.model.n_kv_heads=3"], "n_kv_heads=3"),
    "unknown_key": (["--config.model.n_headz=4"], "unknown config key config.model.n_headz"),
    "mesh_product": (["--config.mesh.data=3"], "8 are available"),
    "batch_not_divisible": (["--config.batch_size=12"], "not divisible by the data-parallel"),
    "unknown_optimizer": (["--config.optimizer.name=adamx"], "unknown optimizer 'adamx'"),
    "unknown_schedule": (["--config.optimizer.schedule=step"], "unknown schedule 'step'"),
    "zero_lr": (["--config.optimizer.lr=0"], "lr=0"),
    "negative_lr": (["--config.optimizer.lr=-0.1"], "lr=-0.1 must be positive"),
    "zero_steps": (["--config.steps=0"], "steps=0 must be a positive"),
    "negative_steps": (["--config.steps=-5"], "steps=-5 must be a positive"),
    "sequence_beyond_positions": (["--config.model.max_len=32"], "longer than model.max_len"),
    "cudnn_without_gpu": (["--config.model.attention=cudnn"], "needs an NVIDIA GPU"),
    "unknown_family": (["--config.model.family=rnn"], "unknown model.family 'rnn'"),
    "unknown_task": (["--config.task=next_sentence"], "unknown task 'next_sentence'"),
    "task_the_family_cannot_serve": (["--config.task=masked_lm"],
                                     "model.family='decoder' cannot serve task='masked_lm'"),
    "mask_rate_outside_0_1": (["--config=experiments/configs/bert_tiny.py",
                               "--config.masked_lm.mask_rate=1.5"], "mask_rate=1.5 must be in"),
    "no_room_for_special_tokens": (["--config=experiments/configs/bert_tiny.py",
                                    "--config.model.vocab_size=4"], "leaves no room for the 3"),
    "span_targets_do_not_fit": (["--config=experiments/configs/t5_tiny.py",
                                 "--config.span_corruption.target_len=5"],
                                "target_len=5 is shorter than the 14 target tokens"),
    "image_not_divisible_by_patch": (["--config=experiments/configs/vit_tiny.py",
                                      "--config.model.patch_size=3"],
                                     "image_size=8 is not divisible by model.patch_size=3"),
    "channels_not_the_datas": (["--config=experiments/configs/vit_tiny.py",
                                "--config.model.channels=3"],
                               "the images have 1 channel(s) but model.channels=3"),
    "labels_beyond_the_classes": (["--config=experiments/configs/resnet_tiny.py",
                                   "--config.model.num_classes=5"],
                                  "outside the model's classes 0..4"),
    "task_a_vision_family_cannot_serve": (["--config=experiments/configs/resnet_tiny.py",
                                           "--config.task=causal_lm"],
                                          "cannot serve task='causal_lm'"),
    "batchnorm_of_one_example_per_device": (["--config=experiments/configs/resnet_tiny.py",
                                             "--config.batch_size=8"],
                                            "BatchNorm needs at least 2 examples per"),
    "noise_density_outside_0_1": (["--config=experiments/configs/t5_tiny.py",
                                   "--config.span_corruption.noise_density=0"],
                                  "noise_density=0.0 must be in (0, 1)"),
    "keys_of_another_family": (["--config.model.family=lstm"],
                               "for model.family='lstm'; its keys are"),
    "experts_beyond_experts": (["--config.model.num_experts=4",
                                "--config.model.experts_per_token=5"],
                               "experts_per_token=5 must be between 1 and model.num_experts=4"),
    "unknown_mesh_axis": (["--config.mesh.pipeline=2"], "unknown config key config.mesh.pipeline"),
    "init_from_missing_run": (["--config.init_from=/nonexistent/run"], "holds no checkpoint"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS) + ["missing_config_file"])
def test_bad_input_is_one_line_and_writes_nothing(name, tmp_path):
  workdir = tmp_path / "run"
  if name == "missing_config_file":
    args, expected = ["--config=experiments/configs/nope.py"], "config file"
  else:
    args, expected = BAD_INPUTS[name]
    if not args[0].startswith("--config="):
      args = ["--config=experiments/configs/tiny.py", *args]
  out = _isoflop("train", f"--workdir={workdir}", *args)
  assert out.returncode == 2, (out.stdout, out.stderr)
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], out.stderr
  assert "Traceback" not in out.stderr
  assert not workdir.exists()
