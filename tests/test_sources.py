"""Generic sources: the dispatcher, JSONL, tfds e-SNLI (mock data) and HF e-SNLI (local files)."""

import json
import pathlib
import shutil

import pytest

from jaxdistill.data.examples import DataError
from jaxdistill.data.sources import Dataset, ErrorPolicy, load_dataset

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"


def test_dispatcher_rejects_unknown_source():
  with pytest.raises(ValueError, match="unknown source"):
    load_dataset({"source": "nope"})


def test_error_policy():
  with pytest.raises(ValueError, match=r"config\.data\.on_error='ignore': expected one of \['raise', 'skip'\]"):
    ErrorPolicy("ignore")


@pytest.mark.parametrize("source", ["demo", "babi", "jsonl", "dss"])
def test_unknown_on_error_is_refused_by_every_source(source):
  with pytest.raises(ValueError, match=r"config\.data\.on_error='ignore'"):
    load_dataset({"source": source, "on_error": "ignore", "path": str(FIXTURES / "jsonl")})


def test_check_utf8_file_names_the_line_across_chunks(tmp_path):
  from jaxdistill.data.sources import check_utf8_file
  f = tmp_path / "rows.json"
  f.write_bytes("caf\u00e9 \u2014 ok\n".encode() * 5 + b"bad \xe9 byte\n")
  for chunk_size in (1, 2, 3, 7, 1 << 20):  # characters split over chunks are fine
    with pytest.raises(DataError, match=r"rows\.json:6: invalid UTF-8 \(byte 0xe9\)"):
      check_utf8_file(str(f), chunk_size)
  f.write_bytes("caf\u00e9\nok\n".encode() + "\u2014".encode()[:2])  # ends inside a character
  with pytest.raises(DataError, match=r"rows\.json:3: invalid UTF-8"):
    check_utf8_file(str(f), 2)
  f.write_bytes("caf\u00e9 \u2014\n".encode() * 3)
  for chunk_size in (1, 2, 5):
    check_utf8_file(str(f), chunk_size)


# --- JSONL --------------------------------------------------------------------------------------

def _jsonl_cfg(path, **kw):
  return dict({"source": "jsonl", "path": str(path), "task": "esnli", "dev_size": 1,
               "max_train_examples": -1, "on_error": "raise"}, **kw)


def test_jsonl_fixture():
  d = load_dataset(_jsonl_cfg(FIXTURES / "jsonl"))
  assert isinstance(d, Dataset) and d.labels == ("entailment", "neutral", "contradiction")
  # No dev.jsonl: dev = the last dev_size lines of train.
  assert [e.id for e in d.splits["train"]] == ["j1", "esnli-train-1", "j3"]
  assert [e.id for e in d.splits["dev"]] == ["j4"] and [e.id for e in d.splits["test"]] == ["jt1"]
  j1, gen, j3 = d.splits["train"]
  assert j1.inputs == {"premise": "A cat sleeps on a mat.", "hypothesis": "An animal is resting."}
  assert j1.human_explanations == ("A sleeping cat is a resting animal.",) and j1.split == "train"
  # top-level fields
  assert j3.inputs == {"premise": "Two hikers chat on a ridge.", "hypothesis": "The hikers are cousins."}
  r1 = d.rationales["j1"]
  assert [(r.teacher, r.sample_index, r.teacher_answer, r.teacher_correct) for r in r1] == [
      ("jsonl", 0, "entailment", True), ("t2", 3, "neutral", False)]
  r2 = d.rationales["esnli-train-1"]
  assert r2[0].rationale == "Running in a park is not sitting at home." and not r2[0].teacher_correct
  assert "j3" not in d.rationales
  d = load_dataset(_jsonl_cfg(FIXTURES / "jsonl", max_train_examples=1))
  assert [e.id for e in d.splits["train"]] == ["j1"]


