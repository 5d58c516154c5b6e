"""Objective view: the records each setting yields for an example."""

import collections
import random

import ml_collections
import numpy as np
import pytest

from jaxdistill.data import formats
from jaxdistill.data.examples import Example, Rationale
from jaxdistill.data.formats import LABEL, RATIONALE

LABELS = ("entailment", "neutral", "contradiction")

EX = Example(id="e1", task="esnli", inputs={"premise": "A dog runs.", "hypothesis": "An animal moves."},
             label="entailment", human_explanations=("A dog is an animal.", "Running is moving."))


def _rat(i, answer, text=None):
  return Rationale(example_id="e1", teacher="t", prompt_id="p", sample_index=i,
                   rationale=text or f"teacher reason {i}", teacher_answer=answer,
                   teacher_correct=answer == "entailment")


RATS = [_rat(2, "neutral"), _rat(0, "entailment"), _rat(1, "neutral")]


def _obj(name, **kw):
  cfg = ml_collections.ConfigDict(dict(name=name, alpha=0.5, label_source="gold", human_weight=1.0,
                                       teacher_weight=1.0, rationales="all", mix="both"))
  cfg.update(kw)
  return cfg


def _rationale_targets(records):
  return {r.target: r.weight for r in records if r.task_id == RATIONALE}


def test_prompts():
  assert formats.input_text(EX) == "premise: A dog runs. hypothesis: An animal moves."
  assert formats.label_prompt(EX) == "[label] premise: A dog runs. hypothesis: An animal moves."
  assert formats.rationale_prompt(EX) == "[rationale] premise: A dog runs. hypothesis: An animal moves."


def test_baseline_is_label_only():
  recs = formats.records_for_example(EX, RATS, _obj("baseline"), LABELS, None)
  # class_id: the label's index in the task's label set (read by encoder students' heads).
  assert recs == [formats.Seq2SeqRecord(formats.label_prompt(EX), "entailment", LABEL, 1.0, "e1",
                                        LABELS.index("entailment"))]


def test_human_all_explanations_weights_sum_to_one():
  recs = formats.records_for_example(EX, RATS, _obj("human"), LABELS, None)
  assert recs[0].task_id == LABEL and recs[0].target == "entailment"
  assert _rationale_targets(recs) == {"A dog is an animal.": 0.5, "Running is moving.": 0.5}
  assert all(r.source == formats.rationale_prompt(EX) for r in recs[1:])


def test_human_sample_picks_one():
  rng = np.random.default_rng(0)
  seen = collections.Counter()
  for _ in range(200):
    recs = formats.records_for_example(EX, RATS, _obj("human", mix="sample"), LABELS, rng)
    (target, weight), = _rationale_targets(recs).items()
    assert weight == 1.0
    seen[target] += 1
  assert set(seen) == set(EX.human_explanations)


@pytest.mark.parametrize("selection,expected", [
    ("all", {"teacher reason 0", "teacher reason 1", "teacher reason 2"}),
    ("first", {"teacher reason 0"}),
    ("correct", {"teacher reason 0"}),
])
def test_cot_selection(selection, expected):
  recs = formats.records_for_example(EX, RATS, _obj("cot", rationales=selection), LABELS, None)
  targets = _rationale_targets(recs)
  assert set(targets) == expected
  assert sum(targets.values()) == pytest.approx(1.0)


def test_cot_without_rationales_gets_label_only():
  recs = formats.records_for_example(EX, [], _obj("cot"), LABELS, None)
  assert [r.task_id for r in recs] == [LABEL]
  wrong_only = [_rat(0, "neutral")]
  recs = formats.records_for_example(EX, wrong_only, _obj("cot", rationales="correct"), LABELS, None)
  assert [r.task_id for r in recs] == [LABEL]


def test_hybrid_both_weights():
  recs = formats.records_for_example(
      EX, RATS, _obj("hybrid", human_weight=3.0, teacher_weight=1.0), LABELS, None)
  targets = _rationale_targets(recs)
  assert targets["A dog is an animal."] == pytest.approx(0.75 / 2)
  assert targets["teacher reason 0"] == pytest.approx(0.25 / 3)
  assert sum(targets.values()) == pytest.approx(1.0)
  # Only one source present: it carries the whole rationale weight.
  no_human = Example(id="e1", task="esnli", inputs=EX.inputs, label=EX.label)
  targets = _rationale_targets(formats.records_for_example(no_human, RATS, _obj("hybrid"), LABELS, None))
  assert sum(targets.values()) == pytest.approx(1.0) and len(targets) == 3


