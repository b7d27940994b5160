"""Multi-process runs through JAX's own runtime (``jax.distributed``); nothing of our own."""

import os

import jax


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None) -> None:
  """Joins a multi-process run when one is described by the arguments or by the environment
  variables ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``. Must run
  before anything touches a JAX backend. CPU devices talk through gloo."""
  env = os.environ
  coordinator_address = coordinator_address or env.get("JAX_COORDINATOR_ADDRESS")
  if num_processes is None and "JAX_NUM_PROCESSES" in env:
    num_processes = int(env["JAX_NUM_PROCESSES"])
  if process_id is None and "JAX_PROCESS_ID" in env:
    process_id = int(env["JAX_PROCESS_ID"])
  if not coordinator_address or not num_processes or num_processes == 1:
    return
  if process_id is None or not 0 <= process_id < num_processes:
    raise ValueError(f"process_id={process_id} must be in [0, {num_processes}) for a "
                     f"{num_processes}-process run; pass --process_id or set JAX_PROCESS_ID")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU backend only
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id)