def test_jsonl_rationales_from_cache(tmp_path):
  from jaxdistill.data.rationale_cache import RationaleCache
  from jaxdistill.data.examples import Rationale
  cache = RationaleCache.create(str(tmp_path / "cache"))
  r = Rationale("j1", "local-teacher", "p1", 0, "from the cache", "entailment", True)
  cache.write_rationales([r, Rationale("other", "t", "p", 0, "x", "", False)])
  d = load_dataset(_jsonl_cfg(FIXTURES / "jsonl", cache_dir=str(tmp_path / "cache")))
  assert d.rationales == {"j1": [r]}


JSONL_BAD = [
    ('{"id": "x", "inputs": {"premise": "p", "hypothesis": "h"}, "label": "neutral"', "malformed_json",
     r"train\.jsonl:2: malformed JSON"),
    ('{"id": "x", "inputs": {"premise": "p", "hypothesis": "h"}}', "missing_field",
     r"train\.jsonl:2: missing field 'label'"),
    ('{"id": "x", "inputs": {"premise": "p", "hypothesis": "h"}, "label": "yes"}', "unknown_label",
     r"train\.jsonl:2: unknown label 'yes'"),
    ('{"id": "x", "inputs": {"premise": "p"}, "label": "neutral", "human_explanations": [" "]}',
     "empty_explanation", r"train\.jsonl:2: field 'human_explanations\[0\]' is empty"),
    ('{"id": "x", "inputs": "p", "label": "neutral"}', "bad_field", r"train\.jsonl:2: field 'inputs'"),
    ('{"id": "x", "inputs": {"premise": "p"}, "label": "neutral", "rationales": [{"teacher": "t"}]}',
     "missing_field", r"train\.jsonl:2: missing field 'rationales\[0\]\.rationale'"),
    ('{"id": "j1", "inputs": {"premise": "p"}, "label": "neutral"}', "duplicate_id",
     r"train\.jsonl:2: duplicate id 'j1'"),
]


@pytest.mark.parametrize("line,reason,pattern", JSONL_BAD,
                         ids=[b[1] + str(i) for i, b in enumerate(JSONL_BAD)])
def test_jsonl_bad_lines(tmp_path, line, reason, pattern):
  good = (FIXTURES / "jsonl" / "train.jsonl").read_text().splitlines()
  (tmp_path / "train.jsonl").write_text("\n".join([good[0], line] + good[1:]) + "\n")
  with pytest.raises(DataError, match=pattern):
    load_dataset(_jsonl_cfg(tmp_path))
  d = load_dataset(_jsonl_cfg(tmp_path, on_error="skip"))
  assert d.skipped == {reason: 1}
  assert len(d.splits["train"]) + len(d.splits["dev"]) == 4


def test_jsonl_missing_train(tmp_path):
  with pytest.raises(FileNotFoundError, match="train.jsonl"):
    load_dataset(_jsonl_cfg(tmp_path))


def test_jsonl_test_key_only_with_test_data(tmp_path):
  shutil.copy(FIXTURES / "jsonl" / "train.jsonl", tmp_path / "train.jsonl")
  assert sorted(load_dataset(_jsonl_cfg(tmp_path)).splits) == ["dev", "train"]
  from jaxdistill.data.sources import jsonl
  assert sorted(jsonl.load(_jsonl_cfg(tmp_path)).splits) == ["dev", "train"]


