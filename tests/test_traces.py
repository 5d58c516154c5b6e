"""Traces: bAbI-style generator and decomposer, trace text <-> steps, verifiers, corruption, the
trace x answer statistics (against hand-computed values), the CoTempQA / MS MARCO loaders on local
fixtures, and one tiny end-to-end run of configs/traces.py."""

import dataclasses
import json
import math
import os
import pathlib
import random

import pytest
from hypothesis import given, settings, strategies as st

from jaxdistill import traces
from jaxdistill.data import formats
from jaxdistill.data.examples import Example
from jaxdistill.data.sources import babi, load_dataset

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
BABI = babi.DECOMPOSER
SPECS = BABI.specs


@pytest.fixture(scope="module")
def small_babi():
  return babi.generate(3, num_train=120, num_dev=20, num_test=20)


def _steps(kind="two-facts", facts=(2, 5), answer="kitchen"):
  return BABI.steps({"type": kind, "facts": tuple(facts), "answer": answer})


# --- the bAbI-style generator and its decomposer -------------------------------------------------

def _only(example: Example, facts) -> Example:
  """The example with only `facts` (1-based) kept, renumbered from 1."""
  sentences = [s + "." for _, s in babi._NUMBERED.findall(example.inputs["context"])]
  return dataclasses.replace(example, inputs=dict(example.inputs, context=babi.context_text(
      [sentences[i - 1] for i in sorted(facts)])))


def test_babi_gold_steps_per_kind(small_babi):
  """The decomposer recomputes each example's trace from its text; the supporting facts are as
  many as the kind says, name what is asked about, and are enough to answer on their own."""
  sizes = {"one-fact": 1, "two-facts": 2, "three-facts": 3, "yes-no": 1}
  seen = {k: 0 for k in babi.KINDS}
  for exs in small_babi.splits.values():
    for ex in exs:
      gold = BABI.gold(ex)
      assert gold is not None, ex
      kind, facts, answer = (s.value for s in gold)
      seen[kind] += 1
      assert answer == ex.label
      assert traces.format_trace(gold) == small_babi.rationales[ex.id][0].raw
      assert len(facts) == sizes[kind] and all(1 <= i <= BABI.num_items(ex) for i in facts)
      subject = babi.parse_question(ex.inputs["question"])[1]
      sentences = [s for _, s in babi._NUMBERED.findall(ex.inputs["context"])]
      assert any(subject in sentences[i - 1] for i in facts), ex
      # Sufficient: the supporting facts alone give the same answer.
      assert BABI.solve(_only(ex, facts))[1:] == (answer, tuple(range(1, len(facts) + 1))), ex
      # Necessary: dropping any one of them loses or changes the answer.
      for drop in facts:
        rest = [i for i in facts if i != drop]
        solved = BABI.solve(_only(ex, rest)) if rest else None
        assert solved is None or solved[1] != answer, (ex, drop)
  assert min(seen.values()) >= 35, seen


def test_babi_is_deterministic_balanced_and_unique(small_babi):
  again = babi.generate(3, num_train=120, num_dev=20, num_test=20)
  assert again.splits == small_babi.splits and again.rationales == small_babi.rationales
  assert babi.generate(4, num_train=120, num_dev=20, num_test=20).splits != small_babi.splits
  pairs = [(e.inputs["context"], e.inputs["question"]) for exs in small_babi.splits.values() for e in exs]
  assert len(set(pairs)) == len(pairs)
  yes_no = [e.label for e in small_babi.splits["train"] if e.label in ("yes", "no")]
  assert abs(yes_no.count("yes") - yes_no.count("no")) <= 1
  assert all(e.label in babi.LABELS for exs in small_babi.splits.values() for e in exs)
  r = small_babi.rationales[small_babi.splits["train"][0].id][0]
  assert (r.teacher, r.prompt_id, r.teacher_correct) == ("rule", "babi-trace", True)
  assert babi.load({"seed": 3, "babi": {"num_train": 30, "num_dev": 5, "num_test": 5},
                    "max_train_examples": 10}).splits["train"] == babi.generate(
                        3, num_train=30, num_dev=5, num_test=5).splits["train"][:10]
  with pytest.raises(ValueError, match="kinds"):
    babi.generate(0, kinds="one-fact,four-facts")