def test_hybrid_sample_proportional_to_weights():
  rng = random.Random(0)
  sources = collections.Counter()
  n = 4000
  for _ in range(n):
    recs = formats.records_for_example(
        EX, RATS, _obj("hybrid", mix="sample", human_weight=3.0, teacher_weight=1.0), LABELS, rng)
    rats = [r for r in recs if r.task_id == RATIONALE]
    assert len(rats) == 1 and rats[0].weight == 1.0
    sources["human" if rats[0].target in EX.human_explanations else "teacher"] += 1
  assert abs(sources["human"] / n - 0.75) < 0.03


def test_sample_needs_rng():
  with pytest.raises(TypeError, match="rng"):
    formats.records_for_example(EX, RATS, _obj("cot", mix="sample"), LABELS, None)


def test_label_source_teacher_majority_and_fallback():
  recs = formats.records_for_example(EX, RATS, _obj("baseline", label_source="teacher"), LABELS, None)
  assert recs[0].target == "neutral"  # 2 of 3 teacher answers
  junk = [_rat(0, "banana"), _rat(1, "")]
  recs = formats.records_for_example(EX, junk, _obj("cot", label_source="teacher"), LABELS, None)
  assert recs[0].target == "entailment"  # no valid teacher answer -> gold


def test_unknown_settings_rejected():
  with pytest.raises(ValueError, match="objective.name"):
    formats.records_for_example(EX, RATS, _obj("nope"), LABELS, None)
  with pytest.raises(ValueError, match="objective.rationales"):
    formats.records_for_example(EX, RATS, _obj("cot", rationales="best"), LABELS, None)


def test_records_per_epoch_static_and_resampled():
  exs = [EX, Example(id="e2", task="esnli", inputs=EX.inputs, label="neutral")]
  rats = {"e1": RATS}
  static = formats.records_per_epoch(exs, rats, _obj("cot"), LABELS, seed=0)
  assert isinstance(static, list) and len(static) == 2 + 3
  fn = formats.records_per_epoch(exs, rats, _obj("hybrid", mix="sample"), LABELS, seed=0)
  epochs = [fn(e) for e in range(8)]
  assert all(len(e) == 3 for e in epochs)  # same count every epoch
  assert fn(3) == epochs[3]  # deterministic per epoch
  assert len({tuple(e) for e in epochs}) > 1  # but re-drawn between epochs


def test_tokenizer_corpus_covers_prompts():
  texts = formats.tokenizer_corpus([EX], {"e1": RATS}, LABELS)
  assert formats.label_prompt(EX) in texts and "teacher reason 1" in texts and "neutral" in texts


# ----------------------------------------------------------------- combined (chain-of-thought) formats


@pytest.mark.parametrize("fmt", ["rationale_answer", "answer_rationale"])
def test_combined_formats_one_record_per_rationale(fmt):
  recs = formats.records_for_example(EX, RATS, _obj("cot", format=fmt), LABELS, None)
  assert len(recs) == 3 and all(r.source == formats.input_text(EX) for r in recs)  # no label record
  for r, rat in zip(recs, RATS):
    texts = [p[0] for p in r.parts]
    tasks = [p[1] for p in r.parts]
    if fmt == "rationale_answer":
      assert texts == [rat.rationale, " Answer: entailment"] and tasks == [RATIONALE, LABEL]
    else:
      assert texts == ["entailment Explanation:", f" {rat.rationale}"] and tasks == [LABEL, RATIONALE]
    assert r.target == "".join(texts) and r.has_rationale
    assert [p[2] for p in r.parts] == pytest.approx([1 / 3, 1 / 3])  # an example's answer weights sum to 1
  baseline = formats.records_for_example(EX, RATS, _obj("baseline", format=fmt), LABELS, None)
  answer = "Answer: entailment" if fmt == "rationale_answer" else "entailment"  # parse_answer reads both
  assert [(r.source, r.parts) for r in baseline] == [(formats.input_text(EX), ((answer, LABEL, 1.0),))]
  assert formats.parse_answer(answer, fmt) == "entailment"


def test_parse_answer():
  assert formats.parse_answer("dogs are animals Answer: entailment", "rationale_answer") == "entailment"
  assert formats.parse_answer("no marker here", "rationale_answer") == ""  # malformed: wrong, not a crash
  assert formats.parse_answer("neutral Explanation: maybe", "answer_rationale") == "neutral"
  assert formats.parse_answer(" contradiction ", "multitask") == "contradiction"


def test_unknown_format_is_rejected():
  with pytest.raises(ValueError, match="objective.format"):
    formats.records_for_example(EX, RATS, _obj("cot", format="cot_first"), LABELS, None)
