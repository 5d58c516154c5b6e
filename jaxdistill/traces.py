"""Trace-based distillation: rule-based decomposition into checkable steps (DESIGN §1 "traces").

The study this serves decomposes open-book QA into a classification step (which kind of question
or relation is asked), an information-retrieval step (which facts or passages answer it) and the
answer. Every step has a gold value, so a student's generated trace can be checked step by step,
even at inference time, and one can ask whether correct traces go with correct answers. Its
finding: they do not reliably (SFT on deliberately incorrect traces can score higher, and trace
correctness correlates weakly with answer correctness). This module makes that experiment a config.

Pieces, each small and independent of JAX:

  Step / Decomposer   typed steps (classification | retrieval | answer) and, per task, the rule
                      that yields an example's gold steps (`DECOMPOSERS`, looked up by task; the
                      task's source module defines it next to the data it understands)
  format_trace        steps -> text: "type: two-facts ; facts: 2 5 Answer: kitchen". The answer
                      goes after formats.ANSWER_MARK, so a trace *is* a rationale_answer target
                      whose rationale is the trace without its answer: the existing cot machinery
                      (records, packing, caches) trains on traces unchanged.
  parse_trace         text -> {step: value | None}; never raises. Malformed, missing or repeated
                      fields read as None, which every verifier counts as wrong.
  verify              per kind: exact label, set equality of 1-based indices, normalised text.
  corrupt             a plausible wrong value of one non-answer step, the answer kept gold: the
                      trace is wrong but the label target is right (the study's manipulation).
  statistics          the 2x2 table trace-correct x answer-correct, P(answer ok | trace ok / wrong),
                      the phi coefficient, per-step accuracy.
  setup               the training variant (`config.traces.variant`: none | correct | incorrect |
                      mixed) applied to a Dataset, and the scorer the Evaluator calls on generated
                      text; a config without a `traces` section is left untouched.

Gold traces travel as teacher rationales (teacher "rule", prompt_id "<task>-trace",
teacher_correct=True, raw = the whole trace with its answer), so caches can hold them.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import math
import random
import re
import string
from typing import Any, Callable, Iterable, Mapping, Sequence

from jaxdistill.data import formats
from jaxdistill.data.examples import Example, Rationale

CLASSIFICATION, RETRIEVAL, ANSWER = "classification", "retrieval", "answer"
KINDS = (CLASSIFICATION, RETRIEVAL, ANSWER)
TEACHER = "rule"
FIELD_SEP = " ; "
ANSWER_FIELD = formats.ANSWER_MARK.strip().rstrip(":")  # "Answer": the rationale_answer marker
NO_ITEMS = "none"  # how an empty retrieval set is written

# Where each task's decomposer lives (imported lazily: sources import this module).
DECOMPOSERS = {
    "babi": "jaxdistill.data.sources.babi",
    "cotemp": "jaxdistill.data.sources.cotemp",
    "msmarco": "jaxdistill.data.sources.msmarco",
}

Value = Any  # str for classification / answer steps, tuple[int, ...] for retrieval steps


@dataclasses.dataclass(frozen=True)
class Step:
  """One step of a trace: `name` is its field in the text, `kind` decides how it is checked."""
  name: str
  kind: str
  value: Value


# --------------------------------------------------------------------------- text <-> steps

def format_value(kind: str, value: Value) -> str:
  if kind == RETRIEVAL:
    return " ".join(str(i) for i in sorted(value)) if value else NO_ITEMS
  return str(value)


def format_trace(steps: Sequence[Step]) -> str:
  """Steps as text, the answer last after formats.ANSWER_MARK ("... Answer: kitchen").

  Without an answer step this is the rationale a rationale_answer record trains on; with it,
  the whole target (rationale + ANSWER_MARK + label), character for character."""
  head = FIELD_SEP.join(f"{s.name}: {format_value(s.kind, s.value)}" for s in steps if s.kind != ANSWER)
  answers = [s for s in steps if s.kind == ANSWER]
  if not answers:
    return head
  tail = formats.ANSWER_MARK + str(answers[-1].value)
  return head + tail if head else tail.lstrip()


def _clean(text: str) -> str:
  return " ".join(text.split())


def _parse_value(kind: str, raw: str) -> Value | None:
  raw = _clean(raw)
  if not raw:
    return None
  if kind == RETRIEVAL:
    tokens = raw.replace(",", " ").split()
    if tokens == [NO_ITEMS]:
      return ()
    if not all(t.isdigit() and t.isascii() and int(t) > 0 for t in tokens):
      return None
    ids = [int(t) for t in tokens]
    return tuple(sorted(ids)) if len(set(ids)) == len(ids) else None  # a repeated index is malformed
  if kind == CLASSIFICATION:
    return raw.lower()
  return raw


def parse_trace(text: Any, specs: Sequence[tuple[str, str]]) -> dict[str, Value | None]:
  """Reads generated text back into {step name: value or None}; never raises.

  `specs` are the task's (name, kind) pairs. A field is "name: value", ended by the next known
  field, a ";" or the end. None means the step cannot be read: missing, empty, not of its kind
  (a retrieval value that is not distinct positive integers) or written more than once (a
  student that repeats a field has not committed to one value). The answer is the text after
  the *last* answer marker, exactly as formats.parse_answer reads it, so answer-step accuracy
  and the Evaluator's accuracy agree.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  if not isinstance(text, str):
    text = ""
  out: dict[str, Value | None] = {name: None for name, _ in specs}
  kinds = dict(specs)
  answer_names = [name for name, kind in specs if kind == ANSWER]
  head, mark, tail = text.rpartition(ANSWER_FIELD + ":")
  if not mark:
    head = text
  elif answer_names:
    out[answer_names[0]] = _parse_value(ANSWER, tail)
  names = [name for name, kind in specs if kind != ANSWER] + [ANSWER_FIELD]
  marker = re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                      + r")\s*:")
  hits = list(marker.finditer(head))
  counts = collections.Counter(m.group(1) for m in hits)
  for i, m in enumerate(hits):
    name = m.group(1)
    if name == ANSWER_FIELD or counts[name] > 1:
      continue
    end = hits[i + 1].start() if i + 1 < len(hits) else len(head)
    value = head[m.end():end].split(";", 1)[0]
    out[name] = _parse_value(kinds[name], value)
  return out