def test_babi_decomposer_rejects_text_outside_its_grammar():
  ex = Example("x", "babi", {"context": "1 Mary flew to the moon.", "question": "Where is Mary?"}, "moon")
  assert BABI.gold(ex) is None
  ex = Example("x", "babi", {"context": "1 Mary went to the kitchen.", "question": "Why?"}, "kitchen")
  assert BABI.gold(ex) is None


# --- trace text ----------------------------------------------------------------------------------

def test_format_is_the_rationale_answer_target_and_parses_back():
  steps = _steps("three-facts", (7, 2, 4), "garden")
  text = traces.format_trace(steps)
  assert text == "type: three-facts ; facts: 2 4 7 Answer: garden"
  rationale = traces.format_trace(steps[:2])
  record = formats.combined_record(Example("e", "babi", {"q": "?"}, "garden"), "garden", rationale,
                                   "rationale_answer", 1.0)
  assert record.target == text and formats.parse_answer(text, "rationale_answer") == "garden"
  assert traces.parse_trace(text, SPECS) == {"type": "three-facts", "facts": (2, 4, 7), "answer": "garden"}
  assert traces.parse_trace(rationale, SPECS) == {"type": "three-facts", "facts": (2, 4, 7), "answer": None}
  # Empty retrieval sets and other tasks' fields round-trip too.
  specs = (("relation", traces.CLASSIFICATION), ("facts", traces.RETRIEVAL), ("answer", traces.ANSWER))
  steps = [traces.Step("relation", traces.CLASSIFICATION, "overlap"), traces.Step("facts", traces.RETRIEVAL, ()),
           traces.Step("answer", traces.ANSWER, "Harbor United and the national team")]
  assert traces.parse_trace(traces.format_trace(steps), specs) == {s.name: s.value for s in steps}
  # Tolerant of spacing, case of the label and commas between indices.
  assert traces.parse_trace("type:Two-Facts;facts : 5, 2   Answer:  kitchen ", SPECS) == {
      "type": "two-facts", "facts": (2, 5), "answer": "kitchen"}


@pytest.mark.parametrize("text, expected", [
    ("", {"type": None, "facts": None, "answer": None}),
    (None, {"type": None, "facts": None, "answer": None}),
    (b"\xff\xfe\x00type: one-fact", {"type": "one-fact", "facts": None, "answer": None}),
    ("type: two-fa", {"type": "two-fa", "facts": None, "answer": None}),  # truncated: a wrong label
    ("type: two-facts ; facts: 3", {"type": "two-facts", "facts": (3,), "answer": None}),
    ("type: two-facts ; facts:", {"type": "two-facts", "facts": None, "answer": None}),
    ("type: one-fact ; type: one-fact ; facts: 3 Answer: x", {"type": None, "facts": (3,), "answer": "x"}),
    ("type: one-fact ; facts: 3 ; facts: 4 Answer: x", {"type": "one-fact", "facts": None, "answer": "x"}),
    ("facts: 2 2 Answer: x", {"type": None, "facts": None, "answer": "x"}),  # a repeated index
    ("facts: 0 3", {"type": None, "facts": None, "answer": None}),
    ("facts: -1", {"type": None, "facts": None, "answer": None}),
    ("facts: two", {"type": None, "facts": None, "answer": None}),
    ("facts: \u0663", {"type": None, "facts": None, "answer": None}),  # a non-ASCII digit
    ("kitchen", {"type": None, "facts": None, "answer": None}),  # answer only (the no-trace student)
    ("type: one-fact Answer: hall Answer: kitchen", {"type": "one-fact", "facts": None, "answer": "kitchen"}),
    ("subtype: one-fact ; facts: 1", {"type": None, "facts": (1,), "answer": None}),
])
def test_parse_garbage_marks_steps_wrong(text, expected):
  parsed = traces.parse_trace(text, SPECS)
  assert parsed == expected
  gold = _steps("one-fact", (1,), "kitchen")
  assert not all(traces.verify(s.kind, parsed[s.name], s.value) for s in gold)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1")),
                 st.lists(st.sampled_from(["type", "facts", ":", ";", " ", "1", "Answer", "x", "\n"])).map("".join)))
