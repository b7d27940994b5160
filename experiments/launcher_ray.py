"""Sweep members as Ray tasks (``isoflop sweep --launcher=ray``): each member is one task (or,
with ``hosts_per_member > 1``, one task per host in a placement group, joined by
jax.distributed) that runs ``isoflop train`` in a fresh process on the node Ray picked.

``--ray_address`` names a running cluster (``ray start --head`` prints it); without one the
driver starts a local Ray cluster on this machine. Every node needs isoflop installed and the
sweep workdir mounted at the same path.
"""

import socket
import threading

from isoflop.experiments import launchers


def _check_reachable(address: str) -> None:
  """One line instead of Ray's long wait when nothing listens at ``address``."""
  if address == "auto":
    return
  host_port = address.split("://", 1)[-1]
  host, _, port = host_port.rpartition(":")
  if not host or not port.isdigit():
    raise ValueError(f"--ray_address={address!r} must be host:port (e.g. 10.0.0.1:6379, as "
                     "`ray start --head` prints) or ray://host:10001")
  try:
    socket.create_connection((host, int(port)), timeout=5).close()
  except OSError as e:
    raise ValueError(f"no Ray cluster answers at {address} ({e.strerror or e}); start one with "
                     "`ray start --head` or leave --ray_address out for a local cluster") from None


def _free_address() -> str:
  """host:port where this node's process 0 of a multi-host member will listen."""
  with socket.socket() as s:
    s.bind(("", 0))
    port = s.getsockname()[1]
  import ray
  return f"{ray.util.get_node_ip_address()}:{port}"


class RayLauncher:

  def __init__(self, spec: launchers.LauncherSpec, env: dict[str, str]):
    try:
      import ray
    except ImportError:
      raise ValueError("--launcher=ray needs Ray: pip install 'isoflop[cluster]'") from None
    self.spec, self.env, self._ray = spec, env, ray
    if spec.ray.address:
      _check_reachable(spec.ray.address)
    self._started_here = not ray.is_initialized()
    if self._started_here:
      ray.init(address=spec.ray.address, include_dashboard=False, log_to_driver=False,
               logging_level="ERROR", configure_logging=True)
    try:
      self._check_resources()
    except ValueError:
      self.close()
      raise
    self._options = {"num_cpus": spec.ray.num_cpus, "num_gpus": spec.ray.num_gpus,
                     "max_retries": 0}  # a lost member is requeued by the sweep, resuming
    if spec.ray.tpu_resource:
      self._options["resources"] = {spec.ray.tpu_resource: spec.devices_per_member or 1}
    self._run = ray.remote(launchers.run_member_here)
    self._address = ray.remote(_free_address)

  def _per_process(self) -> dict[str, float]:
    need = {"CPU": self.spec.ray.num_cpus, "GPU": self.spec.ray.num_gpus}
    if self.spec.ray.tpu_resource:
      need[self.spec.ray.tpu_resource] = self.spec.devices_per_member or 1
    return {k: v for k, v in need.items() if v}

  def _check_resources(self) -> None:
    need = self._per_process()
    nodes = [n["Resources"] for n in self._ray.nodes() if n.get("Alive")]
    able = [n for n in nodes if all(n.get(k, 0) >= v for k, v in need.items())]
    hosts = self.spec.hosts_per_member
    enough = len(able) >= hosts if self.spec.ray.placement == "STRICT_SPREAD" else able
    if not enough:
      have = "; ".join(", ".join(f"{k}={v:g}" for k, v in sorted(n.items())
                                 if not k.startswith(("node:", "memory", "object_store")))
                       for n in nodes) or "no nodes"
      wanted = ", ".join(f"{k}={v:g}" for k, v in need.items())
      raise ValueError(f"the Ray cluster cannot run a member: each of its {hosts} process(es) "
                       f"needs {wanted} on a node of its own, and the nodes have: {have}")

  def slots(self, count: int) -> list:
    return [_RaySlot(self) for _ in range(min(count, self.spec.max_parallel or count))]

  def submit_phase(self, requests: list[dict]) -> None:
    pass  # Ray queues each task as its slot submits it

  def close(self) -> None:
    if self._started_here and self._ray.is_initialized():
      self._ray.shutdown()


class _RaySlot:

  def __init__(self, launcher: RayLauncher):
    self.launcher = launcher
    self._refs: list = []
    self._lock = threading.Lock()
    self._group = None

  def run(self, request: dict) -> dict:
    launcher = self.launcher
    ray, hosts = launcher._ray, launcher.spec.hosts_per_member
    if hosts == 1:
      refs = [launcher._run.options(**launcher._options).remote(request, launcher.env)]
    else:
      from ray.util.placement_group import placement_group, remove_placement_group
      from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
      group = placement_group([launcher._per_process()] * hosts,
                              strategy=launcher.spec.ray.placement)
      ray.get(group.ready())
      self._group = group

      def on(index):
        return PlacementGroupSchedulingStrategy(placement_group=group,
                                                placement_group_bundle_index=index)

      coordinator = ray.get(launcher._address.options(
          num_cpus=0, scheduling_strategy=on(0)).remote())
      refs = [launcher._run.options(**launcher._options, scheduling_strategy=on(i)).remote(
          request, launcher.env, (i, hosts, coordinator)) for i in range(hosts)]
    with self._lock:
      self._refs = refs
    try:
      replies = []
      for ref in refs:
        try:
          replies.append(ray.get(ref))
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.TaskCancelledError):
          replies.append({"returncode": launchers.EXIT_LOST})  # requeued, like a preemption
      return launchers.combine(replies)
    finally:
      with self._lock:
        self._refs = []
      if self._group is not None:
        remove_placement_group(self._group)
        self._group = None

  def send_signal(self, signum: int) -> None:
    with self._lock:
      for ref in self._refs:
        self.launcher._ray.cancel(ref)  # the task forwards it to the member as SIGTERM

  def close(self) -> None:
    pass
