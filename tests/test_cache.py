"""Rationale cache v1: keyed, no duplicates, resumable, atomic, concurrent writers."""

import json
import multiprocessing
import os
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from jaxdistill import files
from jaxdistill.data import rationale_cache as cache_lib
from jaxdistill.data.rationale_cache import RationaleCache, SCHEMA_VERSION
from jaxdistill.data.examples import DataError, Example, Rationale


def _ex(i, split="train"):
  return Example(id=f"ex-{i}", task="esnli", inputs={"premise": f"p{i}", "hypothesis": f"h{i}"},
                 label="neutral", human_explanations=(f"because {i}",), split=split)


def _rat(i, sample=0, teacher="t", prompt="p", text=None):
  return Rationale(example_id=f"ex-{i}", teacher=teacher, prompt_id=prompt, sample_index=sample,
                   rationale=text or f"rationale {i}/{sample}", teacher_answer="neutral",
                   teacher_correct=True, raw=f"raw {i}")


def test_create_manifest_and_roundtrip(tmp_path):
  cache = RationaleCache.create(str(tmp_path / "c"), source={"note": "unit test"})
  m = cache.manifest
  assert m["schema_version"] == SCHEMA_VERSION == 1
  assert m["source"] == {"note": "unit test"} and m["created"] and m["updated"]
  assert cache.write_examples([_ex(0), _ex(1, "test")]) == 2
  assert cache.write_rationales([_rat(0), _rat(0, 1), _rat(1)]) == 3
  assert cache.read_examples() == [_ex(0), _ex(1, "test")]
  assert cache.read_examples(split="test") == [_ex(1, "test")]
  assert sorted(cache.read_rationales(), key=lambda r: (r.example_id, r.sample_index)) == [
      _rat(0), _rat(0, 1), _rat(1)]
  assert cache.keys() == {("ex-0", "t", "p", 0), ("ex-0", "t", "p", 1), ("ex-1", "t", "p", 0)}
  assert cache.keys("examples") == {("ex-0",), ("ex-1",)}
  m = cache.manifest
  assert m["counts"]["examples"] == 2 and m["counts"]["rationales"] == 3
  assert m["teachers"] == ["t"] and m["prompt_ids"] == ["p"]
  assert m["counts"]["examples_by_task_split"] == {"esnli/train": 1, "esnli/test": 1}
  assert len(m["shards"]) == 2
  # Plain pyarrow / the declared column types.
  t = pq.read_table(cache.shard_files("rationales")[0])
  assert str(t.schema.field("sample_index").type) == "int32"
  assert str(t.schema.field("teacher_correct").type) == "bool"
  assert json.loads(pq.read_table(cache.shard_files("examples")[0]).column("inputs")[0].as_py()) == {
      "premise": "p0", "hypothesis": "h0"}
  # Reopen from disk.
  again = RationaleCache.open(str(tmp_path / "c"))
  assert again.read_examples() == cache.read_examples()


def test_keyed_no_duplicates_and_resumable(tmp_path):
  cache = RationaleCache.create(str(tmp_path / "c"))
  assert cache.write_rationales([_rat(i) for i in range(5)]) == 5
  # Re-running a builder fills only the gaps; duplicates inside one call count once.
  assert cache.write_rationales([_rat(i) for i in range(8)] + [_rat(7)]) == 3
  assert cache.write_rationales([_rat(i) for i in range(8)]) == 0
  # Another process / a fresh handle sees the same keys.
  fresh = RationaleCache(str(tmp_path / "c"))
  assert fresh.write_rationales([_rat(i, text="different text") for i in range(8)]) == 0
  assert len(fresh.read_rationales()) == 8
  assert cache.manifest["counts"]["rationales"] == 8
  assert len(cache.shard_files("rationales")) == 2  # no shard for a write that added nothing
  # A different teacher / prompt / sample index is a different key.
  assert cache.write_rationales([_rat(0, teacher="t2"), _rat(0, prompt="p2"), _rat(0, sample=5)]) == 3
  assert cache.write_examples([_ex(0)]) == 1 and cache.write_examples([_ex(0), _ex(1)]) == 1


def test_readers_dedupe_shards_keep_first(tmp_path):
  """Shards are the source of truth: a duplicate written behind the cache's back is ignored."""
  cache = RationaleCache.create(str(tmp_path / "c"))
  cache.write_rationales([_rat(0, text="first")])
  cache.write_rationales([_rat(1)])
  # Simulate a writer on a filesystem without working flock: copy the first shard under a later name.
  first = cache.shard_files("rationales")[0]
  dup = os.path.join(os.path.dirname(first), "part-99999999999999999999-x-1-deadbeef.parquet")
  table = pq.read_table(first)
  pq.write_table(table.set_column(table.schema.get_field_index("rationale"), "rationale",
                                  [["second"]]), dup)
  rats = cache.read_rationales()
  assert [r.rationale for r in rats if r.example_id == "ex-0"] == ["first"]
  assert cache.table().num_rows == 2
  # The manifest notices an unlisted shard on the next write and is rebuilt from the shards.
  cache.write_rationales([_rat(2)])
  assert cache.manifest["counts"]["rationales"] == 3
  cache.compact()
  assert len(cache.shard_files("rationales")) == 1 and cache.table().num_rows == 3
  assert cache.manifest["counts"]["rationales"] == 3


