"""Output directories: checked before any work starts, and locked while a run writes them.

``check_writable`` refuses a path that is a file or that cannot be created or written, so a
bad ``--workdir``/``--out`` fails in one line before compiling. ``Lock`` is an exclusive OS
lock (``flock``) on ``<dir>/.lock``: the kernel drops it when the holding process ends, even by
``kill -9``, so no stale lock is ever left behind. The file records who holds it.

Shared filesystems: on NFS (v4, or v3 with a lock manager) Linux maps ``flock`` onto byte-range
locks that clients see across machines; some network and FUSE filesystems (e.g. Lustre without
``-o flock``, object-store mounts) do not support locking at all. There ``Lock`` warns once and
the run proceeds unprotected: two runs on one workdir are then not prevented.
"""

import contextlib
import errno
import fcntl
import os
import socket
import sys
import time

LOCK_NAME = ".lock"
# A launcher that already holds a member's lock passes it to the member's process (an
# inherited file descriptor) so that no other launcher can start the member in between.
INHERITED_LOCK_ENV = "ISOFLOP_WORKDIR_LOCK_FD"


class WorkdirError(ValueError):
  """A directory that cannot be used; the message is the one line the user sees."""


class Busy(WorkdirError):
  """Another process holds the directory's lock."""

  def __init__(self, path: str, holder: str):
    super().__init__(f"{path} is in use by another isoflop process ({holder}); wait for it "
                     "to finish or stop it, or use another directory")
    self.path, self.holder = path, holder


def check_writable(path: str, flag: str = "--workdir") -> None:
  """Raises ``WorkdirError`` unless ``path`` is a writable directory or can be created."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise WorkdirError(f"{flag}={path} is an existing file, not a directory; pass a directory "
                       "path")
  existing = os.path.abspath(path)
  while not os.path.exists(existing):  # the nearest ancestor that exists must be writable
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f"{flag}={path} cannot be created: {existing} is a file; pass a "
                       "directory path")
  if not os.access(existing, os.W_OK | os.X_OK):
    reason = "read-only filesystem" if _read_only_fs(existing) else "no write permission"
    raise WorkdirError(f"{flag}={path} is not writable ({reason} at {existing}); pass a "
                       "directory you can write")


def check_writable_file(path: str, flag: str = "--out") -> None:
  """Raises ``WorkdirError`` unless the file ``path`` can be written (its directory made)."""
  if os.path.isdir(path):
    raise WorkdirError(f"{flag}={path} is a directory; pass a file path, e.g. {flag}=out.json")
  try:
    check_writable(os.path.dirname(os.path.abspath(path)), flag)
  except WorkdirError as e:
    raise WorkdirError(f"{flag}={path}: {e}") from None


def _read_only_fs(path: str) -> bool:
  try:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
  except OSError:
    return False


def _describe_holder(fd: int) -> str:
  try:
    text = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
  except OSError:
    text = ""
  return text or "holder unknown"


class Lock:
  """``with Lock(dir):`` holds ``dir``'s exclusive lock, creating ``dir`` if needed.

  Raises ``Busy`` naming the holder's pid and host when another process holds it. If this
  call created ``dir`` and the block fails before anything else is written there, the
  directory is removed again, so a refused or failed start leaves nothing behind.
  """

  def __init__(self, path: str, flag: str = "--workdir"):
    self.path, self.flag = path, flag
    self.fd: int | None = None
    self.created = False

  def acquire(self) -> "Lock":
    check_writable(self.path, self.flag)
    inherited = _inherited_fd(self.path)
    if inherited is not None:
      self.fd = inherited
      self._write_holder()
      return self
    self.created = not os.path.exists(self.path)
    os.makedirs(self.path, exist_ok=True)
    lock_path = os.path.join(self.path, LOCK_NAME)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _describe_holder(fd)
      os.close(fd)
      raise Busy(self.path, holder) from None
    except OSError as e:
      if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        os.close(fd)
        raise
      print(f"warning: {self.path}'s filesystem does not support file locks; two runs on "
            "this directory are not prevented", file=sys.stderr)
    self.fd = fd
    self._write_holder()
    return self

  def _write_holder(self) -> None:
    text = (f"pid {os.getpid()} on host {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n").encode()
    os.ftruncate(self.fd, 0)
    os.pwrite(self.fd, text, 0)

  def release(self) -> None:
    if self.fd is not None:
      os.close(self.fd)  # closing the last descriptor drops the lock
      self.fd = None

  def remove_if_unused(self) -> None:
    """After a failed start: removes the directory if this lock created it and nothing else
    was written there."""
    if not self.created:
      return
    with contextlib.suppress(OSError):
      if os.listdir(self.path) == [LOCK_NAME]:
        os.remove(os.path.join(self.path, LOCK_NAME))
        os.rmdir(self.path)

  def __enter__(self) -> "Lock":
    return self.acquire()

  def __exit__(self, exc_type, exc, tb) -> None:
    if exc_type is not None:
      self.remove_if_unused()
    self.release()


def try_lock(path: str) -> Lock | None:
  """The lock of an existing or new directory, or None when another process holds it."""
  try:
    return Lock(path).acquire()
  except Busy:
    return None


def holder(path: str) -> str | None:
  """Who holds ``path``'s lock, or None when nobody does (for messages)."""
  lock_path = os.path.join(path, LOCK_NAME)
  if not os.path.exists(lock_path):
    return None
  fd = os.open(lock_path, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
      return None
    except BlockingIOError:
      return _describe_holder(fd)
  finally:
    os.close(fd)


def _inherited_fd(path: str) -> int | None:
  """The lock descriptor a launcher passed for ``path``, if it is that directory's lock file."""
  value = os.environ.get(INHERITED_LOCK_ENV)
  if not value:
    return None
  try:
    fd = int(value)
    passed, own = os.fstat(fd), os.stat(os.path.join(path, LOCK_NAME))
  except (ValueError, OSError):
    return None
  if (passed.st_dev, passed.st_ino) != (own.st_dev, own.st_ino):
    return None
  os.environ.pop(INHERITED_LOCK_ENV)  # not passed on to this process's own children
  return fd
