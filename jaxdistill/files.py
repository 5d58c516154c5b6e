"""Atomic file writes: a reader (or a rerun after a kill) sees the old file or the new one, never half.

Temp files are named after their writer (host-pid-random), so a later writer can tell the leftovers of
a killed one (jaxdistill/data/cache.py removes them) from files being written now.
"""

from __future__ import annotations

import contextlib
import os
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
