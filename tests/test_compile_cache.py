"""JAX's persistent compilation cache is on by default for runs, in the user's cache."""

import os
import subprocess
import sys

import pytest

from conftest import REPO

PROBE = ("import jax; from isoflop.train import compile_cache; d = compile_cache.enable(); "
         "print(d, jax.config.jax_compilation_cache_dir)")


@pytest.mark.parametrize("setting", ["default", "env_dir", "off"])
def test_compile_cache_location_and_switch(setting, tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
  if setting == "env_dir":
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "mine")
  if setting == "off":
    env["ISOFLOP_COMPILE_CACHE"] = "off"
  out = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  returned, configured = out.stdout.split()
  expected = {"default": str(tmp_path / "xdg" / "isoflop" / "jax"),
              "env_dir": str(tmp_path / "mine"), "off": "None"}[setting]
  assert returned == expected
  if setting != "off":
    assert configured == expected and os.path.isdir(expected)
