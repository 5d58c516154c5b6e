"""Rationale cache v1: Parquet shards + a JSON manifest (the contract every teacher writes and every source reads).

Layout of a cache directory:

    manifest.json                 schema_version=1, teachers, prompt_ids, counts, shards, times, source
    examples/part-*.parquet       Example rows   (id, task, inputs (JSON string), label,
                                                  human_explanations list<string>, split)
    rationales/part-*.parquet     cache rows     (example_id, teacher, prompt_id, sample_index int32,
                                                  rationale, teacher_answer, teacher_correct bool, raw,
                                                  optional float score columns e.g. `rd`,
                                                  optional `embedding` list<float32>)
    .lock                         fcntl lock file serialising writers (local caches only)

Why this shape:
- Shards are plain Parquet, so pyarrow, pandas and `datasets.load_dataset("parquet",
  data_files=".../rationales/*.parquet")` read them with no jaxdistill code.
- Every write call adds one new shard, written to a hidden temp file in the same
  directory, fsync'ed and renamed (`files.atomic_open`): a reader never sees half a
  shard, and a crash leaves at most a temp file, which the next writer removes
  (`_is_stale_temp`). `replace_with` swaps a whole cache built elsewhere in.
- Writers hold an exclusive `flock` on `.lock` while they check which keys exist and
  add their shard, so several processes (or hosts on a filesystem with working flock)
  writing at once never duplicate a key. Rationales are keyed by
  (example_id, teacher, prompt_id, sample_index), examples by id; a writer only adds
  missing keys, so re-running a builder fills gaps and never duplicates.
- The shard files are the source of truth; the manifest is a summary for humans and
  tools. Readers list the shards (sorted by name; names start with a nanosecond
  timestamp, so this is write order) and dedupe by key keeping the first, which also
  covers filesystems where flock is a no-op, and object stores (gs://...), which have no lock:
  there every shard and the manifest are single uploads, and writers never share a shard.
- The manifest also records every shard and its row count, so data that went missing is
  noticed: `open()` (every reader) refuses a cache whose listed shards are missing or
  changed or whose counts differ from the shards (`verify()` lists these problems;
  `python -m jaxdistill.cache verify --out=DIR --repair` accepts the shards as they are).
  A shard on disk but not listed (a writer died between its shard and the manifest
  update) is data that is there: read, with a warning; the next writer records it.
- `inputs` is a JSON string because tasks have different input fields; a struct
  column would need one schema for all tasks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import json
import logging
import math
import os
import re
import time
from typing import Any, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from etils import epath

from jaxdistill import files
from jaxdistill.data.examples import DataError, Example, Rationale

SCHEMA_VERSION = 1
FORMAT = "jaxdistill.rationale_cache"
MANIFEST = "manifest.json"
LOCK = ".lock"
EXAMPLES = "examples"
RATIONALES = "rationales"
KINDS = (EXAMPLES, RATIONALES)

RATIONALE_KEY = ("example_id", "teacher", "prompt_id", "sample_index")
EXAMPLE_KEY = ("id",)
KEY_COLUMNS = {EXAMPLES: EXAMPLE_KEY, RATIONALES: RATIONALE_KEY}

EXAMPLE_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("task", pa.string()),
    ("inputs", pa.string()),  # JSON object of named text fields
    ("label", pa.string()),
    ("human_explanations", pa.list_(pa.string())),
    ("split", pa.string()),
])

RATIONALE_SCHEMA = pa.schema([
    ("example_id", pa.string()),
    ("teacher", pa.string()),
    ("prompt_id", pa.string()),
    ("sample_index", pa.int32()),
    ("rationale", pa.string()),
    ("teacher_answer", pa.string()),
    ("teacher_correct", pa.bool_()),
    ("raw", pa.string()),
])
EMBEDDING_TYPE = pa.list_(pa.float32())

# A temp file older than this is left over whoever wrote it: writing one shard takes seconds.
STALE_TEMP_SECONDS = 6 * 3600
# Temp names carry their writer: ".tmp-part-<ns>-<host>-<pid>-<rand>.parquet.tmp" (shards),
# ".manifest.json.<host>-<pid>-<rand>.tmp" (the manifest).
_TEMP_NAME = re.compile(r"^\.(?:tmp-part-\d+-|manifest\.json\.)(?P<host>.+)-(?P<pid>\d+)-[0-9a-f]{8}"
                        r"(?:\.parquet)?\.tmp$")
_TEMP_GLOBS = (os.path.join(EXAMPLES, ".tmp-*.tmp"), os.path.join(RATIONALES, ".tmp-*.tmp"), f".{MANIFEST}.*.tmp")


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except OSError:
    return True  # e.g. another user's process: alive
  return True


def _is_stale_temp(path: str, now: float) -> bool:
  """True for a temp file no writer is still writing: one older than STALE_TEMP_SECONDS, or one
  named by a process of this host that is gone. Only asked under the writer lock, which every
  writer on this host holds while its temp files exist; the name and age rules also spare the
  files of a live writer on another host where flock is a no-op."""
  try:
    age = now - epath.Path(path).stat().mtime
  except FileNotFoundError:
    return False
  if age > STALE_TEMP_SECONDS:
    return True
  m = _TEMP_NAME.match(os.path.basename(path))
  return bool(m) and m.group("host") == files.host() and not _pid_alive(int(m.group("pid")))


def _deep_merge(base: Mapping, update: Mapping) -> dict:
  out = dict(base)
  for k, v in update.items():
    if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
      out[k] = _deep_merge(out[k], v)
    else:
      out[k] = v
  return out


def _shard_name() -> str:
  """Unique and sortable in write order: time, host, pid, random."""
  return f"part-{time.time_ns():020d}-{files.writer_tag()}.parquet"


def _parquet(path: str) -> str | pa.BufferReader:
  """What pyarrow reads a shard from: a local path, or the bytes of a remote one read through epath
  (pyarrow's own filesystems would bypass epath's backends and credentials)."""
  return pa.BufferReader(epath.Path(path).read_bytes()) if files.is_remote(path) else path


def _read_keys(path: str, kind: str) -> set[tuple]:
  cols = list(KEY_COLUMNS[kind])
  t = pq.read_table(_parquet(path), columns=cols)
  return set(zip(*(t.column(c).to_pylist() for c in cols)))


def repair_hint(path: str) -> str:
  return (f"accept the shards as they are with `python -m jaxdistill.cache verify --out={path} --repair`, "
          "or rebuild the cache (re-import)")


@dataclasses.dataclass(frozen=True)
class Problem:
  """A difference between manifest.json and the shards. `data_lost`: rows the manifest records are
  missing or changed (readers refuse the cache); else extra rows on disk (read, with a warning)."""
  text: str
  data_lost: bool = True


def _example_row(ex: Example | Mapping) -> dict:
  if isinstance(ex, Example):
    row = ex.to_row()
  else:
    row = dict(ex)
  inputs = row.get("inputs", {})
  if not isinstance(inputs, str):
    inputs = json.dumps(dict(inputs), ensure_ascii=False)
  return {
      "id": str(row["id"]),
      "task": str(row["task"]),
      "inputs": inputs,
      "label": str(row["label"]),
      "human_explanations": [str(h) for h in (row.get("human_explanations") or ())],
      "split": str(row.get("split", "train")),
  }


def _rationale_row(r: Rationale | Mapping) -> dict:
  if isinstance(r, Rationale):
    return {
        "example_id": r.example_id, "teacher": r.teacher, "prompt_id": r.prompt_id,
        "sample_index": int(r.sample_index), "rationale": r.rationale,
        "teacher_answer": r.teacher_answer, "teacher_correct": bool(r.teacher_correct), "raw": r.raw,
    }
  row = dict(r)
  for col in ("example_id", "teacher", "prompt_id", "sample_index", "rationale"):
    if col not in row:
      raise ValueError(f"rationale row is missing column {col!r}: {row!r}")
  row.setdefault("teacher_answer", "")
  row.setdefault("teacher_correct", False)
  row.setdefault("raw", "")
  row["sample_index"] = int(row["sample_index"])
  row["teacher_correct"] = bool(row["teacher_correct"])
  return row


def _rationales_table(rows: Sequence[dict]) -> pa.Table:
  """Fixed columns with fixed types; extra columns: `embedding` list<float32>, others inferred."""
  fields = list(RATIONALE_SCHEMA)
  extra = []
  for row in rows:
    for k in row:
      if k not in RATIONALE_SCHEMA.names and k not in extra:
        extra.append(k)
  arrays = [pa.array([row[f.name] for row in rows], type=f.type) for f in fields]
  for name in extra:
    values = [row.get(name) for row in rows]
    if name == "embedding":
      typ = EMBEDDING_TYPE
    elif all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
      typ = pa.float64()  # score columns (rd, ...) stay float even when written as ints
      values = [None if v is None else float(v) for v in values]
    else:
      typ = None
    arr = pa.array(values, type=typ)
    fields.append(pa.field(name, arr.type))
    arrays.append(arr)
  return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


class RationaleCache:
  """A rationale cache directory (see the module docstring for layout and guarantees).

  `RationaleCache(path)` opens an existing cache or creates an empty one on first
  write; `RationaleCache.open(path)` requires an existing manifest.
  """

  def __init__(self, path: str, *, source: Mapping[str, Any] | None = None):
    self.path = files.absolute(path)
    self._initial_source = dict(source or {})
    # Incremental key index: shards already read -> their keys (shards are immutable).
    self._seen_shards: dict[str, set[str]] = {k: set() for k in KINDS}
    self._keys: dict[str, set[tuple]] = {k: set() for k in KINDS}

  # --- construction -----------------------------------------------------------------

  @classmethod
  def create(cls, path: str, *, source: Mapping[str, Any] | None = None, exist_ok: bool = True
             ) -> "RationaleCache":
    cache = cls(path, source=source)
    if cls.exists(path) and not exist_ok:
      raise FileExistsError(f"{path}: a rationale cache already exists")
    cache._ensure_created()
    if source:
      cache.update_source(source)
    return cache

  @classmethod
  def open(cls, path: str) -> "RationaleCache":
    """An existing cache, checked against its manifest (see `verify`): DataError when rows the
    manifest records are missing or changed, a logged warning for unlisted shards."""
    cache = cls(path)
    if not cls.exists(path):
      if cache.has_shards():
        raise DataError(f"{cache.path}: shards but no {MANIFEST}; {repair_hint(cache.path)}")
      raise FileNotFoundError(f"{path}: no rationale cache here ({MANIFEST} missing)")
    with cache._shared_lock():
      version = cache.manifest.get("schema_version")
      if version != SCHEMA_VERSION:
        raise ValueError(f"{path}/{MANIFEST}: schema_version={version!r}, this code reads {SCHEMA_VERSION}")
      problems, _ = cache._inspect()
    lost = [p.text for p in problems if p.data_lost]
    if lost:
      raise DataError(f"{cache.path}: the shards do not match {MANIFEST} (data lost or changed): "
                      f"{'; '.join(lost)}; {repair_hint(cache.path)}")
    for p in problems:
      logging.warning("%s: %s; reading it (`python -m jaxdistill.cache verify --out=%s --repair` records it)",
                      cache.path, p.text, cache.path)
    return cache

  @staticmethod
  def exists(path: str) -> bool:
    return (epath.Path(path) / MANIFEST).is_file()

  def has_shards(self) -> bool:
    return any(self.shard_files(kind) for kind in KINDS)

  def _ensure_created(self) -> None:
    for kind in KINDS:
      (epath.Path(self.path) / kind).mkdir(parents=True, exist_ok=True)
    if not self.exists(self.path):
      with self._locked():
        if not self.exists(self.path):
          if self.has_shards():  # the manifest was lost: summarise the shards, never record an empty cache
            logging.warning("%s: shards but no %s; rebuilding it from the shards", self.path, MANIFEST)
          self._write_manifest(self._rebuild_manifest())

  def _empty_manifest(self) -> dict:
    now = _now()
    return {
        "schema_version": SCHEMA_VERSION, "format": FORMAT, "created": now, "updated": now,
        "teachers": [], "prompt_ids": [], "tasks": [],
        "counts": {"examples": 0, "rationales": 0, "examples_by_task_split": {},
                   "rationales_by_teacher_prompt": {}},
        "shards": [], "source": dict(self._initial_source),
    }

  # --- locking and manifest -----------------------------------------------------------

  @contextlib.contextmanager
  def _locked(self) -> Iterator[None]:
    """The writers' exclusive lock; taking it also clears what killed writers left. An object store
    has no lock (see the module docstring): there this only clears."""
    epath.Path(self.path).mkdir(parents=True, exist_ok=True)
    if files.is_remote(self.path):
      self._remove_stale_temps()
      yield
      return
    with open(os.path.join(self.path, LOCK), "a+") as f:
      fcntl.flock(f.fileno(), fcntl.LOCK_EX)
      try:
        self._remove_stale_temps()
        yield
      finally:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)

  @contextlib.contextmanager
  def _shared_lock(self) -> Iterator[None]:
    """Readers comparing manifest and shards: no writer is between a shard and its manifest update
    (or inside compact()) while this is held. Never taken inside `_locked` (flock would deadlock)."""
    with contextlib.ExitStack() as stack:
      if not files.is_remote(self.path):  # an object store has no lock: checked unlocked there
        try:
          f = stack.enter_context(open(os.path.join(self.path, LOCK), "rb"))
          fcntl.flock(f.fileno(), fcntl.LOCK_SH)  # released when f closes
        except OSError:
          pass  # no lock file (never written, or read-only storage) or no flock there: check unlocked
      yield

  def _remove_stale_temps(self) -> None:
    now = time.time()
    for pattern in _TEMP_GLOBS:
      directory, name = os.path.split(pattern)
      where = epath.Path(self.path) / directory if directory else epath.Path(self.path)
      if not where.is_dir():
        continue
      for f in where.glob(name):
        if _is_stale_temp(os.fspath(f), now):
          logging.warning("%s: removing %s, left by a writer that stopped", self.path, self._relative(f))
          f.unlink(missing_ok=True)

  @property
  def manifest(self) -> dict:
    """The manifest as on disk now (a summary; shards are the source of truth); DataError when
    it is not a JSON object."""
    path = os.path.join(self.path, MANIFEST)
    data = epath.Path(path).read_bytes()
    try:
      m = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise DataError(f"{path}: unreadable manifest ({e}); {repair_hint(self.path)}") from None
    if not isinstance(m, dict):
      raise DataError(f"{path}: expected a JSON object, got {type(m).__name__}; {repair_hint(self.path)}")
    return m

  def _write_manifest(self, manifest: dict) -> None:
    data = json.dumps(manifest, indent=2, sort_keys=False, ensure_ascii=False).encode()
    files.atomic_write_bytes(os.path.join(self.path, MANIFEST), data)

  def update_source(self, info: Mapping[str, Any]) -> None:
    """Deep-merges free-form provenance info into manifest["source"] (under the lock)."""
    self._ensure_created()
    with self._locked():
      m = self.manifest
      m["source"] = _deep_merge(m.get("source") or {}, info)
      m["updated"] = _now()
      self._write_manifest(m)

  # --- shards ---------------------------------------------------------------------------

  def shard_files(self, kind: str = RATIONALES) -> list[str]:
    """Absolute paths of the shards of `kind`, in write order."""
    if kind not in KINDS:
      raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
    directory = epath.Path(self.path) / kind
    return sorted(os.fspath(p) for p in directory.glob("part-*.parquet")) if directory.is_dir() else []

  def _relative(self, path: str | os.PathLike) -> str:
    """`path` (inside the cache) relative to the cache directory, as the manifest records shards."""
    return os.fspath(path)[len(self.path):].lstrip("/")

  def data_files(self, kind: str = RATIONALES) -> list[str]:
    """For `datasets.load_dataset("parquet", data_files=cache.data_files())`."""
    return self.shard_files(kind)

  def _refresh_keys(self, kind: str) -> set[tuple]:
    for f in self.shard_files(kind):
      name = os.path.basename(f)
      if name in self._seen_shards[kind]:
        continue
      self._keys[kind].update(_read_keys(f, kind))
      self._seen_shards[kind].add(name)
    return self._keys[kind]

  def keys(self, kind: str = RATIONALES) -> set[tuple]:
    """Keys present: (example_id, teacher, prompt_id, sample_index) or (id,) for examples."""
    return set(self._refresh_keys(kind))

  def _write_shard(self, kind: str, table: pa.Table) -> str:
    directory = os.path.join(self.path, kind)
    name = _shard_name()
    final = os.path.join(directory, name)
    with files.atomic_open(final, tmp=os.path.join(directory, f".tmp-{name}.tmp")) as f:
      pq.write_table(table, f)
    return final

  def _write_rows(self, kind: str, rows: list[dict]) -> int:
    """Keeps rows whose key is new (and first of its key in `rows`), writes them as one shard."""
    self._ensure_created()
    key_cols = KEY_COLUMNS[kind]
    with self._locked():
      existing = self._refresh_keys(kind)
      new_rows, batch_keys = [], set()
      for row in rows:
        key = tuple(row[c] for c in key_cols)
        if key in existing or key in batch_keys:
          continue
        batch_keys.add(key)
        new_rows.append(row)
      if not new_rows:
        return 0
      if kind == EXAMPLES:
        table = pa.Table.from_pylist(new_rows, schema=EXAMPLE_SCHEMA)
      else:
        table = _rationales_table(new_rows)
      path = self._write_shard(kind, table)
      existing.update(batch_keys)
      self._seen_shards[kind].add(os.path.basename(path))
      self._record_shard(kind, path, new_rows)
    return len(new_rows)

  def _record_shard(self, kind: str, path: str, rows: list[dict]) -> None:
    """Updates the manifest summary for one new shard (called under the lock)."""
    m = self.manifest
    listed = {s.get("file") for s in m.get("shards", [])}
    rel = self._relative(path)
    on_disk = {self._relative(f) for k in KINDS for f in self.shard_files(k)}
    if on_disk - {rel} != listed:
      # A writer died between its shard and its manifest update, or listed shards were lost (this
      # write may be the re-import adding their rows back): the manifest summarises the shards.
      missing = sorted(listed - on_disk)
      if missing:
        logging.warning("%s: %s listed in %s but missing; rebuilding it from the shards on disk",
                        self.path, ", ".join(map(str, missing)), MANIFEST)
      self._write_manifest(self._rebuild_manifest(m))
      return
    m.setdefault("shards", []).append({"kind": kind, "file": rel, "rows": len(rows), "created": _now()})
    counts = m.setdefault("counts", {})
    counts[kind] = counts.get(kind, 0) + len(rows)
    if kind == EXAMPLES:
      by = counts.setdefault("examples_by_task_split", {})
      for r in rows:
        k = f"{r['task']}/{r['split']}"
        by[k] = by.get(k, 0) + 1
        if r["task"] not in m.setdefault("tasks", []):
          m["tasks"].append(r["task"])
    else:
      by = counts.setdefault("rationales_by_teacher_prompt", {})
      for r in rows:
        k = f"{r['teacher']}/{r['prompt_id']}"
        by[k] = by.get(k, 0) + 1
        if r["teacher"] not in m.setdefault("teachers", []):
          m["teachers"].append(r["teacher"])
        if r["prompt_id"] not in m.setdefault("prompt_ids", []):
          m["prompt_ids"].append(r["prompt_id"])
    m["updated"] = _now()
    self._write_manifest(m)

  def _rebuild_manifest(self, old: dict | None = None) -> dict:
    m = self._empty_manifest()
    if old:
      m["created"] = old.get("created", m["created"])
      m["source"] = old.get("source", m["source"])
    for kind in KINDS:
      table = self.table(kind)
      m["counts"][kind] = table.num_rows
      for f in self.shard_files(kind):
        m["shards"].append({"kind": kind, "file": self._relative(f),
                            "rows": pq.ParquetFile(_parquet(f)).metadata.num_rows, "created": None})
      if kind == EXAMPLES and table.num_rows:
        by = m["counts"]["examples_by_task_split"]
        for task, split in zip(table.column("task").to_pylist(), table.column("split").to_pylist()):
          by[f"{task}/{split}"] = by.get(f"{task}/{split}", 0) + 1
          if task not in m["tasks"]:
            m["tasks"].append(task)
      if kind == RATIONALES and table.num_rows:
        by = m["counts"]["rationales_by_teacher_prompt"]
        for t, p in zip(table.column("teacher").to_pylist(), table.column("prompt_id").to_pylist()):
          by[f"{t}/{p}"] = by.get(f"{t}/{p}", 0) + 1
          if t not in m["teachers"]:
            m["teachers"].append(t)
          if p not in m["prompt_ids"]:
            m["prompt_ids"].append(p)
    m["updated"] = _now()
    return m

  def rebuild_manifest(self) -> dict:
    """Recomputes the manifest from the shards as they are (e.g. after a writer crashed), keeping
    `created` and the provenance in `source`. An unreadable manifest is kept beside it as
    manifest.json.unreadable-<ns> (its provenance may still be read by eye)."""
    for kind in KINDS:
      (epath.Path(self.path) / kind).mkdir(parents=True, exist_ok=True)
    with self._locked():
      m = self._rebuild_manifest(self._old_manifest())
      self._write_manifest(m)
    return m

  def _old_manifest(self) -> dict | None:
    """The manifest if readable; None when missing or unreadable (then moved aside)."""
    try:
      return self.manifest
    except FileNotFoundError:
      return None
    except DataError as e:
      path = epath.Path(self.path) / MANIFEST
      kept = f"{path}.unreadable-{time.time_ns()}"
      files.atomic_write_bytes(kept, path.read_bytes())
      path.unlink()
      logging.warning("%s; moved to %s", e, kept)
      return None

  # --- integrity ------------------------------------------------------------------------

  def verify(self) -> list[str]:
    """Human-readable differences between manifest.json and the shards; empty when they match.

    Finds shards listed but missing, shards on disk but not listed, shards whose row count
    differs from their manifest entry, and manifest counts that differ from the deduplicated
    rows of the listed shards. Row counts come from the Parquet footers; counts read the key
    columns only."""
    with self._shared_lock():
      return [p.text for p in self._inspect()[0]]

  def _inspect(self) -> tuple[list[Problem], dict[str, int]]:
    """(`verify`'s problems, the deduplicated rows of each kind in all readable shards). The
    manifest is read before the shards are listed; callers hold a lock."""
    try:
      m, problems = self.manifest, []
    except FileNotFoundError:
      m, problems = None, [Problem(f"{MANIFEST} is missing")]
    except DataError as e:
      m, problems = None, [Problem(str(e))]
    listed = {s.get("file"): s for s in (m or {}).get("shards") or [] if isinstance(s, dict)}
    on_disk = {self._relative(f): f for kind in KINDS for f in self.shard_files(kind)}
    keys = {kind: set() for kind in KINDS}
    listed_keys = {kind: set() for kind in KINDS}
    for rel, f in sorted(on_disk.items()):
      kind = os.path.dirname(rel)
      try:
        rows, shard_keys = pq.ParquetFile(_parquet(f)).metadata.num_rows, _read_keys(f, kind)
      except (OSError, pa.ArrowException) as e:
        problems.append(Problem(f"{rel}: unreadable Parquet ({e})"))
        continue
      keys[kind] |= shard_keys
      if rel in listed:
        listed_keys[kind] |= shard_keys
        if listed[rel].get("rows") is not None and rows != listed[rel]["rows"]:
          problems.append(Problem(f"{rel}: {rows} rows, {MANIFEST} lists {listed[rel]['rows']}"))
      elif m is not None:
        problems.append(Problem(f"{rel}: on disk ({rows} rows) but not listed in {MANIFEST} (its writer "
                                "stopped before recording it)", data_lost=False))
    if m is not None:
      problems += [Problem(f"{rel}: listed in {MANIFEST} ({listed[rel].get('rows')} rows) but missing on disk")
                   for rel in sorted(set(listed) - set(on_disk), key=str)]
      counts = m.get("counts") or {}
      problems += [Problem(f"{MANIFEST} counts {counts.get(kind, 0)} {kind} but the shards it lists hold "
                           f"{len(listed_keys[kind])} (deduplicated)")
                   for kind in KINDS if counts.get(kind, 0) != len(listed_keys[kind])]
    return problems, {kind: len(keys[kind]) for kind in KINDS}

  # --- writing --------------------------------------------------------------------------

  def write_examples(self, examples: Iterable[Example | Mapping]) -> int:
    """Adds examples whose id is not yet present, as one new shard; returns how many were new."""
    return self._write_rows(EXAMPLES, [_example_row(e) for e in examples])

  def write_rationales(self, rows: Iterable[Rationale | Mapping]) -> int:
    """Adds rows whose key is not yet present, as one new shard; returns how many were new.

    Rows are `Rationale`s or mappings with the cache-row columns plus optional extra
    columns (float scores such as `rd`, `embedding` as a float list).
    """
    return self._write_rows(RATIONALES, [_rationale_row(r) for r in rows])

  def replace_with(self, built: "RationaleCache") -> "RationaleCache":
    """Makes this directory hold the cache `built` (written elsewhere on the same filesystem, e.g.
    in a hidden directory inside this one) instead of its own, and removes `built`'s directory.
    Other files here are left alone. This manifest goes first and `built`'s comes last, so a reader
    sees the old cache, no cache (`open` refuses), or the new one, never a mix of the two; a
    replace killed midway leaves no cache, and the next one completes. Returns the cache opened."""
    with self._locked():
      manifest = epath.Path(self.path) / MANIFEST
      manifest.unlink(missing_ok=True)  # from here on this directory is no cache until the new manifest lands
      for kind in KINDS:
        files.replace_dir(os.path.join(built.path, kind), os.path.join(self.path, kind))
      # Shard paths in it are relative: still true here.
      files.atomic_write_bytes(manifest, (epath.Path(built.path) / MANIFEST).read_bytes())
      self._seen_shards = {k: set() for k in KINDS}
      self._keys = {k: set() for k in KINDS}
    files.remove_tree(built.path)
    return type(self).open(self.path)

  # --- reading --------------------------------------------------------------------------

  def table(self, kind: str = RATIONALES, columns: Sequence[str] | None = None) -> pa.Table:
    """All rows of `kind` as one pyarrow Table, deduplicated by key (first shard wins)."""
    for attempt in range(3):
      files = self.shard_files(kind)
      try:
        tables = [pq.read_table(_parquet(f)) for f in files]
        break
      except FileNotFoundError:  # a concurrent compact() replaced the shards; list again
        if attempt == 2:
          raise
    if not files:
      schema = EXAMPLE_SCHEMA if kind == EXAMPLES else RATIONALE_SCHEMA
      t = schema.empty_table()
      return t.select(list(columns)) if columns else t
    table = pa.concat_tables(tables, promote_options="default")
    key_cols = KEY_COLUMNS[kind]
    keys = zip(*(table.column(c).to_pylist() for c in key_cols))
    seen, keep = set(), []
    for i, k in enumerate(keys):
      if k not in seen:
        seen.add(k)
        keep.append(i)
    if len(keep) != table.num_rows:
      table = table.take(pa.array(keep, type=pa.int64()))
    return table.select(list(columns)) if columns else table

  def read_examples(self, task: str | None = None, split: str | None = None) -> list[Example]:
    rows = self.table(EXAMPLES).to_pylist()
    out = []
    for row in rows:
      if (task is not None and row["task"] != task) or (split is not None and row["split"] != split):
        continue
      row["inputs"] = json.loads(row["inputs"]) if isinstance(row["inputs"], str) else row["inputs"]
      out.append(Example.from_row(row))
    return out

  def read_rationales(self, teacher: str | None = None, prompt_id: str | None = None,
                      example_ids: Iterable[str] | None = None) -> list[Rationale]:
    """Rationales (score/embedding columns are in `rows()`/`table()`, not in `Rationale`)."""
    out = []
    for row in self.rows(teacher=teacher, prompt_id=prompt_id, example_ids=example_ids):
      out.append(Rationale(
          example_id=row["example_id"], teacher=row["teacher"], prompt_id=row["prompt_id"],
          sample_index=int(row["sample_index"]), rationale=row["rationale"] or "",
          teacher_answer=row["teacher_answer"] or "", teacher_correct=bool(row["teacher_correct"]),
          raw=row["raw"] or ""))
    return out

  def rows(self, teacher: str | None = None, prompt_id: str | None = None,
           example_ids: Iterable[str] | None = None) -> list[dict]:
    """Rationale rows as dicts, with every column (scores, embedding)."""
    ids = set(example_ids) if example_ids is not None else None
    out = []
    for row in self.table(RATIONALES).to_pylist():
      if teacher is not None and row["teacher"] != teacher:
        continue
      if prompt_id is not None and row["prompt_id"] != prompt_id:
        continue
      if ids is not None and row["example_id"] not in ids:
        continue
      out.append(row)
    return out

  # --- maintenance ----------------------------------------------------------------------

  def compact(self) -> None:
    """Rewrites each kind as one deduplicated shard with a unified schema, then the manifest.

    Useful before `datasets.load_dataset`, which wants one schema across files. Holds
    the lock throughout; readers see either the old shards or the new one plus (briefly)
    the old ones, which dedupe to the same rows.
    """
    self._ensure_created()
    with self._locked():
      for kind in KINDS:
        old = self.shard_files(kind)
        if len(old) <= 1:
          continue
        table = self.table(kind)
        self._write_shard(kind, table)
        for f in old:
          epath.Path(f).unlink()
        files.fsync_dir(os.path.join(self.path, kind))
        self._seen_shards[kind] = set()
        self._keys[kind] = set()
      self._write_manifest(self._rebuild_manifest(self.manifest))

  def summary(self) -> dict:
    """The manifest's summary beside what the shards hold, and `verify`'s problems."""
    with self._shared_lock():
      problems, on_disk = self._inspect()
      try:
        m = self.manifest
      except (FileNotFoundError, DataError):
        m = {}
      on_disk["shards"] = sum(len(self.shard_files(kind)) for kind in KINDS)
    return {"path": self.path, "counts": m.get("counts", {}), "teachers": m.get("teachers", []),
            "prompt_ids": m.get("prompt_ids", []), "shards": len(m.get("shards", [])),
            "on_disk": on_disk, "problems": [p.text for p in problems]}


def mean_words(texts: Iterable[str]) -> float:
  n, total = 0, 0
  for t in texts:
    n += 1
    total += len(t.split())
  return total / n if n else math.nan
