"""JAX's persistent compilation cache, on by default for runs, sweeps and benchmarks.

A rerun, a resumed or preempted run, a sweep's dry-run timing and the members that share a
shape then load their compiled programs from disk instead of compiling them again. The cache
lives in ``$XDG_CACHE_HOME/isoflop/jax`` (``~/.cache/isoflop/jax``); ``JAX_COMPILATION_CACHE_DIR``
chooses another directory and ``ISOFLOP_COMPILE_CACHE=off`` turns it off. JAX keys entries by
the program, the compiler flags and the devices, so a stale entry is never used.
"""

import os

DISABLE_ENV = "ISOFLOP_COMPILE_CACHE"
MIN_COMPILE_SECONDS = 0.2  # cheaper programs are not worth a file


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "isoflop", "jax")


def enable() -> str | None:
  """Turns the cache on (before the first compilation); returns its directory, or None."""
  if os.environ.get(DISABLE_ENV, "").lower() in ("0", "off", "false", "no"):
    return None
  import jax
  directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError:  # an unwritable home: run without the cache rather than fail
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return directory
