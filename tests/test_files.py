"""jaxdistill/files.py: atomic file and directory writes, and that every writer goes through them."""

import ast
import os
import pathlib

import numpy as np
import pytest

from jaxdistill import files

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxdistill"
RENAMES = {"replace", "rename", "renames"}


def _renames_in(path: pathlib.Path) -> list[int]:
  """Lines of `path` that call os.replace / os.rename (also as `from os import replace`)."""
  tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
  imported = {a.asname or a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "os"
              for a in node.names if a.name in RENAMES}
  lines = []
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    f = node.func
    if ((isinstance(f, ast.Attribute) and f.attr in RENAMES and isinstance(f.value, ast.Name) and f.value.id == "os")
        or (isinstance(f, ast.Name) and f.id in imported)):
      lines.append(node.lineno)
  return lines


def test_only_files_py_renames():
  """A hand-written temp-then-rename elsewhere would skip the fsyncs and the leftover handling here."""
  found = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    if path != PACKAGE / "files.py" and (lines := _renames_in(path)):
      found[str(path.relative_to(PACKAGE.parent))] = lines
  assert not found, f"os.replace / os.rename outside jaxdistill/files.py (use its helpers): {found}"
  assert _renames_in(PACKAGE / "files.py")  # the scan itself sees calls


def _listing(path) -> dict[str, bytes]:
  return {name: (pathlib.Path(path) / name).read_bytes() for name in sorted(os.listdir(path))}


def test_atomic_open_writes_whole_or_keeps_the_old_file(tmp_path):
  path = str(tmp_path / "t.npz")
  with files.atomic_open(path) as f:
    np.savez(f, x=np.arange(3))
  assert np.load(path)["x"].tolist() == [0, 1, 2]
  with pytest.raises(RuntimeError):
    with files.atomic_open(path) as f:
      f.write(b"half")
      raise RuntimeError("killed")
  assert np.load(path)["x"].tolist() == [0, 1, 2]
  assert os.listdir(tmp_path) == ["t.npz"]


def test_atomic_dir_creates_then_replaces_a_directory(tmp_path):
  path = str(tmp_path / "out")
  with files.atomic_dir(path) as tmp:
    assert not os.path.exists(path) and os.path.isdir(tmp)
    (pathlib.Path(tmp) / "a.txt").write_bytes(b"1")
  assert _listing(path) == {"a.txt": b"1"}
  with files.atomic_dir(path) as tmp:
    (pathlib.Path(tmp) / "b.txt").write_bytes(b"2")
    assert _listing(path) == {"a.txt": b"1"}  # the old directory stays whole until the swap
  assert _listing(path) == {"b.txt": b"2"}  # replaced, not merged
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_that_fails_keeps_the_old_directory(tmp_path):
  path = str(tmp_path / "out")
  os.makedirs(path)
  (pathlib.Path(path) / "a.txt").write_bytes(b"1")
  with pytest.raises(RuntimeError):
    with files.atomic_dir(path) as tmp:
      (pathlib.Path(tmp) / "b.txt").write_bytes(b"half")
      raise RuntimeError("failed midway")
  assert _listing(path) == {"a.txt": b"1"}
  assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_dir_clears_a_killed_writers_leftovers(tmp_path):
  """A kill mid-write leaves PATH.tmp; one between the swap's renames leaves PATH.old (and no PATH)."""
  path = str(tmp_path / "out")
  for leftover in (path + ".tmp", path + ".old"):
    os.makedirs(leftover)
    (pathlib.Path(leftover) / "stray").write_bytes(b"x")
  with files.atomic_dir(path) as tmp:
    (pathlib.Path(tmp) / "a.txt").write_bytes(b"1")
  assert sorted(os.listdir(tmp_path)) == ["out"]
  assert _listing(path) == {"a.txt": b"1"}


def test_replace_dir_moves_a_built_directory_over_another(tmp_path):
  built, path = tmp_path / "build" / "x", tmp_path / "x"
  os.makedirs(built)
  (built / "new").write_bytes(b"n")
  files.replace_dir(str(built), str(path))  # nothing there yet
  assert _listing(path) == {"new": b"n"} and not built.exists()
  os.makedirs(built)
  (built / "newer").write_bytes(b"m")
  files.replace_dir(str(built), str(path))
  assert _listing(path) == {"newer": b"m"} and not built.exists()
  assert sorted(os.listdir(tmp_path)) == ["build", "x"]
