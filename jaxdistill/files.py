"""Atomic writes: a reader (or a rerun after a kill) sees the old file or the new one, never half.

Every writer in jaxdistill goes through here (tests/test_files.py checks that no other module calls
`os.replace`): one file through `atomic_open` / `atomic_write_bytes` / `atomic_write_text`, a whole
directory through `atomic_dir` (filled under a temp name, then swapped in) or `replace_dir`.

Temp files are named after their writer (host-pid-random), so a later writer can tell the leftovers of
a killed one (jaxdistill/data/rationale_cache.py removes them) from files being written now.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import uuid
from typing import BinaryIO, Iterator


def host() -> str:
  return "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40] or "host"


def writer_tag() -> str:
  """host-pid-random: names a file's writer."""
  return f"{host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(path: str) -> None:
  """Makes a rename in `path` durable (best effort: some filesystems cannot fsync a directory)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str, tmp: str | None = None) -> Iterator[BinaryIO]:
  """A binary file to write `path` through: written as `tmp` (default: a hidden name beside `path`
  carrying the writer tag), fsynced and renamed over `path` when the block ends without error."""
  directory = os.path.dirname(path) or "."
  tmp = tmp or os.path.join(directory, f".{os.path.basename(path)}.{writer_tag()}.tmp")
  try:
    with open(tmp, "wb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  fsync_dir(directory)


def atomic_write_bytes(path: str, data: bytes) -> None:
  with atomic_open(path) as f:
    f.write(data)


def atomic_write_text(path: str, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- directories
# A directory cannot be renamed over a non-empty one, so a swap is two renames: the old directory
# aside to PATH.old, the new one to PATH. Between them PATH is briefly absent (readers see the old
# directory, none, or the new one, never a mix). The temp and aside names are fixed, not tagged: a
# directory has one writer at a time (the chief), and its next write must find a killed one's leftovers.


def _aside(path: str) -> tuple[str, str]:
  """(the temp name a new directory is written under, the name the old one is moved aside to)."""
  path = path.rstrip("/")
  return path + ".tmp", path + ".old"


def replace_dir(src: str, path: str) -> None:
  """Moves the directory `src` to `path`, replacing the directory there (if any), which is removed.
  `src` must be on the same filesystem as `path` (e.g. beside it)."""
  path = path.rstrip("/")
  _, old = _aside(path)
  shutil.rmtree(old, ignore_errors=True)  # of a swap killed between its renames
  if os.path.exists(path):
    os.replace(path, old)
    os.replace(src, path)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(src, path)
  for directory in {os.path.dirname(os.path.abspath(src)), os.path.dirname(os.path.abspath(path))}:
    fsync_dir(directory)


@contextlib.contextmanager
def atomic_dir(path: str) -> Iterator[str]:
  """A new empty directory (PATH.tmp) to fill; when the block ends without error it replaces `path`
  (`replace_dir`), else it is removed. A killed writer's PATH.tmp / PATH.old are removed first."""
  tmp, old = _aside(path)
  for leftover in (tmp, old):
    shutil.rmtree(leftover, ignore_errors=True)
  os.makedirs(tmp)
  try:
    yield tmp
    replace_dir(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
