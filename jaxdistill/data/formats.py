"""Objective view: which (source, target) sequences an example yields.

Distilling Step-by-Step multi-task format: the same input text twice, with a task
prefix, once predicting the label ("[label] ...") and once the rationale
("[rationale] ..."). Settings differ only in which rationales become records:

  baseline  label record only
  human     label + human explanations
  cot       label + teacher rationales (objective.rationales: all | first | correct)
  hybrid    label + human explanations + teacher rationales, weighted by
            objective.human_weight / objective.teacher_weight

objective.mix: "both" keeps every selected rationale, each weighted so that an
example's rationale weights sum to 1 (an example with three rationales counts as
much as one with one); "sample" keeps exactly one rationale per example per epoch
(hybrid: the source is drawn with probability proportional to its weight, then one
rationale of that source uniformly), so the records change per epoch: use
`epoch_records` / `records_per_epoch` with the pipeline's callable form.

objective.format chooses how label and rationale meet a target:
  multitask         the records above: a label record and rationale records, each with its
                    task prefix (Distilling Step-by-Step; every kind of student)
  rationale_answer  chain of thought: one record per rationale, target
                    "<rationale> Answer: <label>"; the answer is read after the marker
  answer_rationale  answer first (Post-Semantic-Thinking): "<label> Explanation: <rationale>";
                    generation can stop once the answer is out
In the combined formats a record's target has parts with their own task ids (the rationale
tokens count as RATIONALE, the marker and answer as LABEL), so the same loss terms apply;
an example's answer weights sum to 1 however many rationales it has. Examples without a
rationale get a target with the answer alone ("Answer: <label>" in rationale_answer, so the
answer is read the same way).

The label/rationale balance (alpha) is applied in the loss, never here: `weight` is
only the within-task multiplier of a record's target tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from jaxdistill.data.examples import Example, Rationale
from jaxdistill.data.sources.common import cfg_get

LABEL = 0
RATIONALE = 1
TASK_PREFIX = {LABEL: "[label] ", RATIONALE: "[rationale] "}
OBJECTIVES = ("baseline", "human", "cot", "hybrid")
FORMATS = ("multitask", "rationale_answer", "answer_rationale")
ANSWER_MARK = " Answer: "  # rationale_answer: the answer follows it
EXPLANATION_MARK = " Explanation: "  # answer_rationale: the rationale follows it
TEACHER_SELECTIONS = ("all", "first", "correct")
MIXES = ("both", "sample")
LABEL_SOURCES = ("gold", "teacher")


@dataclasses.dataclass(frozen=True)
class Seq2SeqRecord:
  source: str  # e.g. "[label] story: ... question: ..."
  target: str  # the label, or a rationale text
  task_id: int  # LABEL=0, RATIONALE=1
  weight: float  # loss weight multiplier of this record's target tokens
  example_id: str
  class_id: int = -1  # label records of a classification task: the label's index (encoder heads)
  # Combined formats: the target as (text, task_id, weight) parts, tokenized part by part; empty
  # for single-task records (then `target`, `task_id` and `weight` apply to every token).
  parts: tuple[tuple[str, int, float], ...] = ()
  rationale: str = ""  # the rationale text a rationale record teaches (key of its semantic target)

  @property
  def has_rationale(self) -> bool:
    return self.task_id == RATIONALE or any(task == RATIONALE for _, task, _ in self.parts)


def input_text(ex: Example) -> str:
  """The example's fields in their given order: "premise: ... hypothesis: ..."."""
  return " ".join(f"{k}: {v}" for k, v in ex.inputs.items())


def label_prompt(ex: Example) -> str:
  """Source text that decodes the label (training and evaluation)."""
  return TASK_PREFIX[LABEL] + input_text(ex)


def rationale_prompt(ex: Example) -> str:
  """Source text that decodes a rationale."""
  return TASK_PREFIX[RATIONALE] + input_text(ex)


def cot_prompt(ex: Example) -> str:
  """Source text of the combined formats (one target holds answer and rationale)."""
  return input_text(ex)


def combined_record(ex: Example, answer: str, rationale: str | None, fmt: str, weight: float,
                    labels: Sequence[str] | None = None) -> Seq2SeqRecord:
  """A record whose target holds the answer and (optionally) a rationale, in `fmt` order."""
  if rationale is None and fmt == "rationale_answer":  # "Answer: <label>": parse_answer reads it
    parts = ((ANSWER_MARK.lstrip() + answer, LABEL, weight),)
  elif rationale is None:
    parts = ((answer, LABEL, weight),)
  elif fmt == "rationale_answer":
    parts = ((rationale, RATIONALE, weight), (ANSWER_MARK + answer, LABEL, weight))
  elif fmt == "answer_rationale":
    # The marker ends the answer, so it is learned with it: a student trained without token loss
    # on the rationale (PST's semantic loss) still learns where its answer stops.
    parts = ((answer + EXPLANATION_MARK.rstrip(), LABEL, weight), (" " + rationale, RATIONALE, weight))
  else:
    raise ValueError(f"config.objective.format={fmt!r}: expected one of {FORMATS}")
  class_id = list(labels).index(answer) if labels is not None and answer in labels else -1
  task = RATIONALE if rationale is not None else LABEL
  return Seq2SeqRecord(cot_prompt(ex), "".join(p[0] for p in parts), task, weight, ex.id, class_id, parts,
                       rationale or "")