def test_atomic_writes_leave_no_temp_files(tmp_path, monkeypatch):
  cache = RationaleCache.create(str(tmp_path / "c"))
  cache.write_rationales([_rat(0)])

  def boom(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr("jaxdistill.data.rationale_cache.os.replace", boom)
  with pytest.raises(OSError, match="disk full"):
    cache.write_rationales([_rat(1)])
  monkeypatch.undo()
  for kind in ("rationales", "examples"):
    assert not [f for f in os.listdir(tmp_path / "c" / kind) if not f.startswith("part-")]
  assert len(cache.read_rationales()) == 1
  # The failed write is retried cleanly.
  fresh = RationaleCache(str(tmp_path / "c"))
  assert fresh.write_rationales([_rat(0), _rat(1)]) == 1


def test_scores_and_embeddings(tmp_path):
  cache = RationaleCache.create(str(tmp_path / "c"))
  row = dict(example_id="ex-0", teacher="t", prompt_id="p", sample_index=0, rationale="r",
             teacher_answer="neutral", teacher_correct=True, raw="", rd=1, embedding=[0.5, 0.25])
  assert cache.write_rationales([row]) == 1
  assert cache.write_rationales([_rat(1)]) == 1  # a shard without the optional columns
  t = cache.table()
  import pyarrow as pa
  assert t.schema.field("embedding").type.equals(pa.list_(pa.float32()), check_metadata=False)
  assert t.schema.field("embedding").type.value_type == pa.float32()
  assert str(t.schema.field("rd").type) == "double"
  rows = {r["example_id"]: r for r in cache.rows()}
  assert rows["ex-0"]["rd"] == 1.0 and rows["ex-0"]["embedding"] == [0.5, 0.25]
  assert rows["ex-1"]["rd"] is None
  cache.compact()
  datasets = pytest.importorskip("datasets")
  ds = datasets.load_dataset("parquet", data_files=cache.data_files(), split="train",
                             cache_dir=str(tmp_path / "hf"))
  assert ds.num_rows == 2 and set(ds.column_names) >= {"example_id", "rd", "embedding"}


def _writer(path, start, stop, barrier):
  cache = RationaleCache(path)
  barrier.wait()
  added = 0
  for lo in range(start, stop, 10):  # many small writes, interleaving with the other process
    added += cache.write_rationales([_rat(i) for i in range(lo, min(lo + 10, stop))])
    added += cache.write_examples([_ex(i) for i in range(lo, min(lo + 10, stop))])
  return added


def _writer_entry(path, start, stop, barrier, queue):
  queue.put(_writer(path, start, stop, barrier))


def test_two_processes_write_concurrently(tmp_path):
  path = str(tmp_path / "c")
  RationaleCache.create(path)
  ctx = multiprocessing.get_context("spawn")
  barrier, queue = ctx.Barrier(2), ctx.Queue()
  # Overlapping key ranges: [0, 120) and [60, 180).
  procs = [ctx.Process(target=_writer_entry, args=(path, lo, lo + 120, barrier, queue)) for lo in (0, 60)]
  for p in procs:
    p.start()
  for p in procs:
    p.join(120)
    assert p.exitcode == 0
  added = queue.get(timeout=5) + queue.get(timeout=5)
  cache = RationaleCache.open(path)
  assert added == 2 * 180  # each key written exactly once, by one of the two
  # No duplicates even in the raw shards (not only after the reader's dedupe).
  raw = [k for f in cache.shard_files() for k in pq.read_table(f).column("example_id").to_pylist()]
  assert len(raw) == len(set(raw)) == 180
  assert cache.manifest["counts"] == {
      "examples": 180, "rationales": 180, "examples_by_task_split": {"esnli/train": 180},
      "rationales_by_teacher_prompt": {"t/p": 180}}
  assert len(cache.manifest["shards"]) == len(cache.shard_files()) + len(cache.shard_files("examples"))


# --- integrity: verify(), readers refuse lost data, repair ----------------------------------------

def _three_shards(path):
  """A cache with 6 examples and 3 rationale shards of 2 rows each (6 rationales)."""
  cache = RationaleCache.create(path, source={"kind": "unit", "note": "provenance"})
  cache.write_examples([_ex(i) for i in range(6)])
  for lo in (0, 2, 4):
    cache.write_rationales([_rat(lo), _rat(lo + 1)])
  return cache


def test_verify_is_empty_on_a_consistent_cache(tmp_path):
  cache = _three_shards(str(tmp_path / "c"))
  assert cache.verify() == []
  cache.compact()
  assert cache.verify() == [] and RationaleCache.open(cache.path).verify() == []


def test_missing_shard_is_refused_by_readers_and_a_rewrite_rebuilds_the_manifest(tmp_path):
  cache = _three_shards(str(tmp_path / "c"))
  lost = cache.shard_files("rationales")[1]
  os.remove(lost)
  problems = cache.verify()
  name = "rationales/" + os.path.basename(lost)
  assert any(name in p and "missing" in p for p in problems), problems
  assert any("6 rationales" in p and "4" in p for p in problems), problems
  with pytest.raises(DataError, match=r"verify --out=.* --repair") as e:
    RationaleCache.open(cache.path)
  assert cache.path in str(e.value) and name in str(e.value)
  # Re-importing writes the lost rows again; the manifest must then match the shards (it used to
  # append to the stale counts: 8 rationales for 6 on disk).
  again = RationaleCache(cache.path)
  assert again.write_rationales([_rat(i) for i in range(6)]) == 2
  assert again.manifest["counts"]["rationales"] == 6
  assert again.verify() == []
  assert again.manifest["source"] == {"kind": "unit", "note": "provenance"}
  assert len(RationaleCache.open(cache.path).read_rationales()) == 6


def test_row_count_mismatch_is_refused(tmp_path):
  cache = _three_shards(str(tmp_path / "c"))
  shard = cache.shard_files("rationales")[0]
  pq.write_table(pq.read_table(shard).slice(0, 1), shard)  # replaced behind the cache's back
  problems = cache.verify()
  assert any(os.path.basename(shard) in p and "1 rows" in p and "lists 2" in p for p in problems), problems
  with pytest.raises(DataError, match="1 rows"):
    RationaleCache.open(cache.path)


def test_unlisted_shard_is_read_with_a_warning(tmp_path, caplog):
  cache = _three_shards(str(tmp_path / "c"))
  # A writer that died between writing its shard and updating the manifest.
  extra = os.path.join(cache.path, "rationales", "part-99999999999999999999-x-1-deadbeef.parquet")
  pq.write_table(pq.read_table(cache.shard_files("rationales")[0]).slice(0, 1).set_column(
      0, "example_id", [["ex-9"]]), extra)
  problems = cache.verify()
  assert len(problems) == 1 and os.path.basename(extra) in problems[0] and "not listed" in problems[0]
  with caplog.at_level("WARNING"):
    opened = RationaleCache.open(cache.path)
  assert "not listed" in caplog.text
  assert {r.example_id for r in opened.read_rationales()} == {f"ex-{i}" for i in (0, 1, 2, 3, 4, 5, 9)}
  opened.rebuild_manifest()
  assert opened.verify() == [] and opened.manifest["counts"]["rationales"] == 7


@pytest.mark.parametrize("text", ["{not json", '{"schema_version": 1, "shards": [', "[1, 2]", "",
                                  b"\xff\xfe{}"])
def test_unreadable_manifest_names_the_file_and_repair_rebuilds_it(tmp_path, text):
  cache = _three_shards(str(tmp_path / "c"))
  manifest = os.path.join(cache.path, "manifest.json")
  with open(manifest, "wb") as f:
    f.write(text if isinstance(text, bytes) else text.encode())
  with pytest.raises(DataError, match=r"manifest\.json.*verify --out=.* --repair"):
    RationaleCache.open(cache.path)
  with pytest.raises(DataError, match=r"manifest\.json"):
    cache.manifest  # pylint: disable=pointless-statement
  assert any("manifest.json" in p for p in cache.verify())
  cache.rebuild_manifest()
  m = RationaleCache.open(cache.path).manifest
  assert m["counts"]["examples"] == 6 and m["counts"]["rationales"] == 6 and cache.verify() == []
  assert [f for f in os.listdir(cache.path) if f.startswith("manifest.json.unreadable")]  # kept for a look


def test_shards_without_a_manifest(tmp_path):
  cache = _three_shards(str(tmp_path / "c"))
  os.remove(os.path.join(cache.path, "manifest.json"))
  with pytest.raises(DataError, match=r"no manifest\.json.*--repair"):
    RationaleCache.open(cache.path)
  assert any("manifest.json" in p and "missing" in p for p in cache.verify())
  # A writer (e.g. a re-run import) builds the manifest from the shards, not an empty one.
  assert RationaleCache.create(cache.path).manifest["counts"]["rationales"] == 6
  assert cache.verify() == []


def test_rebuild_manifest_keeps_provenance(tmp_path):
  cache = _three_shards(str(tmp_path / "c"))
  assert cache.rebuild_manifest()["source"] == {"kind": "unit", "note": "provenance"}
  assert cache.manifest["source"] == {"kind": "unit", "note": "provenance"}


def _dead_pid():
  p = subprocess.Popen([sys.executable, "-c", "pass"])
  p.wait()
  return p.pid


def test_a_writer_removes_temp_files_of_dead_writers(tmp_path):
  """Temp files of a killed writer go; those of a live writer, or of another host's recent one, stay."""
  cache = _three_shards(str(tmp_path / "c"))
  host = files.host()
  dead, alive = _dead_pid(), os.getpid()
  names = {
      "dead": os.path.join("rationales", f".tmp-part-{time.time_ns():020d}-{host}-{dead}-0123abcd.parquet.tmp"),
      "dead_manifest": f".manifest.json.{host}-{dead}-0123abcd.tmp",
      "alive": os.path.join("examples", f".tmp-part-{time.time_ns():020d}-{host}-{alive}-0123abcd.parquet.tmp"),
      "other_host": os.path.join("rationales", f".tmp-part-{time.time_ns():020d}-elsewhere-1-0123abcd.parquet.tmp"),
      "other_host_old": os.path.join("rationales", f".tmp-part-{time.time_ns():020d}-elsewhere-2-0123abcd.parquet.tmp"),
      "old_format": ".manifest.json.0123456789abcdef0123456789abcdef.tmp",
  }
  for name in names.values():
    with open(os.path.join(cache.path, name), "wb") as f:
      f.write(b"half written")
  day_ago = time.time() - 24 * 3600
  for key in ("other_host_old", "old_format"):
    os.utime(os.path.join(cache.path, names[key]), (day_ago, day_ago))
  assert RationaleCache(cache.path).write_rationales([_rat(6)]) == 1
  left = {k for k, name in names.items() if os.path.exists(os.path.join(cache.path, name))}
  assert left == {"alive", "other_host"}
  assert cache.verify() == []


def _compactor(path, rounds):
  cache = RationaleCache(path)
  for i in range(rounds):
    cache.write_rationales([_rat(1000 + i)])
    cache.compact()


def test_readers_never_see_a_compaction_as_lost_data(tmp_path):
  path = str(tmp_path / "c")
  _three_shards(path)
  ctx = multiprocessing.get_context("spawn")
  proc = ctx.Process(target=_compactor, args=(path, 25))
  proc.start()
  opened = 0
  while proc.is_alive() or opened == 0:
    assert RationaleCache.open(path).verify() == []  # verify() reads under the lock: never a half state
    opened += 1
  proc.join(60)
  assert proc.exitcode == 0 and opened > 1
  assert RationaleCache.open(path).verify() == []


def test_replace_with_swaps_in_a_cache_built_elsewhere(tmp_path, monkeypatch):
  """The selection's write: out_dir keeps its other files and ends holding exactly the built cache;
  a replace that dies midway leaves no cache there (readers refuse it), and the next one completes."""
  out = tmp_path / "out"
  old = RationaleCache.create(str(out), source={"kind": "old"})
  old.write_examples([_ex(0), _ex(1)])
  old.write_rationales([_rat(0), _rat(1)])
  (out / "selection.json").write_text("{}")

  def build(name, rows):
    built = RationaleCache.create(str(out / name), source={"kind": name})
    built.write_examples([_ex(1), _ex(2)])
    built.write_rationales(rows)
    return built

  new = RationaleCache(str(out)).replace_with(build(".built-1", [_rat(2, 0), _rat(2, 1)]))
  assert new.keys() == {("ex-2", "t", "p", 0), ("ex-2", "t", "p", 1)}
  assert new.keys("examples") == {("ex-1",), ("ex-2",)}
  assert new.manifest["source"] == {"kind": ".built-1"} and new.verify() == []
  assert sorted(os.listdir(out)) == [".lock", "examples", "manifest.json", "rationales", "selection.json"]

  calls = []
  real = files.replace_dir

  def dies_on_the_second(src, dst):
    calls.append(dst)
    if len(calls) == 2:
      raise OSError("killed")
    real(src, dst)

  monkeypatch.setattr(files, "replace_dir", dies_on_the_second)
  with pytest.raises(OSError, match="killed"):
    RationaleCache(str(out)).replace_with(build(".built-2", [_rat(1)]))
  monkeypatch.undo()
  with pytest.raises(DataError, match="no manifest.json"):
    RationaleCache.open(str(out))
  again = RationaleCache(str(out)).replace_with(build(".built-3", [_rat(1)]))
  assert again.keys() == {("ex-1", "t", "p", 0)} and again.verify() == []
