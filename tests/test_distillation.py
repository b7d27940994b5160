"""Distillation: a decoder teaches a decoder and an LSTM inside the sharded step; the teacher
is really the saved teacher, stays out of the student's checkpoints, and resumes bitwise."""

import json
import shutil

import jax
import numpy as np
import pytest

from isoflop.experiments.configs import lstm_tiny
from isoflop.train import build, checkpointing, loop


def _shrink(c):
  c.steps, c.batch_size, c.seq_len, c.log_every = 8, 8, 16, 2
  c.checkpoint_every = 4
  c.optimizer.warmup_steps = 2
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 2, 2, 2
  return c


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  from isoflop.experiments.configs import tiny
  c = _shrink(tiny.get_config())
  c.model.d_model = 32
  workdir = tmp_path_factory.mktemp("teacher")
  loop.run(build.prepare(c), str(workdir), progress=False)
  return workdir, c


def _saved_params(workdir, step):
  return {jax.tree_util.keystr(p): leaf for p, leaf in
          jax.tree_util.tree_leaves_with_path(checkpointing.saved_tree(workdir, step)["params"])}


def test_a_copy_of_the_teacher_has_zero_kl_and_no_teacher_in_its_checkpoints(teacher, tmp_path):
  """Initialized from the teacher, the student's softened distribution is the teacher's: KL
  zero (so the teacher's forward pass really runs the saved weights), and alpha = 0 leaves
  only that term. The student's checkpoint holds its own parameters alone."""
  workdir, c = teacher
  c = c.copy_and_resolve_references()
  c.init_from = str(workdir)
  c.distill.teacher, c.distill.alpha = f"{workdir}:8", 0.0
  c.steps = 2
  result = loop.run(build.prepare(c), str(tmp_path / "copy"), progress=False)
  first = result.rows[0]
  assert first["distill_kl"] == pytest.approx(0.0, abs=1e-6)
  assert _saved_params(tmp_path / "copy", 2).keys() == _saved_params(workdir, 8).keys()
  record = json.loads((tmp_path / "copy" / "config.json").read_text())
  assert record["distill"]["teacher"] == str(workdir) and record["distill"]["step"] == 8


def test_alpha_one_is_plain_training(teacher, tmp_path):
  """With alpha = 1 the soft term has no weight: the same losses as without a teacher."""
  workdir, c = teacher
  plain = loop.run(build.prepare(c), str(tmp_path / "plain"), progress=False)
  c = c.copy_and_resolve_references()
  c.distill.teacher, c.distill.alpha = str(workdir), 1.0
  taught = loop.run(build.prepare(c), str(tmp_path / "alpha1"), progress=False)
  assert [r["loss"] for r in taught.rows] == [r["loss"] for r in plain.rows]
  assert all(r["distill_kl"] > 0 for r in taught.rows)


def test_lstm_student_of_a_decoder_resumes_bitwise(teacher, tmp_path):
  workdir, _ = teacher
  c = _shrink(lstm_tiny.get_config())
  c.distill.teacher, c.distill.alpha, c.distill.temperature = str(workdir), 0.3, 2.0
  straight = tmp_path / "straight"
  result = loop.run(build.prepare(c), str(straight), progress=False)
  assert np.isfinite([r["distill_kl"] for r in result.rows]).all()
  resumed = tmp_path / "resumed"  # as if killed after the step-4 checkpoint
  shutil.copytree(straight, resumed)
  shutil.rmtree(resumed / "checkpoints" / "8")
  again = loop.run(build.prepare(c), str(resumed), progress=False)
  assert again.resumed_from == 4
  for a, b in zip(jax.tree.leaves(again.state.params), jax.tree.leaves(result.state.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("values, expected", [
    ({"alpha": 1.5}, "distill.alpha=1.5 must be in [0, 1]"),
    ({"temperature": 0.0}, "distill.temperature=0.0 must be positive"),
    ({"teacher": "/nonexistent/run"}, "does not exist"),
])
def test_bad_distillation_settings_are_one_line(teacher, values, expected):
  workdir, c = teacher
  c = c.copy_and_resolve_references()
  c.distill.teacher = str(workdir)
  c.distill.update(values)
  with pytest.raises(ValueError) as error:
    build.prepare(c)
  assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_teacher_with_another_vocabulary_is_refused(teacher):
  workdir, c = teacher
  c = c.copy_and_resolve_references()
  c.distill.teacher = str(workdir)
  c.data.source, c.model.vocab_size = "synthetic:uniform", 100
  with pytest.raises(ValueError, match="its output space \\(256\\) differs from this run's"):
    build.prepare(c)