def parse_answer(text: str, fmt: str) -> str:
  """The answer in a generated target of format `fmt` (the text itself for multitask)."""
  if fmt == "rationale_answer":
    _, mark, tail = text.rpartition(ANSWER_MARK.strip())
    return tail.strip() if mark else ""
  if fmt == "answer_rationale":
    return text.split(EXPLANATION_MARK.strip(), 1)[0].strip()
  return text.strip()


def parse_rationale(text: str, fmt: str) -> str:
  """The rationale in a generated target of format `fmt` ("" where it has none: multitask label
  text, or an answer-first target decoded only up to its answer)."""
  if fmt == "rationale_answer":
    head, mark, _ = text.rpartition(ANSWER_MARK.strip())
    return head.strip() if mark else text.strip()
  if fmt == "answer_rationale":
    _, mark, tail = text.partition(EXPLANATION_MARK.strip())
    return tail.strip() if mark else ""
  return ""


def label_record(ex: Example, labels: Sequence[str] | None, target: str | None = None,
                 fmt: str = "multitask") -> Seq2SeqRecord:
  """The record that predicts the label (training and evaluation); `class_id` is the label's
  index in `labels` when the task has a label set. In the combined formats the prompt has no
  task prefix and the target is the answer alone."""
  target = ex.label if target is None else target
  class_id = list(labels).index(target) if labels is not None and target in labels else -1
  prompt = label_prompt(ex) if fmt == "multitask" else cot_prompt(ex)
  return Seq2SeqRecord(prompt, target, LABEL, 1.0, ex.id, class_id)


def teacher_label(ex: Example, rationales: Sequence[Rationale], labels: Sequence[str] | None) -> str:
  """Majority teacher answer (ties: the answer seen first; answers outside `labels` are
  parse failures and ignored); the gold label when no teacher answered."""
  answers = [r.teacher_answer for r in rationales if r.teacher_answer]
  if labels is not None:
    answers = [a for a in answers if a in labels]
  if not answers:
    return ex.label
  return collections.Counter(answers).most_common(1)[0][0]


def select_teacher(rationales: Sequence[Rationale], selection: str) -> list[Rationale]:
  """objective.rationales: all | first (lowest (teacher, prompt_id, sample_index)) | correct."""
  if selection == "all":
    return list(rationales)
  if selection == "first":
    return sorted(rationales, key=lambda r: (r.teacher, r.prompt_id, r.sample_index))[:1]
  if selection == "correct":
    return [r for r in rationales if r.teacher_correct]
  raise ValueError(f"config.objective.rationales={selection!r}: expected one of {TEACHER_SELECTIONS}")


def _randint(rng: Any, n: int) -> int:
  if isinstance(rng, np.random.Generator):
    return int(rng.integers(n))
  if isinstance(rng, random.Random):
    return rng.randrange(n)
  raise TypeError(f"objective.mix='sample' needs an rng (np.random.Generator or random.Random), got {rng!r}")


def _uniform(rng: Any) -> float:
  if isinstance(rng, np.random.Generator):
    return float(rng.random())
  if isinstance(rng, random.Random):
    return rng.random()
  raise TypeError(f"objective.mix='sample' needs an rng (np.random.Generator or random.Random), got {rng!r}")


def rationale_sources(ex: Example, rationales: Sequence[Rationale], objective_config: Any
                      ) -> list[tuple[str, list[str], float]]:
  """(kind, texts, relative weight) of every rationale source the objective trains on
  ("human" explanations, "teacher" rationales), texts empty where `ex` has none of that kind."""
  name = cfg_get(objective_config, "name", "baseline")
  hybrid = name == "hybrid"
  out = []
  if name in ("human", "hybrid"):
    w = float(cfg_get(objective_config, "human_weight", 1.0)) if hybrid else 1.0
    if w > 0:
      out.append(("human", [h for h in ex.human_explanations if h and h.strip()], w))
  if name in ("cot", "hybrid"):
    w = float(cfg_get(objective_config, "teacher_weight", 1.0)) if hybrid else 1.0
    if w > 0:
      selected = select_teacher(rationales, cfg_get(objective_config, "rationales", "all"))
      out.append(("teacher", [r.rationale for r in selected if r.rationale and r.rationale.strip()], w))
  return out


