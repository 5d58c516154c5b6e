"""Generic JSON-lines source: `{path}/{train,dev,test}.jsonl`, one example per line.

A line looks like

    {"id": "q7", "task": "esnli",                                  # both optional
     "inputs": {"premise": "...", "hypothesis": "..."},            # or the text fields at top level
     "label": "neutral",
     "human_explanations": ["..."],                                # optional
     "rationales": [{"rationale": "...", "teacher_answer": "neutral",   # optional; also optional:
                     "teacher": "...", "prompt_id": "...", "sample_index": 0, "teacher_correct": true}]}

This is the escape hatch for any task the built-in loaders don't know. train.jsonl is
required; without dev.jsonl the dev split is the last `dev_size` lines of train; test.jsonl
is optional (without it Dataset.splits has no "test" key). Each file that is there must be a
regular UTF-8 file with at least one example. A rationale's `teacher_correct` defaults to
`teacher_answer == label` (and to False when it has no teacher_answer). With
`config.data.cache_dir` set, rationales come from that cache instead of the lines. Bad lines
(invalid UTF-8 included) raise a DataError naming file and line, or with on_error="skip" are
counted in Dataset.skipped.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any, Mapping

from etils import epath

from jaxdistill.data.examples import DataError, Example, LABEL_SETS, Rationale, check_label
from jaxdistill.data.sources.common import (Dataset, ErrorPolicy, bad_record, cached_rationales, cap_train,
                                            cfg_get, decode_utf8, group_rationales, relabel_split, require_examples,
                                            split_off_dev)

SPLITS = ("train", "dev", "test")
RESERVED = ("id", "task", "inputs", "label", "human_explanations", "rationales", "split")
DEFAULT_TEACHER = "jsonl"
DEFAULT_PROMPT_ID = "jsonl"


def _text(value: Any, where: str, field: str) -> str:
  if value is None:
    raise bad_record("missing_field", f"{where}: missing field {field!r}")
  if isinstance(value, bool) or not isinstance(value, (str, int, float)):
    raise bad_record("bad_field", f"{where}: field {field!r} must be text, got {type(value).__name__}")
  return str(value)


def parse_line(rec: Any, *, task: str, split: str, index: int, where: str
               ) -> tuple[Example, list[Rationale]]:
  """One decoded JSON line -> (Example, its rationales); DataError on bad input."""
  if not isinstance(rec, Mapping):
    raise bad_record("bad_record", f"{where}: expected a JSON object, got {type(rec).__name__}")
  rec_task = rec.get("task", task)
  if rec_task != task:
    raise bad_record("bad_field", f"{where}: field 'task' is {rec_task!r} but this source loads {task!r}")
  if "inputs" in rec:
    raw_inputs = rec["inputs"]
    if not isinstance(raw_inputs, Mapping) or not raw_inputs:
      raise bad_record("bad_field", f"{where}: field 'inputs' must be a non-empty object")
    inputs = {str(k): _text(v, where, f"inputs.{k}") for k, v in raw_inputs.items()}
  else:
    inputs = {k: _text(v, where, k) for k, v in rec.items() if k not in RESERVED}
    if not inputs:
      raise bad_record("missing_field", f"{where}: missing field 'inputs' (and no top-level text fields)")
  if "label" not in rec or rec["label"] is None:
    raise bad_record("missing_field", f"{where}: missing field 'label'")
  label = _text(rec["label"], where, "label")
  try:
    check_label(task, label, where)
  except DataError as e:
    raise bad_record("unknown_label", str(e)) from None
  ex_id = _text(rec["id"], where, "id") if rec.get("id") is not None else f"{task}-{split}-{index}"
  hum = rec.get("human_explanations") or []
  if not isinstance(hum, list):
    raise bad_record("bad_field", f"{where}: field 'human_explanations' must be a list")
  explanations = []
  for j, h in enumerate(hum):
    h = _text(h, where, f"human_explanations[{j}]").strip()
    if not h:
      raise bad_record("empty_explanation", f"{where}: field 'human_explanations[{j}]' is empty")
    explanations.append(h)
  ex = Example(id=ex_id, task=task, inputs=inputs, label=label, human_explanations=tuple(explanations),
               split=split)

  rats_in = rec.get("rationales") or []
  if not isinstance(rats_in, list):
    raise bad_record("bad_field", f"{where}: field 'rationales' must be a list")
  rationales = []
  for j, r in enumerate(rats_in):
    field = f"rationales[{j}]"
    if isinstance(r, str):
      r = {"rationale": r}
    if not isinstance(r, Mapping):
      raise bad_record("bad_field", f"{where}: field {field!r} must be an object or a string")
    if r.get("rationale") is None:
      raise bad_record("missing_field", f"{where}: missing field '{field}.rationale'")
    answer = ""
    if r.get("teacher_answer") is not None:
      answer = _text(r["teacher_answer"], where, f"{field}.teacher_answer")
    correct = r.get("teacher_correct")
    if correct is None:
      correct = bool(answer) and answer == label
    elif not isinstance(correct, bool):
      raise bad_record("bad_field", f"{where}: field '{field}.teacher_correct' must be true/false")
    try:
      sample_index = int(r.get("sample_index", j))
    except (TypeError, ValueError):
      raise bad_record("bad_field", f"{where}: field '{field}.sample_index' must be an integer") from None
    rationales.append(Rationale(
        example_id=ex_id, teacher=str(r.get("teacher", DEFAULT_TEACHER)),
        prompt_id=str(r.get("prompt_id", DEFAULT_PROMPT_ID)), sample_index=sample_index,
        rationale=_text(r["rationale"], where, f"{field}.rationale").strip(), teacher_answer=answer,
        teacher_correct=correct, raw=str(r.get("raw", ""))))
  return ex, rationales


def read_file(path: str, task: str, split: str, policy: ErrorPolicy, seen: set[str] | None = None
              ) -> tuple[list[Example], list[Rationale]]:
  """Examples and rationales of one file; `seen` carries ids across files (ids are unique).
  A file that yields no example (empty, or every line skipped) is a DataError."""
  name = os.path.basename(path)
  examples, rationales = [], []
  seen = set() if seen is None else seen
  skipped_before = collections.Counter(policy.skipped)
  with epath.Path(path).open("rb") as f:
    index = 0
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{name}:{lineno}"
      try:
        try:
          rec = json.loads(decode_utf8(line, name, lineno))
        except json.JSONDecodeError as e:
          raise bad_record("malformed_json",
                           f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
        ex, rats = parse_line(rec, task=task, split=split, index=index, where=where)
        if ex.id in seen:
          raise bad_record("duplicate_id", f"{where}: duplicate id {ex.id!r}")
      except DataError as e:
        policy.handle(e)
        continue
      finally:
        index += 1
      seen.add(ex.id)
      examples.append(ex)
      rationales.extend(rats)
  require_examples(examples, path, index, collections.Counter(policy.skipped) - skipped_before)
  return examples, rationales


def split_file(path: str, split: str) -> str | None:
  """{path}/{split}.jsonl, or None when there is none; a DataError when the name is taken by a
  directory or a broken link (never read as "no such split")."""
  f = os.path.join(path, f"{split}.jsonl")
  if not (epath.Path(f).exists() or os.path.islink(f)):  # a broken link is an error, not "no such split"
    return None
  if not epath.Path(f).is_file():
    raise DataError(f"{f}: exists but is not a regular file; expected a JSON-lines file (or nothing)")
  return f


def load(config_data) -> Dataset:
  path = cfg_get(config_data, "path", "")
  task = cfg_get(config_data, "task", "") or "jsonl"
  if not path or not epath.Path(path).is_dir():
    raise FileNotFoundError(f"config.data.path={path!r}: expected a directory with train.jsonl "
                            f"(and optionally dev.jsonl, test.jsonl)")
  policy = ErrorPolicy(cfg_get(config_data, "on_error", "raise"))
  by_split: dict[str, list[Example]] = {}
  rationales: list[Rationale] = []
  seen: set[str] = set()
  for split in SPLITS:
    f = split_file(path, split)
    if f is not None:
      by_split[split], rats = read_file(f, task, split, policy, seen)
      rationales.extend(rats)
  if "train" not in by_split:
    raise FileNotFoundError(f"{path}: missing train.jsonl")
  train = by_split["train"]
  if "dev" in by_split:
    dev = by_split["dev"]
  else:
    dev_size = int(cfg_get(config_data, "dev_size", 1000))
    train, dev = split_off_dev(train, dev_size, os.path.join(path, "train.jsonl"))
  splits = {
      "train": relabel_split(cap_train(train, int(cfg_get(config_data, "max_train_examples", -1))), "train"),
      "dev": relabel_split(dev, "dev"),
  }
  if "test" in by_split:
    splits["test"] = relabel_split(by_split["test"], "test")
  ids = {ex.id for exs in splits.values() for ex in exs}
  from_cache = cached_rationales(config_data, ids)  # cache_dir set: rationales come from the cache
  return Dataset(task=task, splits=splits,
                 rationales=from_cache if from_cache is not None else group_rationales(rationales, ids),
                 labels=LABEL_SETS.get(task), skipped=policy.as_dict())
