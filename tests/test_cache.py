"""Rationale cache v1: keyed, no duplicates, resumable, atomic, concurrent writers."""

import json
import multiprocessing
import os

import pyarrow.parquet as pq
import pytest

from jaxdistill.data.cache import RationaleCache, SCHEMA_VERSION
from jaxdistill.data.examples import Example, Rationale


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

  monkeypatch.setattr("jaxdistill.data.cache.os.replace", boom)
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