# --------------------------------------------------------------------------- verification

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
  """Lower case, no punctuation, no articles, single spaces (the SQuAD / MS MARCO convention)."""
  return _clean(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)))


def verify(kind: str, predicted: Value | None, gold: Value) -> bool:
  """Is `predicted` right for a step of `kind` whose gold value is `gold`? None is always wrong.

  classification: the same label (case and spacing aside); retrieval: the same *set* of
  indices (order carries no meaning); answer: the same normalised text."""
  if predicted is None:
    return False
  if kind == CLASSIFICATION:
    return _clean(str(predicted)).lower() == _clean(str(gold)).lower()
  if kind == RETRIEVAL:
    try:
      return set(predicted) == set(gold)
    except TypeError:
      return False
  if kind == ANSWER:
    return normalize_answer(predicted) == normalize_answer(gold)
  raise ValueError(f"unknown step kind {kind!r} (expected one of {KINDS})")


# --------------------------------------------------------------------------- decomposers

class Decomposer:
  """A task's decomposition: its steps, their gold values, and what a wrong value may be.

  Subclasses set `task`, `specs` ((name, kind) in trace order, one answer step last) and
  `classes` (the classification step's label set) and implement `num_items` (how many facts or
  passages an example offers the retrieval step). `gold` reads the example's rule trace (the
  source wrote it from annotations the example's text does not carry, e.g. MS MARCO's
  is_selected); a decomposer that can recompute it from the text alone (bAbI) overrides it.
  """

  task: str = ""
  specs: tuple[tuple[str, str], ...] = ()
  classes: tuple[str, ...] = ()

  @property
  def prompt_id(self) -> str:
    return f"{self.task}-trace"

  def num_items(self, example: Example) -> int:
    raise NotImplementedError

  def parse(self, text: Any) -> dict[str, Value | None]:
    return parse_trace(text, self.specs)

  def steps(self, values: Mapping[str, Value]) -> list[Step]:
    return [Step(name, kind, values[name]) for name, kind in self.specs]

  def gold(self, example: Example, rationales: Sequence[Rationale] = ()) -> list[Step] | None:
    """The example's gold steps from its rule trace (None when it has none or it is unreadable)."""
    for r in rationales:
      if r.teacher == TEACHER and r.prompt_id == self.prompt_id:
        values = self.parse(r.rationale)
        values[self.answer_name] = example.label
        if any(v is None for v in values.values()):
          return None
        return self.steps(values)
    return None

  @property
  def answer_name(self) -> str:
    return next(name for name, kind in self.specs if kind == ANSWER)

  def step_names(self, which: str) -> list[str]:
    """Non-answer steps named by `which`: a step name, a kind, or "any" (all of them)."""
    names = [name for name, kind in self.specs if kind != ANSWER and which in ("any", name, kind)]
    if not names:
      known = ["any"] + [n for n, k in self.specs if k != ANSWER] + sorted(
          {k for _, k in self.specs if k != ANSWER})
      raise ValueError(f"config.traces.corrupt_step={which!r}: not a non-answer step of task {self.task!r} "
                       f"(expected one of {known}; the answer stays gold by design)")
    return names

  def wrong_value(self, example: Example, step: Step, rng: random.Random) -> Value | None:
    """A plausible wrong value for `step`: another label of the classification step; for the
    retrieval step a near miss (one gold index swapped for another item of the same example, so
    the set keeps its size and stays valid). None when no wrong value exists."""
    if step.kind == CLASSIFICATION:
      others = [c for c in self.classes if c != step.value]
      return rng.choice(others) if others else None
    if step.kind == RETRIEVAL:
      gold = set(step.value)
      pool = [i for i in range(1, self.num_items(example) + 1) if i not in gold]
      if not gold:
        return (rng.choice(pool),) if pool else None
      if not pool:
        return tuple(sorted(gold - {rng.choice(sorted(gold))})) if len(gold) > 1 else None
      out = set(gold)
      out.remove(rng.choice(sorted(gold)))
      out.add(rng.choice(pool))
      return tuple(sorted(out))
    raise ValueError(f"step {step.name!r} of kind {step.kind!r} is not corrupted (the answer stays gold)")


