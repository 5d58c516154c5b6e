"""The project's door to the filesystem: paths through `etils.epath`, and atomic writes on any of them.

Every user path (workdir, data, caches, model and tokenizer directories, study and selection outputs)
may be local or remote (`gs://`, `s3://`, ...): modules read and list through `epath.Path(x)` and
write through the helpers here. One file goes through `atomic_open` / `atomic_write_bytes` /
`atomic_write_text`, a whole directory through `atomic_dir` (filled under a temp name, then swapped in)
or `replace_dir`. tests/test_files.py checks that no other module calls `os.replace`.

What "atomic" means where:
- local: a reader (or a rerun after a kill) sees the old file or the new one, never half: written to a
  temp name, fsynced, renamed (POSIX rename is atomic).
- object stores (gs:// through gfile or gcsfs): an object becomes visible only when its upload
  completes, and replaces the old one whole, so one upload of the finished bytes is atomic per file.
  Renames there are copy + delete (not atomic), so files are never renamed into place: the bytes are
  kept in memory until the block ends and then written in one upload. A directory swap is one rename
  per object: a reader may see a directory half-swapped (never a half file), and a killed swap is
  finished or redone by the next write, as on a local disk.

Temp files are named after their writer (host-pid-random), so a later writer can tell the leftovers of
a killed one (jaxdistill/data/rationale_cache.py removes them) from files being written now.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import tempfile
import uuid
from typing import BinaryIO, Iterator

from etils import epath

# URI prefixes epath serves beyond the local disk; anything else is a local path.
REMOTE_PREFIXES = ("gs://", "s3://", "az://", "hf://")

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  return os.fspath(path).startswith(REMOTE_PREFIXES)


def absolute(path: PathLike) -> str:
  """`path` made absolute (a remote path already is), as a string for configs, logs and JSON."""
  return os.fspath(path) if is_remote(path) else os.path.abspath(path)


def host() -> str:
  return "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:40] or "host"


def writer_tag() -> str:
  """host-pid-random: names a file's writer."""
  return f"{host()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def fsync_dir(path: PathLike) -> None:
  """Makes a rename in `path` durable (best effort: some filesystems cannot fsync a directory;
  object stores have nothing to sync)."""
  if is_remote(path):
    return
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
def atomic_open(path: PathLike, tmp: PathLike | None = None) -> Iterator[BinaryIO]:
  """A binary file to write `path` through. Local: written as `tmp` (default: a hidden name beside
  `path` carrying the writer tag), fsynced and renamed over `path` when the block ends without error.
  Remote: buffered in memory and uploaded in one write when the block ends without error."""
  if is_remote(path):
    buffer = io.BytesIO()
    yield buffer
    epath.Path(path).write_bytes(buffer.getvalue())
    return
  path = os.fspath(path)
  directory = os.path.dirname(path) or "."
  tmp = os.fspath(tmp) if tmp else os.path.join(directory, f".{os.path.basename(path)}.{writer_tag()}.tmp")
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


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
  with atomic_open(path) as f:
    f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
  atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------- directories
# A directory cannot be renamed over a non-empty one, so a swap is two renames: the old directory
# aside to PATH.old, the new one to PATH. Between them PATH is briefly absent (readers see the old
# directory, none, or the new one, never a mix). The temp and aside names are fixed, not tagged: a
# directory has one writer at a time (the chief), and its next write must find a killed one's leftovers.


def _aside(path: PathLike) -> tuple[str, str]:
  """(the temp name a new directory is written under, the name the old one is moved aside to)."""
  path = os.fspath(path).rstrip("/")
  return path + ".tmp", path + ".old"


def remove_tree(path: PathLike) -> None:
  """Removes the directory `path` and everything in it; nothing when it is not there."""
  p = epath.Path(path)
  if p.exists():
    p.rmtree(missing_ok=True)


def _move(src: PathLike, dst: PathLike) -> None:
  if is_remote(src) or is_remote(dst):
    epath.Path(src).rename(dst)  # one copy + delete per object on an object store
  else:
    os.replace(src, dst)


def replace_dir(src: PathLike, path: PathLike) -> None:
  """Moves the directory `src` to `path`, replacing the directory there (if any), which is removed.
  `src` must be on the same filesystem as `path` (e.g. beside it)."""
  src, path = os.fspath(src), os.fspath(path).rstrip("/")
  _, old = _aside(path)
  remove_tree(old)  # of a swap killed between its renames
  if epath.Path(path).exists():
    _move(path, old)
    _move(src, path)
    remove_tree(old)
  else:
    _move(src, path)
  if not is_remote(path):
    for directory in {os.path.dirname(os.path.abspath(src)), os.path.dirname(os.path.abspath(path))}:
      fsync_dir(directory)


def _upload_tree(local: str, remote: str) -> None:
  """Copies the local directory `local` (recursively) to the remote directory `remote`."""
  for root, _, names in os.walk(local):
    target = epath.Path(remote) / os.path.relpath(root, local)
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        (target / name).write_bytes(f.read())


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[str]:
  """A new empty directory to fill; when the block ends without error it replaces `path`
  (`replace_dir`), else it is removed. A killed writer's PATH.tmp / PATH.old are removed first.

  The directory yielded is always local, so libraries that write only local files (safetensors,
  transformers' save_pretrained) fill it: for a remote `path` it is a local temp directory, uploaded
  to PATH.tmp and swapped in when the block ends."""
  tmp, old = _aside(path)
  for leftover in (tmp, old):
    remove_tree(leftover)
  if is_remote(path):
    with tempfile.TemporaryDirectory(prefix="jaxdistill-upload-") as staging:
      yield staging
      _upload_tree(staging, tmp)
    try:
      replace_dir(tmp, path)
    finally:
      remove_tree(tmp)
    return
  os.makedirs(tmp)
  try:
    yield tmp
    replace_dir(tmp, path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def local_copy(path: PathLike, skip_suffixes: tuple[str, ...] = ()) -> Iterator[str]:
  """A local directory holding the files of the directory `path` (not its subdirectories), for
  libraries that read only local files (transformers' tokenizers): `path` itself when it is local,
  else a temp copy, removed when the block ends. Files ending in `skip_suffixes` (weights) are left out."""
  if not is_remote(path):
    yield os.fspath(path)
    return
  with tempfile.TemporaryDirectory(prefix="jaxdistill-download-") as local:
    for f in epath.Path(path).iterdir():
      if f.is_file() and not f.name.endswith(skip_suffixes):
        with open(os.path.join(local, f.name), "wb") as out:
          out.write(f.read_bytes())
    yield local