def test_jsonl_invalid_utf8(tmp_path):
  good = (FIXTURES / "jsonl" / "train.jsonl").read_bytes().splitlines()
  bad = b'{"id": "x", "inputs": {"premise": "caf\xe9", "hypothesis": "h"}, "label": "neutral"}'
  (tmp_path / "train.jsonl").write_bytes(b"\n".join([good[0], bad] + good[1:]) + b"\n")
  with pytest.raises(DataError, match=r"train\.jsonl:2: invalid UTF-8 \(byte 0xe9\)"):
    load_dataset(_jsonl_cfg(tmp_path))
  d = load_dataset(_jsonl_cfg(tmp_path, on_error="skip"))
  assert d.skipped == {"invalid_utf8": 1}
  assert [e.id for e in d.splits["train"] + d.splits["dev"]] == ["j1", "esnli-train-2", "j3", "j4"]


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_jsonl_split_path_that_is_not_a_file(tmp_path, split):
  shutil.copy(FIXTURES / "jsonl" / "train.jsonl", tmp_path / "train.jsonl")
  (tmp_path / f"{split}.jsonl").unlink(missing_ok=True)
  (tmp_path / f"{split}.jsonl").mkdir()
  with pytest.raises(DataError, match=rf"{split}\.jsonl: exists but is not a regular file"):
    load_dataset(_jsonl_cfg(tmp_path))


@pytest.mark.parametrize("split", ["dev", "test"])
def test_jsonl_split_file_without_examples(tmp_path, split):
  shutil.copy(FIXTURES / "jsonl" / "train.jsonl", tmp_path / "train.jsonl")
  (tmp_path / f"{split}.jsonl").write_text("\n\n")
  with pytest.raises(DataError, match=rf"{split}\.jsonl has no examples$"):
    load_dataset(_jsonl_cfg(tmp_path))
  (tmp_path / f"{split}.jsonl").write_text('{"label": "neutral"}\nnot json\n')
  with pytest.raises(DataError, match=rf"{split}\.jsonl has no examples \(2 records skipped: "
                                      r"malformed_json=1, missing_field=1\)"):
    load_dataset(_jsonl_cfg(tmp_path, on_error="skip"))


# --- tfds -----------------------------------------------------------------------------------------

def test_tfds_conversion_from_tensors():
  tf = pytest.importorskip("tensorflow")
  from jaxdistill.data.sources import tfds_esnli
  ds = tf.data.Dataset.from_tensor_slices({
      "premise": [b"A dog runs.", "Un caf\u00e9.".encode()], "hypothesis": [b"An animal moves.", b"A shop."],
      "label": tf.constant([0, 1], tf.int64), "explanation_1": [b"Dogs are animals.", b"Maybe."],
      "explanation_2": [b"", b""], "explanation_3": [b"", b""]})
  exs = tfds_esnli.examples_from_tf_dataset(ds, split="dev", source_split="validation",
                                            policy=ErrorPolicy())
  assert exs[0].inputs == {"premise": "A dog runs.", "hypothesis": "An animal moves."}
  assert exs[1].inputs["premise"] == "Un caf\u00e9." and exs[1].label == "neutral"
  assert exs[0].id == "esnli-validation-0" and exs[0].human_explanations == ("Dogs are animals.",)
  bad = tf.data.Dataset.from_tensor_slices({
      "premise": [b"p"], "hypothesis": [b"h"], "label": tf.constant([5], tf.int64),
      "explanation_1": [b"e"], "explanation_2": [b""], "explanation_3": [b""]})
  with pytest.raises(DataError, match=r"tfds esnli/test: record 1: unknown label 5"):
    tfds_esnli.examples_from_tf_dataset(bad, split="test", source_split="test", policy=ErrorPolicy())
  policy = ErrorPolicy("skip")
  assert tfds_esnli.examples_from_tf_dataset(bad, split="test", source_split="test", policy=policy) == []
  assert policy.as_dict() == {"unknown_label": 1}


def test_tfds_load_with_mock_data():
  """The real `tfds.load("esnli")` path, offline: tfds' mock_data fakes the records."""
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    d = load_dataset({"source": "tfds", "path": "", "task": "esnli", "dev_size": 2, "max_train_examples": 4,
                      "on_error": "raise"})
  assert d.task == "esnli" and d.labels == ("entailment", "neutral", "contradiction")
  assert [len(d.splits[s]) for s in ("train", "dev", "test")] == [4, 2, 6]
  assert d.splits["dev"][0].id == "esnli-validation-4" and d.splits["dev"][0].split == "dev"
  assert all(isinstance(v, str) for e in d.splits["test"] for v in e.inputs.values())
  assert all(e.label in d.labels for s in d.splits.values() for e in s)