_ITEM = re.compile(r"\[(\d+)\] ")


def number_items(items: Sequence[str]) -> str:
  """Facts or passages as one text, "[1] ... [2] ...": the numbers a retrieval step names.
  Brackets, not "1 ...", because real facts and passages hold their own digits and periods."""
  return " ".join(f"[{i}] {_clean(t)}" for i, t in enumerate(items, 1))


def count_items(text: str) -> int:
  """How many items `number_items` wrote into `text` (the last of the consecutive [1], [2], ...)."""
  n = 0
  for m in _ITEM.finditer(text or ""):
    if int(m.group(1)) == n + 1:
      n += 1
  return n


def decomposer_for(task: str) -> Decomposer:
  if task not in DECOMPOSERS:
    raise ValueError(f"no trace decomposer for task {task!r} (known: {sorted(DECOMPOSERS)})")
  return importlib.import_module(DECOMPOSERS[task]).DECOMPOSER


def corrupt(decomposer: Decomposer, example: Example, steps: Sequence[Step], which: str,
            rng: random.Random) -> list[Step] | None:
  """`steps` with one non-answer step (named by `which`: a name, a kind or "any", then drawn)
  given a plausible wrong value; every other step, the answer included, unchanged."""
  name = rng.choice(decomposer.step_names(which))
  out = list(steps)
  for i, s in enumerate(out):
    if s.name == name:
      value = decomposer.wrong_value(example, s, rng)
      if value is None:
        return None
      out[i] = dataclasses.replace(s, value=value)
      return out
  return None