def test_parse_never_raises(text):
  parsed = traces.parse_trace(text, SPECS)
  assert set(parsed) == {"type", "facts", "answer"}
  assert parsed["facts"] is None or all(isinstance(i, int) and i > 0 for i in parsed["facts"])


def test_verifiers():
  C, R, A = traces.CLASSIFICATION, traces.RETRIEVAL, traces.ANSWER
  assert traces.verify(C, "Two-Facts ", "two-facts") and not traces.verify(C, "one-fact", "two-facts")
  assert traces.verify(R, (5, 2), (2, 5)) and not traces.verify(R, (2,), (2, 5))
  assert not traces.verify(R, (2, 5, 7), (2, 5)) and traces.verify(R, (), ())
  assert traces.verify(A, "The Kitchen.", "kitchen") and not traces.verify(A, "kitchens", "kitchen")
  assert traces.verify(A, "42  kilometres", "42 kilometres")
  for kind in (C, R, A):
    assert not traces.verify(kind, None, "x" if kind != R else (1,))
  with pytest.raises(ValueError):
    traces.verify("vibes", "x", "x")


# --- corruption and training variants ------------------------------------------------------------

@pytest.mark.parametrize("which, changed", [("retrieval", "facts"), ("facts", "facts"),
                                            ("classification", "type"), ("type", "type")])
def test_corrupt_changes_exactly_the_chosen_step(small_babi, which, changed):
  rng = random.Random(0)
  for ex in small_babi.splits["train"][:60]:
    gold = BABI.gold(ex)
    bad = traces.corrupt(BABI, ex, gold, which, rng)
    for g, b in zip(gold, bad):
      assert (g != b) == (g.name == changed), (ex.id, g, b)
      assert not traces.verify(b.kind, b.value, g.value) if g.name == changed else b == g
    step = next(b for b in bad if b.name == changed)
    if changed == "facts":  # a near miss: same size, valid numbers
      assert len(step.value) == len(gold[1].value) and all(1 <= i <= BABI.num_items(ex) for i in step.value)
    else:
      assert step.value in babi.KINDS
  with pytest.raises(ValueError, match="answer stays gold"):
    traces.corrupt(BABI, ex, gold, "answer", rng)
  with pytest.raises(ValueError, match="corrupt_step"):
    traces.corrupt(BABI, ex, gold, "vibes", rng)


class _Cfg(dict):
  __getattr__ = dict.__getitem__


def _traces_cfg(**kw):
  return _Cfg(dict(variant="correct", corrupt_step="retrieval", corrupt_rate=1.0, seed=0), **kw)


