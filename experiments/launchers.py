"""Where a sweep's members run: this machine's processes (``local``), a Ray cluster (``ray``)
or Slurm through submitit (``slurm``). The sweep driver (experiments/sweep.py) is the same for
all three; a launcher only gives it *slots*, each of which runs one member at a time:

  slot.run(request) -> {"returncode": int} or {"busy": who}   (blocks until the member ends)
  slot.send_signal(signum)                                     (asks the member to stop)
  slot.close()

A request is what experiments/sweep_worker.py reads: the member's ``isoflop train`` arguments,
its workdir and its log. On a cluster, ``run_member_here`` executes it on the node the engine
chose, in a fresh worker process, so each member is exactly ``isoflop train`` there too.

What a member needs (devices, hosts, GPUs, a TPU resource, a partition...) comes from the
sweep file's ``launcher`` block, overridden by ``--ray.*`` / ``--slurm.*`` flags.
"""

import dataclasses
import os
import re
import signal
import time
from typing import Any

from isoflop.experiments import sweep_worker
from isoflop.train import preemption, wandb_log

# A member whose host or engine worker was lost is requeued like a preempted one (it resumes
# from its last checkpoint).
EXIT_LOST = preemption.EXIT_PREEMPTED
LAUNCHERS = ("local", "ray", "slurm")
SLURM_CLUSTERS = ("slurm", "local")  # submitit's Slurm executor, or its local one


@dataclasses.dataclass
class RaySpec:
  address: str | None = None  # None: start a local Ray cluster
  num_cpus: float = 1.0  # per process of a member
  num_gpus: float = 0.0  # per process (Ray sets CUDA_VISIBLE_DEVICES)
  tpu_resource: str | None = None  # e.g. "TPU": devices_per_member of it per process
  placement: str = "STRICT_SPREAD"  # multi-host members: one process per Ray node


@dataclasses.dataclass
class SlurmSpec:
  cluster: str = "slurm"  # "local": submitit's local executor, no Slurm needed
  partition: str | None = None
  account: str | None = None
  gpus_per_node: int = 0
  nodes: int = 1  # >1: one process per node, joined by jax.distributed
  cpus_per_task: int | None = None
  mem_gb: float | None = None
  time_min: int = 60
  folder: str | None = None  # submitit's job files; default <sweep workdir>/submitit


@dataclasses.dataclass
class LauncherSpec:
  name: str = "local"
  devices_per_member: int | None = None  # CPU: fake devices per member; GPU/TPU: per host
  hosts_per_member: int = 1  # Ray: processes (hosts) per member; Slurm: slurm.nodes
  max_parallel: int | None = None  # members submitted at once (default: all)
  max_retries: int = 3  # requeues of a member that exits with the preemption status
  ray: RaySpec = dataclasses.field(default_factory=RaySpec)
  slurm: SlurmSpec = dataclasses.field(default_factory=SlurmSpec)

  @property
  def processes_per_member(self) -> int:
    return self.slurm.nodes if self.name == "slurm" else self.hosts_per_member


def _set_fields(target, values: dict[str, Any], where: str) -> None:
  fields = {f.name: f for f in dataclasses.fields(target)}
  for key, value in values.items():
    if key not in fields:
      raise ValueError(f"unknown launcher key {where}{key}; known: {', '.join(sorted(fields))}")
    if dataclasses.is_dataclass(getattr(target, key)):
      if not isinstance(value, dict):
        raise ValueError(f"launcher key {where}{key} must be a block of keys, not {value!r}")
      _set_fields(getattr(target, key), value, f"{where}{key}.")
    else:
      setattr(target, key, value)


def spec_from(name: str, sweep_block: dict[str, Any] | None,
              flag_overrides: dict[str, Any]) -> LauncherSpec:
  """The launcher spec: defaults, then the sweep file's ``launcher`` block, then flags (dotted
  keys such as ``slurm.partition``). Raises ValueError naming a bad key or value."""
  if name not in LAUNCHERS:
    raise ValueError(f"unknown launcher {name!r}; known launchers: {', '.join(LAUNCHERS)}")
  spec = LauncherSpec(name=name)
  _set_fields(spec, {k: v for k, v in (sweep_block or {}).items() if k != "name"}, "")
  for dotted, value in flag_overrides.items():
    *parents, leaf = dotted.split(".")
    block = {leaf: value}
    for part in reversed(parents):
      block = {part: block}
    _set_fields(spec, block, "")
  _check(spec)
  return spec


def _check(spec: LauncherSpec) -> None:
  positive = {"max_retries": (spec.max_retries, 0), "hosts_per_member": (spec.hosts_per_member, 1),
              "slurm.nodes": (spec.slurm.nodes, 1), "slurm.time_min": (spec.slurm.time_min, 1),
              "slurm.gpus_per_node": (spec.slurm.gpus_per_node, 0)}
  if spec.devices_per_member is not None:
    positive["devices_per_member"] = (spec.devices_per_member, 1)
  if spec.max_parallel is not None:
    positive["max_parallel"] = (spec.max_parallel, 1)
  for key, (value, least) in positive.items():
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
      raise ValueError(f"launcher {key}={value!r} must be an integer >= {least}")
  if spec.ray.num_cpus < 0 or spec.ray.num_gpus < 0:
    raise ValueError("launcher ray.num_cpus and ray.num_gpus must be >= 0")
  if spec.slurm.cluster not in SLURM_CLUSTERS:
    raise ValueError(f"unknown slurm.cluster {spec.slurm.cluster!r}; known: "
                     f"{', '.join(SLURM_CLUSTERS)} (local: submitit's local executor)")