def trace_rationale(example: Example, steps: Sequence[Step], prompt_id: str, sample_index: int = 0
                    ) -> Rationale:
  """A trace as a teacher rationale: the trace without its answer, then the answer after the marker."""
  return Rationale(example_id=example.id, teacher=TEACHER, prompt_id=prompt_id, sample_index=sample_index,
                   rationale=format_trace([s for s in steps if s.kind != ANSWER]),
                   teacher_answer=example.label, teacher_correct=True, raw=format_trace(steps))


# --------------------------------------------------------------------------- statistics

TABLE_KEYS = ("trace_ok_answer_ok", "trace_ok_answer_wrong", "trace_wrong_answer_ok", "trace_wrong_answer_wrong")


def contingency(trace_ok: Iterable[bool], answer_ok: Iterable[bool]) -> dict[str, int]:
  """The 2x2 table of trace-correct x answer-correct counts (keys TABLE_KEYS: a, b, c, d)."""
  pairs = list(zip(trace_ok, answer_ok, strict=True))
  table = dict.fromkeys(TABLE_KEYS, 0)
  for t, a in pairs:
    table[f"trace_{'ok' if t else 'wrong'}_answer_{'ok' if a else 'wrong'}"] += 1
  return table


def p_answer_given_trace(table: Mapping[str, int], trace_ok: bool = True) -> float | None:
  """P(answer correct | trace correct) (or | trace wrong); None when no trace is of that kind
  (an empty row: the probability is undefined, not 0)."""
  row = "ok" if trace_ok else "wrong"
  right, wrong = table[f"trace_{row}_answer_ok"], table[f"trace_{row}_answer_wrong"]
  return right / (right + wrong) if right + wrong else None


def phi(table: Mapping[str, int]) -> float | None:
  """The phi coefficient (Pearson correlation of the two binary variables):
  (ad - bc) / sqrt((a+b)(c+d)(a+c)(b+d)). None when a margin is empty (every trace right, every
  trace wrong, every answer right or every answer wrong): one variable is then constant and a
  correlation is undefined; reporting 0 would claim "no association" where nothing was measured."""
  a, b, c, d = (table[k] for k in TABLE_KEYS)
  denominator = (a + b) * (c + d) * (a + c) * (b + d)
  return (a * d - b * c) / math.sqrt(denominator) if denominator else None


def step_accuracy(checks: Sequence[Mapping[str, bool]], names: Sequence[str]) -> dict[str, float | None]:
  """Per step, the fraction of examples whose step was right (None for no examples)."""
  return {n: (sum(c[n] for c in checks) / len(checks) if checks else None) for n in names}


def correlation_block(trace_ok: Sequence[bool], answer_ok: Sequence[bool]) -> dict[str, Any]:
  table = contingency(trace_ok, answer_ok)
  return {"contingency": table,
          "p_answer_given_trace_ok": p_answer_given_trace(table, True),
          "p_answer_given_trace_wrong": p_answer_given_trace(table, False),
          "phi": phi(table)}


# --------------------------------------------------------------------------- experiment set-up

VARIANTS = ("none", "correct", "incorrect", "mixed")
# What each variant trains: (objective.name, objective.format). `none` is answer-only SFT with the
# label record of the multitask view (a combined-format record without a rationale has no answer
# marker, so its generated answer could not be read back); the others train "<trace> Answer: <label>".
VARIANT_OBJECTIVES = {"none": ("baseline", "multitask"), "correct": ("cot", "rationale_answer"),
                      "incorrect": ("cot", "rationale_answer"), "mixed": ("cot", "rationale_answer")}
CORRUPTED_SUFFIX = "-corrupted"


