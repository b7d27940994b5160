"""Sweep members as Slurm jobs through submitit (``isoflop sweep --launcher=slurm``): the
members of each phase go out as one job array; a member of ``slurm.nodes > 1`` runs one task
per node (srun), its processes joined by jax.distributed from Slurm's environment.

``--slurm.cluster=local`` uses submitit's local executor instead (same code path, jobs are
processes on this machine, ``slurm.nodes`` become tasks on it): how the tests and a single
workstation use it. Job files (pickles, stdout/stderr) go to ``<sweep workdir>/submitit``.
"""

import os
import shutil
import subprocess
import threading
import zlib

from isoflop.experiments import launchers


def run_member_in_job(request: dict, env: dict[str, str]) -> dict:
  """The job's entry point: this task's share of the member (task 0 coordinates)."""
  import submitit
  job = submitit.JobEnvironment()
  process = None
  if job.num_tasks > 1:  # one port per job, the same in all its tasks
    port = 20000 + zlib.crc32(str(job.job_id).encode()) % 20000
    process = (job.global_rank, job.num_tasks, f"{job.hostnames[0]}:{port}")
  return launchers.run_member_here(request, env, process)


def _visible_gpus() -> int:
  if shutil.which("nvidia-smi") is None:
    return 0
  out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
  return sum(line.startswith("GPU") for line in out.stdout.splitlines())


def _check_partition(partition: str) -> None:
  if shutil.which("sinfo") is None:
    return
  out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True)
  known = [p.rstrip("*") for p in out.stdout.split()]
  if out.returncode == 0 and known and partition not in known:
    raise ValueError(f"Slurm has no partition {partition!r}; known partitions: "
                     f"{', '.join(known)}")


class SlurmLauncher:

  def __init__(self, spec: launchers.LauncherSpec, sweep_dir: str, env: dict[str, str]):
    try:
      import submitit  # noqa: F401
    except ImportError:
      raise ValueError("--launcher=slurm needs submitit: pip install 'isoflop[cluster]'") from None
    slurm = spec.slurm
    if slurm.cluster == "slurm":
      if shutil.which("sbatch") is None:
        raise ValueError("--launcher=slurm needs Slurm (sbatch is not on the PATH); on a "
                         "machine without Slurm pass --slurm.cluster=local")
      if slurm.partition:
        _check_partition(slurm.partition)
    elif slurm.gpus_per_node > _visible_gpus():
      raise ValueError(f"slurm.gpus_per_node={slurm.gpus_per_node} but this machine has "
                       f"{_visible_gpus()} GPU(s) for --slurm.cluster=local")
    self.spec, self.env = spec, env
    self.folder = os.path.abspath(slurm.folder or os.path.join(sweep_dir, "submitit"))
    self._executor = None
    self._pending: dict[str, object] = {}  # member workdir -> its job in the phase's array
    self._lock = threading.Lock()

  def _make_executor(self):
    import submitit
    slurm, local = self.spec.slurm, self.spec.slurm.cluster == "local"
    executor = submitit.AutoExecutor(folder=self.folder, cluster=slurm.cluster)
    params = {"timeout_min": slurm.time_min, "gpus_per_node": slurm.gpus_per_node,
              "nodes": 1 if local else slurm.nodes,
              "tasks_per_node": slurm.nodes if local else 1, "name": "isoflop-member"}
    if slurm.cpus_per_task:
      params["cpus_per_task"] = slurm.cpus_per_task
    if slurm.mem_gb:
      params["mem_gb"] = slurm.mem_gb
    if not local:
      params.update(slurm_partition=slurm.partition, slurm_account=slurm.account,
                    slurm_array_parallelism=self.spec.max_parallel or 256)
      params = {k: v for k, v in params.items() if v is not None}
    executor.update_parameters(**params)
    return executor

  def _executor_now(self):
    if self._executor is None:
      self._executor = self._make_executor()
    return self._executor

  def submit_phase(self, requests: list[dict]) -> None:
    """The phase's members as one job array (Slurm starts them as the partition allows)."""
    if not requests:
      return
    executor = self._executor_now()
    with self._lock:
      jobs = executor.map_array(run_member_in_job, requests, [self.env] * len(requests))
      for request, job in zip(requests, jobs):
        self._pending[request["workdir"]] = job

  def take_job(self, request: dict):
    with self._lock:
      job = self._pending.pop(request["workdir"], None)
      if job is None:  # a requeued member: a job of its own
        job = self._executor_now().submit(run_member_in_job, request, self.env)
      return job

  def slots(self, count: int) -> list:
    return [_SlurmSlot(self) for _ in range(count)]  # Slurm limits the array itself

  def close(self) -> None:
    with self._lock:
      for job in self._pending.values():  # submitted but never waited for (a stopped sweep)
        job.cancel(check=False)
      self._pending.clear()


class _SlurmSlot:

  def __init__(self, launcher: SlurmLauncher):
    self.launcher = launcher
    self._job = None

  def run(self, request: dict) -> dict:
    import submitit
    self._job = job = self.launcher.take_job(request)
    try:
      replies = job.results()  # one per task
    except submitit.core.utils.UncompletedJobError:  # killed, preempted, timed out
      return {"returncode": launchers.EXIT_LOST}
    except submitit.core.utils.FailedJobError:
      return {"returncode": 1, "engine_log": str(job.paths.stderr)}
    finally:
      self._job = None
    return launchers.combine(replies)

  def send_signal(self, signum: int) -> None:
    job = self._job
    if job is not None:
      job.cancel(check=False)  # SIGTERM (Slurm) / SIGINT (local): the member saves and stops

  def close(self) -> None:
    pass