def test_training_variants(small_babi):
  train = small_babi.splits["train"]
  none, info = traces.training_rationales(BABI, train, small_babi.rationales, _traces_cfg(variant="none"))
  assert none == {} and info["variant"] == "none" and "corrupted" not in info
  correct, _ = traces.training_rationales(BABI, train, small_babi.rationales, _traces_cfg())
  assert correct == {ex.id: small_babi.rationales[ex.id] for ex in train}
  wrong, info = traces.training_rationales(BABI, train, small_babi.rationales, _traces_cfg(variant="incorrect"))
  assert info["corrupted"] == len(train)
  for ex in train:
    (r,) = wrong[ex.id]
    parsed = BABI.parse(r.raw)
    gold = {s.name: s.value for s in BABI.gold(ex)}
    assert parsed["type"] == gold["type"] and parsed["facts"] != gold["facts"] and parsed["answer"] == ex.label
    assert r.prompt_id == "babi-trace-corrupted" and r.teacher_answer == ex.label
  half, info = traces.training_rationales(BABI, train, small_babi.rationales,
                                          _traces_cfg(variant="incorrect", corrupt_rate=0.5))
  assert 0.3 < info["corrupted"] / len(train) < 0.7
  assert half == traces.training_rationales(BABI, train, small_babi.rationales,
                                            _traces_cfg(variant="incorrect", corrupt_rate=0.5))[0]
  mixed, info = traces.training_rationales(BABI, train, small_babi.rationales, _traces_cfg(variant="mixed"))
  assert all([r.prompt_id for r in mixed[ex.id]] == ["babi-trace", "babi-trace-corrupted"] for ex in train)
  objective = _Cfg(name="cot", format="rationale_answer", mix="both", label_source="gold", rationales="all")
  records = formats.records_for_example(train[0], mixed[train[0].id], objective, small_babi.labels)
  assert [r.weight for r in records] == [0.5, 0.5] and {r.target.rsplit(" Answer: ")[1] for r in records} == {
      train[0].label}


def test_setup_leaves_other_settings_alone_and_checks_the_variant(small_babi):
  from configs import base, traces as traces_config
  config = base.get_config()
  assert traces.setup(config, small_babi) == (small_babi, None)
  config = traces_config.get_config("none")
  assert (config.objective.name, config.objective.format, config.name) == ("baseline", "multitask", "traces-none")
  ds, scorer = traces.setup(config, small_babi)
  assert not any(ex.id in ds.rationales for ex in ds.splits["train"])
  assert all(ds.rationales[ex.id] == small_babi.rationales[ex.id] for ex in ds.splits["test"])
  assert scorer.training["variant"] == "none"
  config.traces.variant = "incorrect"  # objective left at baseline: refused, with the fix named
  with pytest.raises(ValueError, match="configs/traces.py:incorrect"):
    traces.setup(config, small_babi)
  config = traces_config.get_config("correct")
  config.traces.variant = "none"
  with pytest.raises(ValueError, match="configs/traces.py:none"):
    traces.setup(config, small_babi)


# --- statistics ----------------------------------------------------------------------------------

def _pairs(a, b, c, d):
  """trace_ok / answer_ok lists with a (ok, ok), b (ok, wrong), c (wrong, ok), d (wrong, wrong)."""
  rows = [(True, True)] * a + [(True, False)] * b + [(False, True)] * c + [(False, False)] * d
  return [t for t, _ in rows], [x for _, x in rows]


def test_statistics_against_hand_computed_values():
  table = traces.contingency(*_pairs(30, 10, 20, 40))
  assert table == {"trace_ok_answer_ok": 30, "trace_ok_answer_wrong": 10, "trace_wrong_answer_ok": 20,
                   "trace_wrong_answer_wrong": 40}
  assert traces.p_answer_given_trace(table, True) == 0.75  # 30 / 40
  assert traces.p_answer_given_trace(table, False) == pytest.approx(1 / 3)  # 20 / 60
  # (30*40 - 10*20) / sqrt(40 * 60 * 50 * 50) = 1000 / 2449.4897...
  assert traces.phi(table) == pytest.approx(0.4082483, abs=1e-7)
  assert traces.phi(traces.contingency(*_pairs(5, 0, 0, 7))) == 1.0
  assert traces.phi(traces.contingency(*_pairs(0, 4, 4, 0))) == -1.0
  assert traces.phi(traces.contingency(*_pairs(1, 1, 1, 1))) == 0.0
  # (2*1 - 3*4) / sqrt(5 * 5 * 6 * 4) = -10 / sqrt(600)
  assert traces.phi(traces.contingency(*_pairs(2, 3, 4, 1))) == pytest.approx(-10 / math.sqrt(600))
  # Empty margins: undefined, reported as None (not 0).
  all_ok = traces.contingency(*_pairs(3, 2, 0, 0))
  assert traces.p_answer_given_trace(all_ok, True) == 0.6 and traces.p_answer_given_trace(all_ok, False) is None
  assert traces.phi(all_ok) is None and traces.phi(traces.contingency(*_pairs(0, 0, 4, 0))) is None
  assert traces.phi(traces.contingency([], [])) is None
  with pytest.raises(ValueError):
    traces.contingency([True], [True, False])
  assert traces.step_accuracy([{"a": True, "b": False}, {"a": True, "b": True}], ["a", "b"]) == {"a": 1.0, "b": 0.5}
  assert traces.step_accuracy([], ["a"]) == {"a": None}