def member_env(spec: LauncherSpec, sweep_dir: str) -> dict[str, str]:
  """Environment a cluster member adds to its node's: its CPU device count (on CPU hosts) and
  a token cache on the shared sweep workdir, unless the driver names one."""
  env = {}
  if spec.devices_per_member and not (spec.ray.num_gpus or spec.ray.tpu_resource
                                      or spec.slurm.gpus_per_node):
    env["ISOFLOP_CPU_DEVICES"] = str(spec.devices_per_member)
  env[wandb_log.SWEEP_ENV] = os.path.basename(os.path.abspath(sweep_dir))
  env["ISOFLOP_CACHE_DIR"] = os.environ.get("ISOFLOP_CACHE_DIR") or os.path.join(
      os.path.abspath(sweep_dir), "token_cache")
  for key in ("JAX_COMPILATION_CACHE_DIR", "JAX_PLATFORMS", "WANDB_MODE"):
    if key in os.environ:
      env[key] = os.environ[key]
  return env


def with_cpu_devices(env: dict[str, str], count: int | str) -> dict[str, str]:
  """``env`` with XLA's host platform set to ``count`` CPU devices (replacing any count)."""
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", env.get("XLA_FLAGS", ""))
  env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
  return env


def _forced_cpu_devices(env: dict[str, str]) -> dict[str, str]:
  count = env.pop("ISOFLOP_CPU_DEVICES", None)
  return env if count is None else with_cpu_devices(env, count)


def run_member_here(request: dict, env: dict[str, str],
                    process: tuple[int, int, str] | None = None) -> dict:
  """Runs one member, or process ``rank`` of ``count`` of a multi-host member whose process 0
  listens at ``coordinator``, in a fresh worker process on this host. SIGTERM, SIGINT and
  SIGUSR2 (the engines' preemption, cancel and time-limit notices) reach the member as
  SIGTERM: it saves a checkpoint and exits with the preemption status."""
  full_env = _forced_cpu_devices({**os.environ, **env})
  if process is not None and process[1] > 1:
    rank, count, coordinator = process
    full_env.update(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(count),
                    JAX_PROCESS_ID=str(rank))
    request = {**request, "process_id": rank}
    if rank:
      request["log"] = f"{request['log'][:-len('.log')]}.{rank}.log"
  worker = sweep_worker.WorkerProcess(full_env)

  def forward(signum, frame):
    worker.send_signal(signal.SIGTERM)

  previous = {}
  for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
    try:
      previous[sig] = signal.signal(sig, forward)
    except ValueError:  # not the main thread: the engine's own cancel still ends the task
      pass
  started = time.perf_counter()
  try:
    try:
      reply = worker.run(request)
    except KeyboardInterrupt:  # Ray's cancel: stop the member, then collect its status
      worker.send_signal(signal.SIGTERM)
      reply = {"returncode": worker.process.wait() if worker.process else EXIT_LOST}
    return {**reply, "run_s": time.perf_counter() - started}  # not the time queued
  finally:
    worker.close()
    for sig, handler in previous.items():
      signal.signal(sig, handler)


def combine(replies: list[dict]) -> dict:
  """One reply for a member's processes: busy if any was, else the first failure's status."""
  for reply in replies:
    if "busy" in reply:
      return reply
  codes = [r["returncode"] for r in replies]
  return {"returncode": next((c for c in codes if c), 0),
          "run_s": max((r.get("run_s", 0.0) for r in replies), default=0.0)}


class LocalLauncher:
  """Members as long-lived worker processes on this machine, one per share of its devices."""

  def __init__(self, shares: list[dict[str, str]], sweep_dir: str):
    name = os.path.basename(os.path.abspath(sweep_dir))
    self.shares = [{**env, wandb_log.SWEEP_ENV: name} for env in shares]

  def slots(self, count: int) -> list:
    return [sweep_worker.WorkerProcess(env) for env in self.shares]

  def submit_phase(self, requests: list[dict]) -> None:
    pass

  def close(self) -> None:
    pass


def make(spec: LauncherSpec, sweep_dir: str, shares_for_local):
  """The launcher for ``spec``; cluster launchers check their engine and resources first
  (raising ValueError in one line) and write nothing."""
  if spec.name == "local":
    return LocalLauncher(shares_for_local(), sweep_dir)
  if spec.name == "ray":
    from isoflop.experiments import launcher_ray
    return launcher_ray.RayLauncher(spec, member_env(spec, sweep_dir))
  from isoflop.experiments import launcher_slurm
  return launcher_slurm.SlurmLauncher(spec, sweep_dir, member_env(spec, sweep_dir))
