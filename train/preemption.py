"""SIGTERM (a scheduler's preemption notice) and SIGINT (Ctrl-C) become a request to stop at
the next step boundary after a complete checkpoint, instead of dying mid-step."""

import signal
import threading

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: a temporary failure; rerunning the command resumes


class Preempted(Exception):
  """Raised after the checkpoint at ``step`` is complete; the run can be resumed."""

  def __init__(self, step: int, signal_name: str):
    super().__init__(f"stopped by {signal_name} after saving a checkpoint at step {step}; "
                     "rerun the same command to resume")
    self.step = step


class StopRequests:
  """Records SIGTERM/SIGINT while installed (main thread only; elsewhere it stays inert)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: int | None = None
    self._previous: dict[int, object] = {}

  def __enter__(self) -> "StopRequests":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._record)
    return self

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)

  def _record(self, signum, frame) -> None:
    self.received = signum

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.received).name if self.received else ""