def configure(config, variant: str):
  """Sets `config.traces.variant` and the objective it trains (VARIANT_OBJECTIVES); returns config."""
  if variant not in VARIANTS:
    raise ValueError(f"trace variant {variant!r}: expected one of {VARIANTS}")
  config.traces.variant = variant
  config.objective.name, config.objective.format = VARIANT_OBJECTIVES[variant]
  config.name = f"traces-{variant}"
  return config


def _check_config(config) -> None:
  t = config.traces
  if t.variant not in VARIANTS:
    raise ValueError(f"config.traces.variant={t.variant!r}: expected one of {VARIANTS}")
  if not 0.0 <= float(t.corrupt_rate) <= 1.0:
    raise ValueError(f"config.traces.corrupt_rate={t.corrupt_rate}: must be in [0, 1]")
  name, fmt = config.objective.name, config.objective.get("format", "multitask")
  if t.variant == "none":
    if name != "baseline":
      raise ValueError(f"config.traces.variant='none' trains on answers alone but config.objective.name={name!r}; "
                       f"use --config=configs/traces.py:none (objective baseline, format multitask)")
  elif name == "baseline" or fmt == "multitask":
    raise ValueError(f"config.traces.variant={t.variant!r} trains on traces: it needs objective cot with a combined "
                     f"format (rationale_answer or answer_rationale), got {name!r} / {fmt!r}; use "
                     f"--config=configs/traces.py:{t.variant}")


def training_rationales(decomposer: Decomposer, examples: Sequence[Example],
                        source: Mapping[str, Sequence[Rationale]], traces_config
                        ) -> tuple[dict[str, list[Rationale]], dict[str, Any]]:
  """The training traces of `traces_config.variant`, and counts of what was done.

  none: no traces. correct: each example's gold trace. incorrect: the gold trace, with
  probability corrupt_rate replaced by one whose `corrupt_step` is wrong. mixed: the gold trace
  and, with probability corrupt_rate, a corrupted one beside it (each record half the weight
  under objective.mix="both"; one of the two per epoch under "sample"). Draws depend only on
  (traces.seed, example id), so every run, host and resume corrupts the same examples the same way.
  """
  variant, which = traces_config.variant, str(traces_config.corrupt_step)
  rate, seed = float(traces_config.corrupt_rate), int(traces_config.get("seed", 0))
  if variant in ("incorrect", "mixed"):
    decomposer.step_names(which)  # fail early on a bad step name
  out: dict[str, list[Rationale]] = {}
  counts = collections.Counter()
  corrupted_id = decomposer.prompt_id + CORRUPTED_SUFFIX
  for ex in examples:
    gold = decomposer.gold(ex, source.get(ex.id, ()))
    if gold is None:
      counts["no_gold"] += 1
      continue
    if variant == "none":
      continue
    keep = [trace_rationale(ex, gold, decomposer.prompt_id)]
    rng = random.Random(f"{seed}:{ex.id}")
    if variant in ("incorrect", "mixed") and rng.random() < rate:
      wrong = corrupt(decomposer, ex, gold, which, rng)
      if wrong is None:
        counts["uncorruptible"] += 1
      else:
        counts["corrupted"] += 1
        bad = trace_rationale(ex, wrong, corrupted_id, sample_index=len(keep) if variant == "mixed" else 0)
        keep = keep + [bad] if variant == "mixed" else [bad]
    out[ex.id] = keep
    counts["traces"] += len(keep)
  return out, {"variant": variant, "corrupt_step": which, "corrupt_rate": rate,
               "train_examples": len(examples), **dict(sorted(counts.items()))}