def rationale_coverage(examples: Sequence[Example], rationales: Mapping[str, Sequence[Rationale]],
                       objective_config: Any) -> dict[str, float]:
  """Per rationale kind the objective trains on, the fraction of `examples` that have one."""
  have: collections.Counter[str] = collections.Counter()
  kinds: list[str] = []
  for ex in examples:
    for kind, texts, _ in rationale_sources(ex, rationales.get(ex.id, ()), objective_config):
      if kind not in kinds:
        kinds.append(kind)
      have[kind] += bool(texts)
  return {kind: have[kind] / len(examples) for kind in kinds}


def records_for_example(ex: Example, rationales: Sequence[Rationale], objective_config: Any,
                        labels: Sequence[str] | None, rng: Any = None) -> list[Seq2SeqRecord]:
  """The records `ex` yields under `objective_config` (config.objective).

  `rationales` are the example's teacher rationales; `rng` is only used when
  objective.mix == "sample". Examples without any rationale of the needed kind just
  get their label record.
  """
  name = cfg_get(objective_config, "name", "baseline")
  if name not in OBJECTIVES:
    raise ValueError(f"config.objective.name={name!r}: expected one of {OBJECTIVES} for the seq2seq view")
  fmt = cfg_get(objective_config, "format", "multitask")
  if fmt not in FORMATS:
    raise ValueError(f"config.objective.format={fmt!r}: expected one of {FORMATS}")
  mix = cfg_get(objective_config, "mix", "both")
  if mix not in MIXES:
    raise ValueError(f"config.objective.mix={mix!r}: expected one of {MIXES}")
  label_source = cfg_get(objective_config, "label_source", "gold")
  if label_source not in LABEL_SOURCES:
    raise ValueError(f"config.objective.label_source={label_source!r}: expected one of {LABEL_SOURCES}")
  rationales = list(rationales or ())

  target = ex.label if label_source == "gold" else teacher_label(ex, rationales, labels)
  out = [label_record(ex, labels, target)] if fmt == "multitask" else []

  sources = [(texts, w) for _, texts, w in rationale_sources(ex, rationales, objective_config) if texts]
  if not sources:
    return out or [combined_record(ex, target, None, fmt, 1.0, labels)]

  prompt = rationale_prompt(ex)
  total = sum(w for _, w in sources)

  def record(text: str, weight: float) -> Seq2SeqRecord:
    if fmt == "multitask":
      return Seq2SeqRecord(prompt, text, RATIONALE, weight, ex.id, rationale=text)
    return combined_record(ex, target, text, fmt, weight, labels)

  if mix == "both":
    for texts, w in sources:
      for t in texts:
        out.append(record(t, w / total / len(texts)))
    return out
  # mix == "sample": one source (prob. proportional to weight), then one of its rationales.
  u, acc, chosen = _uniform(rng) * total, 0.0, sources[-1][0]
  for texts, w in sources:
    acc += w
    if u < acc:
      chosen = texts
      break
  out.append(record(chosen[_randint(rng, len(chosen))], 1.0))
  return out


def epoch_records(examples: Sequence[Example], rationales: Mapping[str, Sequence[Rationale]],
                  objective_config: Any, labels: Sequence[str] | None, *, seed: int = 0,
                  epoch: int = 0) -> list[Seq2SeqRecord]:
  """All records of `examples` for one epoch (the rng depends only on seed and epoch)."""
  rng = np.random.default_rng([int(seed), int(epoch)])
  out: list[Seq2SeqRecord] = []
  for ex in examples:
    out.extend(records_for_example(ex, rationales.get(ex.id, ()), objective_config, labels, rng))
  return out


def resamples_per_epoch(objective_config: Any) -> bool:
  """True when the records differ between epochs (mix="sample" with rationales in play)."""
  return (cfg_get(objective_config, "mix", "both") == "sample"
          and cfg_get(objective_config, "name", "baseline") != "baseline")


def records_per_epoch(examples: Sequence[Example], rationales: Mapping[str, Sequence[Rationale]],
                      objective_config: Any, labels: Sequence[str] | None, *, seed: int = 0
                      ) -> Sequence[Seq2SeqRecord] | Callable[[int], list[Seq2SeqRecord]]:
  """What the train pipeline takes: a fixed list, or `epoch -> records` when sampling.

  Every epoch has the same number of records (one label record per example plus one
  rationale record per example that has any), which the pipeline relies on.
  """
  if not resamples_per_epoch(objective_config):
    return epoch_records(examples, rationales, objective_config, labels, seed=seed)
  return lambda epoch: epoch_records(examples, rationales, objective_config, labels, seed=seed, epoch=epoch)


def tokenizer_corpus(examples: Iterable[Example], rationales: Mapping[str, Sequence[Rationale]],
                     labels: Sequence[str] | None = None) -> list[str]:
  """Texts to train a tokenizer on: both prompts, labels, explanations, rationales (in a
  fixed order, so the trained tokenizer is deterministic)."""
  texts: list[str] = list(labels or ())
  for ex in examples:
    texts += [label_prompt(ex), rationale_prompt(ex), ex.label, *ex.human_explanations]
    texts += [r.rationale for r in rationales.get(ex.id, ())]
  return texts
