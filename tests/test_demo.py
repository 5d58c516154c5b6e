"""The embedded demo task: deterministic, balanced, labels that follow from the text,
honest about teacher errors."""

import collections

import ml_collections
import pytest

from jaxdistill.data.sources import demo, load_dataset


def _config(**demo_overrides):
  data = ml_collections.ConfigDict()
  data.source = "demo"
  data.seed = 0
  data.max_train_examples = -1
  data.demo = ml_collections.ConfigDict(dict(
      num_train=600, num_dev=90, num_test=90, teacher_error_rate=0.2, rationales_per_example=3))
  data.demo.update(demo_overrides)
  return data


@pytest.fixture(scope="module")
def dataset():
  return demo.load(_config())


def test_sizes_and_labels(dataset):
  assert dataset.task == "demo"
  assert dataset.labels == ("entailment", "neutral", "contradiction")
  assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 600, "dev": 90, "test": 90}
  for split, exs in dataset.splits.items():
    assert all(ex.split == split and ex.task == "demo" for ex in exs)
    assert all(ex.human_explanations and all(ex.human_explanations) for ex in exs)
  assert dataset.skipped == {}


def test_deterministic_and_seeded(dataset):
  again = demo.load(_config())
  assert again.splits == dataset.splits
  assert again.rationales == dataset.rationales
  other = demo.load(ml_collections.ConfigDict({**_config().to_dict(), "seed": 1}))
  assert other.splits["train"] != dataset.splits["train"]


def test_dispatch_through_load_dataset(dataset):
  assert load_dataset(_config()).splits == dataset.splits


def test_classes_balanced(dataset):
  for exs in dataset.splits.values():
    counts = collections.Counter(ex.label for ex in exs)
    assert set(counts) == set(dataset.labels)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_no_duplicate_pairs_across_splits(dataset):
  pairs = [(ex.inputs["premise"], ex.inputs["hypothesis"]) for exs in dataset.splits.values() for ex in exs]
  assert len(pairs) == len(set(pairs))


def _words(sentence):
  return sentence.lower().rstrip(".").split()


def _independent_label(premise, hypothesis):
  """Re-derives the label from the two sentences with the task's word relations."""
  p, h = _words(premise), _words(hypothesis)
  extra = set(h) - set(p)
  if extra & set(demo.COLORS) or extra & set(demo.PLACES) or any(
      a in p and b in h for a, bs in demo.EXCLUDES.items() for b in bs):
    return "contradiction"
  if extra & set(demo.SIZES) or len(h) > len(p):
    return "neutral"
  return "entailment"


def test_labels_follow_from_the_sentences(dataset):
  for ex in dataset.splits["train"]:
    assert _independent_label(ex.inputs["premise"], ex.inputs["hypothesis"]) == ex.label, ex


def test_teacher_error_rate_is_honoured():
  ds = demo.load(_config(num_train=3000, teacher_error_rate=0.3))
  rationales = [r for rs in ds.rationales.values() for r in rs]
  assert all(len(rs) == 3 for rs in ds.rationales.values())
  wrong = sum(not r.teacher_correct for r in rationales) / len(rationales)
  assert 0.27 < wrong < 0.33
  labels = {ex.id: ex.label for exs in ds.splits.values() for ex in exs}
  assert all(r.teacher_correct == (r.teacher_answer == labels[r.example_id]) for r in rationales)
  assert all(r.rationale and r.raw.startswith(r.rationale) for r in rationales)


def test_perfect_teacher_and_no_rationales():
  perfect = demo.load(_config(teacher_error_rate=0.0))
  assert all(r.teacher_correct for rs in perfect.rationales.values() for r in rs)
  none = demo.load(_config(rationales_per_example=0))
  assert all(rs == [] for rs in none.rationales.values())


def test_max_train_examples_caps_train_only():
  data = _config()
  data.max_train_examples = 50
  ds = demo.load(data)
  assert len(ds.splits["train"]) == 50 and len(ds.splits["dev"]) == 90
  assert set(ds.rationales) == {ex.id for exs in ds.splits.values() for ex in exs}


@pytest.mark.parametrize("field,value", [("teacher_error_rate", 1.5), ("rationales_per_example", -1)])
def test_bad_demo_config_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    demo.load(_config(**{field: value}))
