"""gs:// workdirs and data paths: every read, listing and write goes through etils.epath (jaxdistill/files.py).

The filesystem these tests use: epath sends a gs:// path to its fsspec backend when EPATH_USE_TF=false
(with TensorFlow installed it would send it to tf.io.gfile, whose GCS client has no endpoint to point at
a local server, so it cannot run offline). `MemoryBuckets`, registered as fsspec's gs/gcs implementation,
is an in-memory object store that answers for gs:// the way gcsfs does ("bucket/key" names). A gs://
path here therefore goes epath -> fsspec -> memory, and code that bypassed epath (open(), os.path, glob,
pyarrow's or safetensors' own file access) would fail or write a local "gs:" directory, which the
tests check did not happen.

Not covered on gs:// here: Orbax checkpoints (tensorstore's own GCS driver) and CLU's TensorBoard
summaries (tf.io.gfile) need a GCS server; a whole run therefore keeps its workdir local and reads its
data from gs://, while every other workdir file (fingerprint, tokenizer, HF export, rationale cache) is
written and read back on gs:// by the tests below.
"""

import json
import os

import fsspec
import numpy as np
import pytest
from etils import epath
from etils.epath import gpath
from flax import nnx
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.utils import stringify_path

from jaxdistill import files, workdir as workdir_lib
from jaxdistill.data import sources
from jaxdistill.data import tokenizer as tokenizer_lib
from jaxdistill.data.examples import Rationale
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.errors import ConfigError
from jaxdistill.models import families, hf, t5
from tests import train_utils as tu


class MemoryBuckets(MemoryFileSystem):
  """An in-memory object store for gs:// paths (its own store, not fsspec's memory:// one)."""
  protocol = ("gs", "gcs")
  root_marker = ""
  store: dict = {}
  pseudo_dirs: list = [""]

  @classmethod
  def _strip_protocol(cls, path):
    if isinstance(path, list):
      return [cls._strip_protocol(p) for p in path]
    path = stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      path = path.removeprefix(prefix)
    return path.rstrip("/")


@pytest.fixture
def gs(monkeypatch, tmp_path):
  """gs:// served from memory for this test; the working directory is an empty temp dir, checked
  afterwards for anything a gs:// path wrote locally. (The registration stays for the process, inert:
  without EPATH_USE_TF=false epath sends gs:// to TensorFlow, not fsspec.)"""
  monkeypatch.setenv("EPATH_USE_TF", "false")
  # epath reads EPATH_USE_TF once per process (a cached check that any earlier path in this worker filled):
  # read it again now, and again after the test, when the variable is restored.
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  for name in MemoryBuckets.protocol:
    fsspec.register_implementation(name, MemoryBuckets, clobber=True)
  MemoryBuckets.store.clear()
  MemoryBuckets.pseudo_dirs[:] = [""]
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield MemoryBuckets.store
  gpath._is_tf_installed.cache_clear()  # pylint: disable=protected-access
  assert not os.listdir(cwd), f"gs:// paths reached the local disk: {os.listdir(cwd)}"


def _objects(store, prefix: str) -> dict[str, bytes]:
  """name (relative to gs://PREFIX/) -> bytes of the objects under it."""
  prefix = prefix.removeprefix("gs://").rstrip("/") + "/"
  return {k[len(prefix):]: bytes(v.getbuffer()) for k, v in store.items() if k.startswith(prefix)}


def test_gs_paths_go_to_the_object_store(gs):
  files.atomic_write_text("gs://bucket/run/metrics.json", '{"a": 1}')
  assert _objects(gs, "gs://bucket/run") == {"metrics.json": b'{"a": 1}'}
  assert files.is_remote("gs://bucket/run") and not files.is_remote("runs/x")
  assert files.absolute("gs://bucket/run") == "gs://bucket/run"
  assert files.absolute("runs/x") == os.path.join(os.getcwd(), "runs", "x")


def test_atomic_writes_on_an_object_store_keep_the_old_object_when_a_write_fails(gs):
  path = "gs://bucket/run/t.npz"
  with files.atomic_open(path) as f:
    np.savez(f, x=np.arange(3))
  with pytest.raises(RuntimeError):
    with files.atomic_open(path) as f:
      f.write(b"half")
      raise RuntimeError("killed")
  assert list(_objects(gs, "gs://bucket/run")) == ["t.npz"]  # no temp object left behind
  with epath.Path(path).open("rb") as f:
    assert np.load(f)["x"].tolist() == [0, 1, 2]


