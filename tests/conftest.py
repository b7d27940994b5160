"""Every test runs on 8 fake CPU devices, set before JAX starts, with a persistent compile
cache so reruns skip XLA compilation."""

import os
import pathlib

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
CACHE_DIR = pathlib.Path(__file__).resolve().parent.parent / ".jax_cache"
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE_DIR))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
# Tokenized corpora and tokenizers, shared by test workers (entries are written atomically).
os.environ.setdefault("ISOFLOP_CACHE_DIR", str(CACHE_DIR.parent / ".test_data_cache"))

import jax  # noqa: E402
import pytest  # noqa: E402

assert jax.device_count() == 8, "tests expect 8 fake CPU devices"

REPO = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny_config():
  """The tiny config shrunk further, for runs of a few steps."""
  from isoflop.experiments.configs import tiny
  c = tiny.get_config()
  c.steps = 8
  c.batch_size = 8
  c.seq_len = 16
  c.log_every = 2
  c.model.d_model = 32
  c.model.vocab_size = 64
  c.optimizer.warmup_steps = 2
  return c


@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory):
  """(workdir, config) of the tiny decoder trained 8 steps, shared by the tests that read a
  trained run (compress, low-rank)."""
  from isoflop.experiments.configs import tiny
  from isoflop.train import build, loop
  c = tiny.get_config()
  c.steps, c.batch_size, c.seq_len, c.log_every, c.optimizer.warmup_steps = 8, 8, 16, 4, 2
  c.model.d_model = 32
  workdir = tmp_path_factory.mktemp("trained")
  loop.run(build.prepare(c), str(workdir), progress=False)
  return workdir, c


# The slowest modules first: the two workers then finish on short tests together, instead of
# one idling while the other runs a slow test collected last.
SLOW_FIRST = ("test_coordcheck.py", "test_launchers.py", "test_resume.py", "test_sweep.py",
              "test_tpu_plan.py", "test_finetune.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(SLOW_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