def test_score_block(small_babi):
  exs = small_babi.splits["test"][:4]
  golds = {ex.id: BABI.gold(ex) for ex in exs}
  right = [traces.format_trace(golds[ex.id]) for ex in exs]
  wrong_facts = traces.format_trace(traces.corrupt(BABI, exs[1], golds[exs[1].id], "facts", random.Random(0)))
  generated = [right[0], wrong_facts, right[2], "\x00garbage"]
  predictions = [formats.parse_answer(t, "rationale_answer") for t in generated]
  predictions[2] = "nowhere"  # right trace, wrong answer
  block = traces.score(BABI, exs, generated, predictions, golds)
  assert block["contingency"] == {"trace_ok_answer_ok": 1, "trace_ok_answer_wrong": 1, "trace_wrong_answer_ok": 1,
                                  "trace_wrong_answer_wrong": 1}
  assert block["step_accuracy"] == {"type": 0.75, "facts": 0.5, "answer": 0.5}
  assert (block["trace_accuracy"], block["answer_accuracy"], block["malformed"]) == (0.5, 0.5, 0.25)
  assert block["p_answer_given_trace_ok"] == 0.5 and block["phi"] == 0.0
  assert sum(v["examples"] for v in block["by_class"].values()) == 4 and len(block["samples"]) == 4
  json.dumps(block)  # metrics.json-ready


# --- CoTempQA and MS MARCO (HF datasets, local fixtures) -----------------------------------------

@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
  datasets = pytest.importorskip("datasets")
  monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
  return datasets


def test_cotemp_loader(hf_cache):
  d = load_dataset({"source": "cotemp", "path": str(FIXTURES / "cotemp"), "dev_size": 2, "test_size": 2})
  assert [len(d.splits[s]) for s in ("train", "dev", "test")] == [3, 2, 2]
  assert d.skipped == {"no_answer": 1} and d.labels is None  # overlap row 1 has no answer
  exs = {ex.id: ex for s in d.splits.values() for ex in s}
  dec = traces.decomposer_for("cotemp")
  ex = exs["cotemp-overlap-0"]
  assert ex.inputs["context"].startswith("[1] Lena Ortiz works for Westgate Institute from 1970 to 1980. [2] ")
  assert ex.label == "Omar Reyes" and dec.num_items(ex) == 4
  # The While-clause's fact and the fact naming the answer; not Omar Reyes' unrelated fact 4.
  assert [s.value for s in dec.gold(ex, d.rationales[ex.id])] == ["overlap", (1, 2), "Omar Reyes"]
  ex = exs["cotemp-equal-1"]
  assert [s.value for s in dec.gold(ex, d.rationales[ex.id])] == [
      "equal", (1, 2, 3), "Harbor United and the national under-21 team"]
  assert dec.gold(ex, []) is None  # the scenario is an annotation: without the rule trace, no gold
  again = load_dataset({"source": "cotemp", "path": str(FIXTURES / "cotemp"), "dev_size": 2, "test_size": 2})
  assert again.splits == d.splits
  with pytest.raises(ValueError, match="leave no training examples"):
    load_dataset({"source": "cotemp", "path": str(FIXTURES / "cotemp"), "dev_size": 4, "test_size": 4})