def score(decomposer: Decomposer, examples: Sequence[Example], generated: Sequence[str],
          predictions: Sequence[str], golds: Mapping[str, list[Step] | None], samples: int = 5
          ) -> dict[str, Any]:
  """The trace block of one evaluation: per-step and trace accuracy, the trace x answer table,
  P(answer ok | trace ok / wrong), phi, the same per gold class, and a few samples to read.

  A trace is correct when every non-answer step verifies. The answer step is the Evaluator's
  reading of the answer (`predictions`), verified on normalised text; examples without gold
  steps are counted and left out."""
  names = [name for name, _ in decomposer.specs]
  kinds = dict(decomposer.specs)
  checks, trace_ok, answer_ok, classes, shown = [], [], [], [], []
  no_gold = malformed = 0
  class_name = next((n for n, k in decomposer.specs if k == CLASSIFICATION), None)
  for ex, text, prediction in zip(examples, generated, predictions, strict=True):
    gold = golds.get(ex.id)
    if gold is None:
      no_gold += 1
      continue
    values = decomposer.parse(text)
    values[decomposer.answer_name] = prediction.strip() or None  # no answer read: unreadable, like a bad field
    malformed += any(values[n] is None for n in names)
    check = {s.name: verify(s.kind, values[s.name], s.value) for s in gold}
    checks.append(check)
    trace_ok.append(all(check[n] for n in names if kinds[n] != ANSWER))
    answer_ok.append(check[decomposer.answer_name])
    classes.append(next((s.value for s in gold if s.name == class_name), ""))
    if len(shown) < samples:
      shown.append({"id": ex.id, "generated": text, "gold": format_trace(gold)})
  n = len(checks)
  block: dict[str, Any] = {
      "examples": n,
      "no_gold": no_gold,
      "answer_accuracy": sum(answer_ok) / n if n else None,
      "trace_accuracy": sum(trace_ok) / n if n else None,
      "malformed": malformed / n if n else None,  # some step unreadable (missing, repeated, bad value)
      "step_accuracy": step_accuracy(checks, names),
      **correlation_block(trace_ok, answer_ok),
  }
  by_class = collections.defaultdict(list)
  for c, t, a in zip(classes, trace_ok, answer_ok):
    by_class[c].append((t, a))
  block["by_class"] = {c: {"examples": len(v), "answer_accuracy": sum(a for _, a in v) / len(v),
                           "trace_accuracy": sum(t for t, _ in v) / len(v)} for c, v in sorted(by_class.items())}
  block["samples"] = shown
  return block


@dataclasses.dataclass
class Scorer:
  """What the Evaluator calls: (examples, generated texts, predicted answers) -> trace block."""
  decomposer: Decomposer
  golds: dict[str, list[Step] | None]
  training: dict[str, Any]

  def __call__(self, examples: Sequence[Example], generated: Sequence[str], predictions: Sequence[str]
               ) -> dict[str, Any]:
    block = score(self.decomposer, examples, generated, predictions, self.golds)
    block["training"] = self.training
    return block


def setup(config, dataset) -> tuple[Any, Callable | None]:
  """(dataset for training, trace scorer or None). Without `config.traces` the dataset is returned
  as it is and the scorer is None, so other settings are untouched.

  The training split's rationales become the variant's traces; dev and test keep (or get) their
  gold traces, which rationale perplexity reads, and the scorer checks generated text against
  gold steps computed before any corruption."""
  traces_config = config.get("traces") if hasattr(config, "get") else None
  if traces_config is None:
    return dataset, None
  _check_config(config)
  decomposer = decomposer_for(dataset.task)
  rationales = dict(dataset.rationales)
  train, info = training_rationales(decomposer, dataset.splits.get("train", []), dataset.rationales,
                                    traces_config)
  for ex in dataset.splits.get("train", []):
    rationales.pop(ex.id, None)
  rationales.update(train)
  golds: dict[str, list[Step] | None] = {}
  for split in ("dev", "test"):
    for ex in dataset.splits.get(split, []):
      golds[ex.id] = gold = decomposer.gold(ex, dataset.rationales.get(ex.id, ()))
      if gold is not None:
        rationales[ex.id] = [trace_rationale(ex, gold, decomposer.prompt_id)]
  return dataclasses.replace(dataset, rationales=rationales), Scorer(decomposer, golds, info)
