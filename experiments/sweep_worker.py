"""A long-lived sweep worker: runs sweep members one after another in one process, so that
Python, JAX and the data libraries start once per worker instead of once per member (most of
a small member's wall time), and compiled programs are reused through JAX's compilation cache.

Each member is still exactly ``isoflop train`` (the same function, with the same arguments and
the same exit statuses), its output in ``<member>/train.log``. The sweep driver talks to a
worker over pipes, one JSON object per line:

  request  {"argv": ["--config=...", "--workdir=...", ...], "workdir": ..., "log": ...,
            "process_id": i}  (process_id: only for processes > 0 of a multi-host member)
  reply    {"returncode": int}  or  {"busy": "<who holds the member's lock>"}

A member that kills its process (a crash, or a signal during its start-up, which exits at once
with status 75) ends the worker: the driver reads the exit status instead of a reply and starts
a fresh worker for the next member.
"""

import contextlib
import gc
import json
import os
import subprocess
import sys
import time
import traceback


@contextlib.contextmanager
def _output_to(path: str):
  """Points this process's stdout and stderr (file descriptors 1 and 2, so that messages from
  C++ land there too) at ``path``, appending."""
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
  try:
    os.dup2(log, 1)
    os.dup2(log, 2)
    yield
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in (log, *saved):
      os.close(fd)


def run_member(request: dict) -> dict:
  """Runs one member as ``isoflop train`` in this process, holding the member's lock (process
  0 of a multi-host member holds it; the others write nothing but their logs)."""
  from isoflop.experiments import cli
  from isoflop.train import preemption
  from isoflop.train import workdir as workdir_lib

  lock = None
  if not request.get("process_id"):
    lock = workdir_lib.try_lock(request["workdir"])
    if lock is None:
      return {"busy": workdir_lib.holder(request["workdir"]) or "holder gone"}
    os.environ[workdir_lib.INHERITED_LOCK_ENV] = str(lock.fd)  # the run takes this lock over
  preemption.start_up_again()
  cli.command_started = time.perf_counter()  # this member's start-up begins now
  with _output_to(request["log"]):
    try:
      code = cli.main(["isoflop", "train", *request["argv"]])
    except BaseException:  # a bug in a member must not end the other members' worker
      traceback.print_exc()
      code = 1
  if lock is None:
    pass
  elif os.environ.pop(workdir_lib.INHERITED_LOCK_ENV, None) is not None:
    lock.release()  # the run stopped before taking the lock over
  else:
    lock.fd = None  # the run closed it
  _forget_compiled_programs()
  return {"returncode": code}


class WorkerProcess:
  """The driver's handle on one worker: started on first use, restarted after it ends."""

  def __init__(self, env: dict[str, str]):
    self.env = env
    self.process: subprocess.Popen | None = None

  def _start(self) -> None:
    self.process = subprocess.Popen(
        [sys.executable, "-m", "isoflop.experiments.sweep_worker"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=self.env, text=True, bufsize=1)

  def run(self, request: dict) -> dict:
    """Runs one member; a worker that ended mid-member answers with its exit status."""
    if self.process is None or self.process.poll() is not None:
      self._start()
    try:
      self.process.stdin.write(json.dumps(request) + "\n")
      self.process.stdin.flush()
      line = self.process.stdout.readline()
    except BrokenPipeError:
      line = ""
    if line:
      return json.loads(line)
    code = self.process.wait()
    self.process = None
    return {"returncode": code}

  def send_signal(self, signum: int) -> None:
    if self.process is not None and self.process.poll() is None:
      self.process.send_signal(signum)

  def close(self) -> None:
    if self.process is not None:
      with contextlib.suppress(OSError):
        self.process.stdin.close()
      try:
        self.process.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
      self.process = None


def _forget_compiled_programs() -> None:
  """Frees the finished member's executables and traces before the next member."""
  import jax
  jax.clear_caches()
  gc.collect()


def main() -> int:
  from isoflop.train import compile_cache, preemption
  preemption.install_startup_guard("isoflop train")
  compile_cache.enable()
  replies = os.fdopen(os.dup(1), "w", buffering=1)  # fd 1 itself goes to each member's log
  for line in sys.stdin:
    if not line.strip():
      continue
    reply = run_member(json.loads(line))
    replies.write(json.dumps(reply) + "\n")
  return 0


if __name__ == "__main__":
  # Run the imported module's main (not this __main__ copy), as experiments/cli.py does.
  from isoflop.experiments import sweep_worker as _worker
  sys.exit(_worker.main())