def test_cotemp_bad_rows(hf_cache, tmp_path):
  src = tmp_path / "cotemp"
  src.mkdir()
  (src / "equal.json").write_text(json.dumps({"question": "", "facts": ["x"], "answer": ["y"]}) + "\n" + "\n".join(
      (FIXTURES / "cotemp" / "equal.json").read_text().splitlines()) + "\n")
  for name in ("overlap", "during", "mix"):
    (src / f"{name}.json").write_text((FIXTURES / "cotemp" / f"{name}.json").read_text())
  with pytest.raises(Exception, match=r"equal\.json: row 1: missing field 'question'"):
    load_dataset({"source": "cotemp", "path": str(src), "dev_size": 1, "test_size": 1})
  d = load_dataset({"source": "cotemp", "path": str(src), "dev_size": 1, "test_size": 1, "on_error": "skip"})
  assert d.skipped == {"missing_field": 1, "no_answer": 1}


def test_msmarco_loader(hf_cache):
  d = load_dataset({"source": "msmarco", "path": str(FIXTURES / "msmarco"), "dev_size": 1})
  assert {s: [e.id for e in d.splits[s]] for s in ("train", "dev", "test")} == {
      "train": ["msmarco-1001", "msmarco-1002", "msmarco-1004"], "dev": ["msmarco-1005"],
      "test": ["msmarco-2001", "msmarco-2002"]}
  assert d.skipped == {"no_answer": 1}  # "No Answer Present."
  dec = traces.decomposer_for("msmarco")
  ex = d.splits["train"][1]
  assert ex.inputs["question"] == "where is the kestrel lighthouse" and dec.num_items(ex) == 3
  passages = ex.inputs["passages"]
  assert passages.startswith("[1] The Kestrel lighthouse") and "[3] Fenwick Island" in passages
  assert [s.value for s in dec.gold(ex, d.rationales[ex.id])] == [
      "location", (1, 3), "On the north cape of Fenwick Island"]
  assert d.rationales[ex.id][0].rationale == "type: location ; passages: 1 3"
  capped = load_dataset({"source": "msmarco", "path": str(FIXTURES / "msmarco"), "dev_size": 1,
                         "max_train_examples": 2, "max_eval_examples": 1})
  # The caps bound the rows read (train: max_train_examples + dev_size); unusable rows among them are skipped.
  assert [len(capped.splits[s]) for s in ("train", "dev", "test")] == [1, 1, 1]


# --- end to end ----------------------------------------------------------------------------------

def test_tiny_run_writes_the_traces_block(tmp_path):
  """configs/traces.py through train.run (3 steps, tiny data, byte tokenizer): metrics.json holds
  the per-step accuracy, the 2x2 table, P(answer | trace) and phi."""
  from configs import traces as traces_config
  from jaxdistill import train
  config = traces_config.get_config()
  config.data.babi.update(num_train=24, num_dev=6, num_test=6)
  config.model.update(preset="t5-tiny", tokenizer="byte")
  config.data.update(max_source_len=256, max_target_len=48)
  config.train.update(steps=3, batch_size=4, warmup_steps=1, log_every=1, checkpoint_every=3, export_hf=False)
  config.eval.update(every=3, batch_size=8)
  train.run(config, str(tmp_path))
  metrics = json.loads((tmp_path / "metrics.json").read_text())
  block = metrics["traces"]
  assert metrics["setting"] == "traces-correct" and metrics["format"] == "rationale_answer"
  assert block["examples"] == 6 and set(block["step_accuracy"]) == {"type", "facts", "answer"}
  assert set(block["contingency"]) == set(traces.TABLE_KEYS) and sum(block["contingency"].values()) == 6
  assert {"p_answer_given_trace_ok", "p_answer_given_trace_wrong", "phi", "trace_accuracy"} <= set(block)
  assert block["training"] == {"variant": "correct", "corrupt_step": "retrieval", "corrupt_rate": 1.0,
                               "train_examples": 24, "traces": 24}
  assert os.path.isdir(tmp_path / "best")