def test_atomic_dir_on_an_object_store_replaces_the_directory(gs):
  path = "gs://bucket/run/tokenizer"
  with files.atomic_dir(path) as tmp:
    assert not files.is_remote(tmp)  # local, for libraries that write only local files
    with open(os.path.join(tmp, "a.txt"), "w") as f:
      f.write("1")
  assert _objects(gs, path) == {"a.txt": b"1"}
  with pytest.raises(RuntimeError):
    with files.atomic_dir(path) as tmp:
      with open(os.path.join(tmp, "b.txt"), "w") as f:
        f.write("half")
      raise RuntimeError("failed midway")
  assert _objects(gs, path) == {"a.txt": b"1"}
  with files.atomic_dir(path) as tmp:
    os.makedirs(os.path.join(tmp, "sub"))
    with open(os.path.join(tmp, "sub", "b.txt"), "w") as f:
      f.write("2")
  assert _objects(gs, path) == {"sub/b.txt": b"2"}  # replaced, not merged
  assert sorted(p.name for p in epath.Path("gs://bucket/run").iterdir()) == ["tokenizer"]  # no .tmp / .old


def _rationale(ex_id: str, k: int) -> Rationale:
  return Rationale(example_id=ex_id, teacher="t", prompt_id="p", sample_index=k, rationale=f"because {ex_id} {k}",
                   teacher_answer="yes", teacher_correct=k == 0)


def test_rationale_cache_on_an_object_store(gs):
  path = "gs://bucket/caches/demo"
  cache = RationaleCache.create(path, source={"kind": "test"})
  assert cache.write_rationales([_rationale("a", 0), _rationale("b", 0)]) == 2
  assert cache.write_rationales([_rationale("a", 0), _rationale("a", 1)]) == 1  # the known key is not added again
  reopened = RationaleCache.open(path)
  assert reopened.path == path and reopened.verify() == []
  assert sorted((r.example_id, r.sample_index) for r in reopened.read_rationales()) == [("a", 0), ("a", 1), ("b", 0)]
  shards = reopened.shard_files()
  assert len(shards) == 2 and all(f.startswith(path + "/rationales/part-") for f in shards)
  reopened.compact()
  assert len(reopened.shard_files()) == 1 and RationaleCache.open(path).verify() == []
  built = RationaleCache.create(f"{path}/.built")
  built.write_rationales([_rationale("c", 0)])
  replaced = reopened.replace_with(built)
  assert [r.example_id for r in replaced.read_rationales()] == ["c"]
  assert not epath.Path(f"{path}/.built").exists()


def test_workdir_fingerprint_on_an_object_store(gs):
  workdir = "gs://bucket/run"
  assert workdir_lib.check(workdir, {"model.preset": "t5-tiny"}, allow_change=False, write=True) == []
  recorded = json.loads(_objects(gs, workdir)[workdir_lib.FINGERPRINT])
  assert recorded["fingerprint"] == {"model.preset": "t5-tiny"}
  with pytest.raises(ConfigError, match=r"model\.preset \('t5-tiny' -> 't5-mini'\)"):
    workdir_lib.check(workdir, {"model.preset": "t5-mini"}, allow_change=False, write=True)


def test_tokenizer_and_hf_export_round_trip_on_an_object_store(gs):
  texts = [f"a premise about cat number {i} and a hypothesis" for i in range(50)]
  tok = tokenizer_lib.load_tokenizer("bpe", texts, save_dir="gs://bucket/run/tokenizer", vocab_size=300)
  assert tokenizer_lib.is_saved("gs://bucket/run/tokenizer")
  assert tokenizer_lib.saved_kind("gs://bucket/run/tokenizer") == "bpe"
  again = tokenizer_lib.load_tokenizer("bpe", save_dir="gs://bucket/run/tokenizer")  # loaded, not trained
  assert again.encode(texts[3]) == tok.encode(texts[3])

  model = t5.build(t5.get_config("t5-tiny", vocab_size=300), nnx.Rngs(0))
  hf.save(model, "gs://bucket/run/hf", tokenizer=tok)
  assert {hf.CONFIG, hf.WEIGHTS, "tokenizer.json"} <= set(_objects(gs, "gs://bucket/run/hf"))
  loaded = families.load("gs://bucket/run/hf")  # safetensors read as bytes through epath
  want, got = hf.state_dict(model), hf.state_dict(loaded)
  assert sorted(want) == sorted(got)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  exported_tok = tokenizer_lib.load_tokenizer("gs://bucket/run/hf")  # transformers reads a local copy
  assert exported_tok.encode(texts[7]) == tok.encode(texts[7])


