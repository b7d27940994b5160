"""SIGTERM (a scheduler's preemption notice) and SIGINT (Ctrl-C).

Two phases. During start-up (imports, data preparation, compilation: nothing worth saving yet)
a signal ends the process at once with status 75 and one line, after undoing what start-up
created (``on_startup_exit``). Once training starts (``StopRequests``), a signal becomes a
request to stop at the next step boundary after a complete checkpoint.

The start-up exit runs on a watcher thread woken through ``signal.set_wakeup_fd``, so it is
prompt even while the main thread is inside a long C++ call (an XLA compilation), where a
Python-level handler would wait; ``os._exit`` then ends the process without unwinding threads
that XLA still runs (unwinding them is what crashed with a segmentation fault).
"""

import os
import signal
import sys
import threading
from typing import Callable

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a temporary failure; rerunning the command resumes
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
  """Raised after the checkpoint at ``step`` is complete (or before training started, when
  ``step`` is None); the run can be resumed."""

  def __init__(self, step: int | None, signal_name: str):
    if step is None:
      message = (f"stopped by {signal_name} before training started; nothing was trained or "
                 "saved; rerun the same command to start")
    else:
      message = (f"stopped by {signal_name} after saving a checkpoint at step {step}; rerun "
                 "the same command to resume")
    super().__init__(message)
    self.step = step


def _name(signum: int | None) -> str:
  return signal.Signals(signum).name if signum else ""


class _StartupGuard:
  """The process-wide handler: exits at once in start-up, records once training runs."""

  def __init__(self, prog: str):
    self.prog = prog
    self.received: int | None = None
    self.exit_at_once = True
    self.cleanups: list[Callable[[], None]] = []
    self._lock = threading.Lock()
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    for sig in SIGNALS:
      signal.signal(sig, self._record)
    signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                     name="isoflop-signal-watcher").start()

  def _record(self, signum, frame) -> None:
    self.received = signum

  def _watch(self, read_fd: int) -> None:
    while True:
      data = os.read(read_fd, 64)
      if not data:
        return
      for signum in data:
        if signum not in SIGNALS:
          continue
        with self._lock:
          self.received = signum
          if self.exit_at_once:
            self._exit(signum)

  def _exit(self, signum: int) -> None:
    for cleanup in reversed(self.cleanups):
      try:
        cleanup()
      except Exception:  # best effort: never let cleanup turn into a traceback
        pass
    sys.stderr.write(f"{self.prog}: stopped by {_name(signum)} during start-up, before "
                     "training; nothing was written; rerun the same command to start\n")
    sys.stderr.flush()
    os._exit(EXIT_PREEMPTED)

  def start_recording(self) -> None:
    """From now on a signal is only recorded (the caller stops at a safe point)."""
    with self._lock:
      self.exit_at_once = False


_guard: _StartupGuard | None = None


def install_startup_guard(prog: str) -> None:
  """Called first thing by the command line (main thread only): signals end start-up at once."""
  global _guard
  if _guard is None and threading.current_thread() is threading.main_thread():
    _guard = _StartupGuard(prog)


def start_up_again() -> None:
  """A long-lived worker's next run is in start-up again: signals exit at once."""
  if _guard is not None:
    with _guard._lock:
      _guard.received, _guard.exit_at_once, _guard.cleanups = None, True, []


def on_startup_exit(cleanup: Callable[[], None]) -> None:
  """Runs ``cleanup`` if a signal ends start-up (e.g. remove a directory start-up created)."""
  if _guard is not None:
    _guard.cleanups.append(cleanup)


class StopRequests:
  """Records SIGTERM/SIGINT while installed: the caller checks ``received`` at safe points.

  Under the command line's start-up guard it switches the guard to recording (for good: a
  signal after training began must never cut a checkpoint short). Without the guard (library
  use) it installs its own handlers in the main thread; elsewhere it stays inert."""

  SIGNALS = SIGNALS

  def __init__(self):
    self._own_received: int | None = None
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "StopRequests":
    if _guard is not None:
      _guard.start_recording()
    elif threading.current_thread() is threading.main_thread():
      for sig in SIGNALS:
        self._previous[sig] = signal.signal(sig, self._record)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _record(self, signum, frame) -> None:
    self._own_received = signum

  @property
  def received(self) -> int | None:
    return _guard.received if _guard is not None else self._own_received

  @property
  def signal_name(self) -> str:
    return _name(self.received)