# --- HF datasets ----------------------------------------------------------------------------------

@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
  datasets = pytest.importorskip("datasets")
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
  return datasets


def _hf_cfg(path, **kw):
  return dict({"source": "hf", "path": str(path), "task": "esnli", "dev_size": 1, "max_train_examples": -1,
               "on_error": "raise"}, **kw)


def test_hf_local_json(hf_cache):
  d = load_dataset(_hf_cfg(FIXTURES / "hf_esnli"))
  assert [len(d.splits[s]) for s in ("train", "dev", "test")] == [3, 1, 1]
  assert [e.label for e in d.splits["train"]] == ["entailment", "contradiction", "neutral"]
  assert d.splits["train"][2].human_explanations == ()  # train rows may lack explanations
  assert d.splits["dev"][0].id == "esnli-validation-1" and d.splits["dev"][0].split == "dev"
  d = load_dataset(_hf_cfg(FIXTURES / "hf_esnli", max_train_examples=2, dev_size=0))
  assert [len(d.splits[s]) for s in ("train", "dev", "test")] == [2, 2, 1]


def test_hf_without_test_split_has_no_test_key(hf_cache, tmp_path):
  for f in (FIXTURES / "hf_esnli").glob("*.jsonl"):
    if "test" not in f.name:
      shutil.copy(f, tmp_path / f.name)
  d = load_dataset(_hf_cfg(tmp_path))
  assert sorted(d.splits) == ["dev", "train"]


@pytest.mark.parametrize("source,fixture,name", [("hf", "hf_esnli", "esnli_train.jsonl"),
                                                  ("msmarco", "msmarco", "msmarco_train.jsonl"),
                                                  ("cotemp", "cotemp", "mix.json")])
def test_hf_local_files_with_invalid_utf8(hf_cache, tmp_path, source, fixture, name):
  """Files read by `datasets` are checked first: its own error names neither file nor line."""
  src = tmp_path / fixture
  shutil.copytree(FIXTURES / fixture, src)
  lines = (src / name).read_bytes().splitlines()
  lines[1] = lines[1].replace(b"e", b"\xe9", 1)
  (src / name).write_bytes(b"\n".join(lines) + b"\n")
  with pytest.raises(DataError, match=rf"{name}:2: invalid UTF-8 \(byte 0xe9\)"):
    load_dataset({"source": source, "path": str(src), "dev_size": 1, "test_size": 1, "on_error": "skip"})


def test_hf_local_parquet_and_bad_rows(hf_cache, tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  src = tmp_path / "pq"
  src.mkdir()
  for f in (FIXTURES / "hf_esnli").glob("*.jsonl"):
    rows = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
    split = f.stem.split("_")[1]
    pq.write_table(pa.Table.from_pylist(rows), src / f"{split}-00000.parquet")
  d = load_dataset(_hf_cfg(src))
  assert [len(d.splits[s]) for s in ("train", "dev", "test")] == [3, 1, 1]
  # Bad row: named by file and line (JSON lines) or row.
  bad = tmp_path / "bad"
  shutil.copytree(FIXTURES / "hf_esnli", bad)
  lines = (bad / "esnli_validation.jsonl").read_text().splitlines()
  rec = json.loads(lines[1])
  rec["explanation_1"] = ""
  lines[1] = json.dumps(rec)
  (bad / "esnli_validation.jsonl").write_text("\n".join(lines) + "\n")
  with pytest.raises(DataError, match=r"esnli_validation\.jsonl:2: field 'explanation_1' is empty"):
    load_dataset(_hf_cfg(bad))
  d = load_dataset(_hf_cfg(bad, on_error="skip"))
  assert d.skipped == {"empty_explanation": 1} and len(d.splits["dev"]) == 1
