"""A run refuses at start, in one line naming the key, file or cause, rather than finishing with numbers
that mean something else: config values that cannot work, a workdir made from another config, lost
rationales, empty evaluation splits. Each test first builds the situation the issue reproduced."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from jaxdistill import config as config_lib
from jaxdistill import train
from jaxdistill import workdir as workdir_lib
from jaxdistill.data import formats, sources
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.data.examples import Example, Rationale
from tests import train_utils as tu


def _config(**overrides):
  return tu.tiny_config(**overrides)


# --------------------------------------------------------------------------- config values

@pytest.mark.parametrize("key,value,message", [
    ("eval.every", 0, "config.eval.every=0: must be an integer >= 1"),
    ("train.log_every", 0, "config.train.log_every=0: must be an integer >= 1"),
    ("train.checkpoint_every", -5, "config.train.checkpoint_every=-5"),
    ("data.on_error", "ignore", "config.data.on_error='ignore': expected one of raise, skip"),
    ("objective.name", "cott", "config.objective.name='cott'"),
    ("objective.alpha", 1.5, "config.objective.alpha=1.5: must be between 0 and 1"),
    ("train.decay", "exp", "config.train.decay='exp'"),
])
def test_config_values_that_cannot_work_are_refused_naming_the_key(key, value, message):
  config = _config(**{key: value})
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.validate(config)


def test_default_settings_validate():
  import sys
  sys.path.insert(0, tu.REPO)
  from configs import baseline, cot, human, hybrid, morsd, pst, traces  # pylint: disable=g-import-not-at-top
  for module in (baseline, cot, human, hybrid, morsd, pst, traces):
    config_lib.validate(module.get_config())


@dataclasses.dataclass
class _FakeMesh:
  shape: dict


def test_batch_not_divisible_by_the_data_axes_is_refused_before_compiling():
  mesh = _FakeMesh({"data": 2, "fsdp": 2, "tensor": 2})
  with pytest.raises(config_lib.ConfigError, match=r"config.train.batch_size=6 is not divisible by the mesh's "
                     r"data-parallel axes \(data=2 x fsdp=2 = 4 ways\)"):
    config_lib.validate_mesh(_config(train__batch_size=6), mesh, process_count=1)
  with pytest.raises(config_lib.ConfigError, match="config.eval.batch_size=10"):
    config_lib.validate_mesh(_config(train__batch_size=8, eval__batch_size=10), mesh, process_count=1)
  config_lib.validate_mesh(_config(train__batch_size=8, eval__batch_size=16), mesh, process_count=1)


# --------------------------------------------------------------------------- workdir fingerprint

def _demo():
  return sources.load_dataset(_config().data)


def test_fingerprint_names_what_differs_and_ignores_what_does_not_matter(tmp_path):
  dataset = _demo()
  first = workdir_lib.fingerprint(_config(), dataset)
  assert workdir_lib.check(str(tmp_path), first, allow_change=False, write=True) == []
  # Log period, eval batch size, checkpoint period, the mesh and the sharding rules do not change results.
  same = workdir_lib.fingerprint(_config(train__log_every=7, eval__batch_size=4, train__checkpoint_every=3,
                                         mesh__data=1), dataset)
  assert workdir_lib.check(str(tmp_path), same, allow_change=False, write=True) == []
  resharded = _config()
  resharded.logical_axis_rules = [*resharded.logical_axis_rules, ("new_axis", "tensor")]
  assert workdir_lib.check(str(tmp_path), workdir_lib.fingerprint(resharded, dataset), allow_change=False,
                           write=True) == []
  # ... also against a fingerprint an older version wrote while such a key was still recorded.
  recorded = json.load(open(tmp_path / workdir_lib.FINGERPRINT))
  recorded["fingerprint"]["logical_axis_rules"] = [["batch", "data"]]
  (tmp_path / workdir_lib.FINGERPRINT).write_text(json.dumps(recorded))
  assert workdir_lib.check(str(tmp_path), same, allow_change=False, write=True) == []

  changed = workdir_lib.fingerprint(_config(model__vocab_size=300, model__preset="t5-mini"), dataset)
  with pytest.raises(config_lib.ConfigError) as err:
    workdir_lib.check(str(tmp_path), changed, allow_change=False, write=True)
  message = str(err.value)
  assert "\n" not in message
  assert "model.preset ('t5-tiny' -> 't5-mini')" in message and "model.vocab_size (256 -> 300)" in message
  assert "--config.train.allow_config_change=True" in message

  # The same config on other data: the content digest differs.
  other = dataclasses.replace(dataset, splits=dict(dataset.splits, train=dataset.splits["train"][1:]))
  with pytest.raises(config_lib.ConfigError, match=r"data.content_sha256"):
    workdir_lib.check(str(tmp_path), workdir_lib.fingerprint(_config(), other), allow_change=False, write=True)

  # allow_config_change continues and records the change.
  assert workdir_lib.check(str(tmp_path), changed, allow_change=True, write=True)
  recorded = json.load(open(tmp_path / workdir_lib.FINGERPRINT))
  assert recorded["fingerprint"]["model.preset"] == "t5-mini"
  assert any("model.vocab_size (256 -> 300)" in d for d in recorded["changes"][0])


# --------------------------------------------------------------------------- lost rationales

def _ex(i: int, split: str = "train", explained: bool = True) -> Example:
  return Example(id=f"ex-{i}", task="esnli", inputs={"premise": "p", "hypothesis": "h"}, label="neutral",
                 human_explanations=("because",) if explained else (), split=split)


def _rat(ex_id: str, k: int = 0) -> Rationale:
  return Rationale(example_id=ex_id, teacher="t", prompt_id="p", sample_index=k, rationale="r",
                   teacher_answer="neutral", teacher_correct=True)


def test_rationale_coverage_per_kind():
  examples = [_ex(i, explained=i % 2 == 0) for i in range(4)]
  rationales = {"ex-0": [_rat("ex-0")], "ex-1": [_rat("ex-1")], "ex-2": [_rat("ex-2")]}
  hybrid = _config().objective
  assert formats.rationale_coverage(examples, rationales, hybrid) == {"human": 0.5, "teacher": 0.75}
  hybrid.teacher_weight = 0.0
  assert formats.rationale_coverage(examples, rationales, hybrid) == {"human": 0.5}
  assert formats.rationale_coverage(examples, rationales, _config(objective__name="baseline").objective) == {}


def _dataset(rationales) -> sources.Dataset:
  return sources.Dataset(task="esnli", splits={"train": [_ex(i) for i in range(10)], "dev": [_ex(10, "dev")]},
                         rationales=rationales, labels=("entailment", "neutral", "contradiction"))


def test_cot_on_another_datasets_cache_is_refused_as_an_id_mismatch(tmp_path):
  cache = RationaleCache.create(str(tmp_path / "cache"))
  cache.write_rationales([_rat(f"other-{i}") for i in range(20)])
  config = _config(objective__name="cot", data__cache_dir=str(tmp_path / "cache"))
  with pytest.raises(config_lib.ConfigError) as err:
    train.check_rationales(config, _dataset({}))
  assert "0.0% of the 10 training examples" in str(err.value)
  assert "cache/example id mismatch" in str(err.value) and "'other-0'" in str(err.value)


def test_cot_on_an_empty_cache_is_refused(tmp_path):
  RationaleCache.create(str(tmp_path / "cache"))
  config = _config(objective__name="cot", data__cache_dir=str(tmp_path / "cache"))
  with pytest.raises(config_lib.ConfigError, match="is an empty cache"):
    train.check_rationales(config, _dataset({}))


def test_rationales_for_too_few_examples_are_refused_and_enough_are_reported(tmp_path):
  config = _config(objective__name="cot")
  few = {f"ex-{i}": [_rat(f"ex-{i}")] for i in range(4)}
  with pytest.raises(config_lib.ConfigError, match=r"only 40.0% of the 10 training examples"):
    train.check_rationales(config, _dataset(few))
  config.objective.min_rationale_fraction = 0.3
  assert train.check_rationales(config, _dataset(few)) == {"teacher": 0.4}
  # A label-only run needs none.
  assert train.check_rationales(_config(objective__name="baseline"), _dataset({})) == {}


def test_cot_refuses_a_cache_left_by_an_import_killed_before_its_rationales(tmp_path):
  """The examples shard was written, the rationales shard never was: the run reads no rationale."""
  cache = RationaleCache.create(str(tmp_path / "cache"))
  examples = [_ex(i) for i in range(10)] + [_ex(10, "dev")]
  cache.write_examples([dataclasses.replace(ex, split="valid") for ex in examples])
  config = _config(objective__name="cot", data__source="dss", data__task="esnli",
                   data__cache_dir=str(tmp_path / "cache"), data__dev_size=1)
  dataset = sources.load_dataset(config.data)
  with pytest.raises(config_lib.ConfigError, match="is an empty cache"):
    train.check_rationales(config, dataset)


# --------------------------------------------------------------------------- evaluation splits

def _jsonl_dir(tmp_path, files: dict) -> str:
  path = tmp_path / "jsonl"
  path.mkdir()
  for name, rows in files.items():
    with open(path / name, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
  return str(path)


def _row(i: int) -> dict:
  return {"id": f"r{i}", "premise": "a cat sleeps", "hypothesis": "an animal sleeps", "label": "entailment"}


def test_an_empty_dev_split_is_refused(tmp_path):
  path = _jsonl_dir(tmp_path, {"train.jsonl": [_row(i) for i in range(8)], "dev.jsonl": []})
  config = _config(objective__name="baseline", data__source="jsonl", data__path=path, data__task="esnli")
  with pytest.raises(Exception, match="dev"):  # the source names the file; check_splits is the backstop
    train.load_dataset(config)


def test_check_splits_refuses_empty_splits_and_max_eval_examples_zero():
  config = _config(objective__name="baseline")
  full = _dataset({})
  with pytest.raises(config_lib.ConfigError, match="the dev split has no examples"):
    train.check_splits(config, dataclasses.replace(full, splits=dict(full.splits, dev=[])))
  with pytest.raises(config_lib.ConfigError, match="the test split has no examples"):
    train.check_splits(config, dataclasses.replace(full, splits=dict(full.splits, test=[])))
  with pytest.raises(config_lib.ConfigError, match="config.data.max_eval_examples=0"):
    train.check_splits(_config(data__max_eval_examples=0), full)
  train.check_splits(config, full)  # no test split is allowed: metrics.json says null


def test_a_run_without_a_test_split_reports_null_not_zero(tmp_path):
  path = _jsonl_dir(tmp_path, {"train.jsonl": [_row(i) for i in range(32)],
                               "dev.jsonl": [_row(100 + i) for i in range(8)]})
  config = _config(objective__name="baseline", data__source="jsonl", data__path=path, data__task="esnli",
                   train__steps=2, train__checkpoint_every=2, eval__every=2, model__tokenizer="byte")
  workdir = str(tmp_path / "run")
  result = train.run(config, workdir)
  assert result["test_accuracy"] is None and result["test_rationale_perplexity"] is None
  metrics = json.load(open(os.path.join(workdir, "metrics.json")))
  assert metrics["test_accuracy"] is None and "test_examples" not in metrics["data"]
  assert metrics["dev_accuracy"] is not None