# --------------------------------------------------------------------------- a whole run


def _write_jsonl_data(dataset, directory: str) -> None:
  """The demo dataset as jsonl-source files (examples with their human explanations and rationales)."""
  for split, examples in dataset.splits.items():
    lines = []
    for ex in examples:
      rats = [{"rationale": r.rationale, "teacher_answer": r.teacher_answer, "teacher": r.teacher,
               "prompt_id": r.prompt_id, "sample_index": r.sample_index, "teacher_correct": r.teacher_correct}
              for r in dataset.rationales.get(ex.id, ())]
      lines.append(json.dumps({"id": ex.id, "inputs": dict(ex.inputs), "label": ex.label,
                               "human_explanations": list(ex.human_explanations), "rationales": rats}))
    files.atomic_write_text(os.path.join(directory, f"{split}.jsonl"), "\n".join(lines) + "\n")


def _comparable(metrics: dict) -> dict:
  return {k: v for k, v in metrics.items() if k != "decode"}  # decode timings are wall-clock


@pytest.mark.slow  # three 12-step t5-tiny runs in this process (~75 s on 2 shared cores)
def test_a_run_reads_its_data_from_gs_like_a_local_copy_and_resumes(gs, tmp_path):
  """In this process, since the in-memory bucket lives in it only."""
  from jaxdistill import train  # pylint: disable=g-import-not-at-top
  steps = dict(train__steps=12, train__checkpoint_every=6, eval__every=6, train__keep_checkpoints=2)
  demo = sources.load_dataset(tu.tiny_config().data)
  local_data, gs_data = str(tmp_path / "data"), "gs://bucket/data/esnli"
  os.makedirs(local_data)
  for directory in (local_data, gs_data):
    _write_jsonl_data(demo, directory)

  def config(data_path: str):
    return tu.tiny_config(data__source="jsonl", data__task="esnli", data__path=data_path, **steps)

  local_run, gs_run = str(tmp_path / "local-data"), str(tmp_path / "gs-data")
  local = train.run(config(local_data), local_run)
  remote = train.run(config(gs_data), gs_run)
  assert _comparable(remote) == _comparable(local)
  read = lambda run, name: json.loads(epath.Path(run, name).read_text())
  assert read(gs_run, "metrics.json") == read(local_run, "metrics.json")
  local_fp, gs_fp = read(local_run, workdir_lib.FINGERPRINT), read(gs_run, workdir_lib.FINGERPRINT)
  assert workdir_lib.differences(local_fp["fingerprint"], gs_fp["fingerprint"]) == [
      f"data.path ({local_data!r} -> {gs_data!r})"]  # the same data, byte for byte (data.content_sha256)

  # Resume: the run loses its last checkpoint and everything finalize wrote, as if killed after step 6's
  # save; the same call resumes from step 6 and ends where the uninterrupted run did.
  final = epath.Path(gs_run) / "checkpoints" / str(remote["steps"])
  assert final.is_dir() and (epath.Path(gs_run) / "checkpoints" / "6").is_dir()
  final.rmtree()
  for name in ("metrics.json", train.PREDICTIONS):
    (epath.Path(gs_run) / name).unlink()
  files.remove_tree(os.path.join(gs_run, "hf"))
  resumed = train.run(config(gs_data), gs_run)
  assert _comparable(resumed) == _comparable(remote)
  assert (epath.Path(gs_run) / train.PREDICTIONS).read_text() == (epath.Path(local_run) / train.PREDICTIONS).read_text()
