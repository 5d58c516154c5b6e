"""Reader of the Distilling Step-by-Step release (Hsieh et al., 2023): records + PaLM CoT.

Layout (per task directory, e.g. ../shared/data/dss/esnli):

    {prefix}_{split}.json           one JSON object per line (or a JSON list)
    llm/{split}_CoT_{N}.json        a JSON list of raw PaLM completions per file; concatenated
                                    in N order they align index by index with the records

Splits as released: esnli valid/test (train if present), cqa train/test, svamp train/test,
anli (same layout as esnli; the release names files like anli1_train.json) train/valid/test.

A completion is the teacher's answer to the last few-shot exemplar and usually runs on
into an invented next exemplar; `teachers/parsers.py` cuts it off (at the first blank line, or
at the next "Premise:" / "Q:" line) and splits off the answer after the marker, as the release's
own reader (data_utils.py) does:

    esnli       "<rationale>\\nAnswer: <label>"
    anli        "<rationale> So the answer is <label>." (or "Answer: <label>")
    cqa         "<rationale> So the answer is (<letter>) <choice>."
    svamp       "<rationale> The answer is (<equation>)."

`teacher_answer` is always a member of the answer space (a label, one of the example's
choices, an equation that evaluates) or "" when the completion can't be parsed; such
rationales are kept (teacher_correct=False) and counted as `unparsed`. A few are expected
(PaLM hedges between two choices or runs out of tokens); more than `MAX_UNPARSED_FRACTION`
of a split means the reader and the files disagree (another task's completions, a changed
format) and is a DataError naming the file and the first unparsed completion, never a
summary reporting an accuracy near 0; with on_error="skip" they are counted in `skipped` as
"unparsed_completions" and the rows kept.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from typing import Any, Mapping, Sequence

from etils import epath

from jaxdistill.data.examples import DataError, Example, LABEL_SETS, Rationale
from jaxdistill.data.sources.common import (Dataset, ErrorPolicy, bad_record, cap_train, cfg_get, decode_utf8,
                                            group_rationales, merge_skipped, relabel_split, require_examples,
                                            split_off_dev)
from jaxdistill.teachers import parsers
# Parsing lives in teachers/parsers.py (every teacher is read alike); these names stay importable here.
from jaxdistill.teachers.parsers import (NLI_LABELS, NLI_TASKS, Parsed, choice_list, cut_completion,
                                         equations_equal, format_choices, safe_eval)

TEACHER = "palm-540b"
PROMPT_ID = "dss-cot"
TASKS = ("esnli", "cqa", "svamp", "anli")
CQA_LETTERS = parsers.CHOICE_LETTERS
SPLIT_ORDER = ("train", "valid", "test")
SVAMP_TOLERANCE = parsers.EQUATION_TOLERANCE
MAX_UNPARSED_FRACTION = 0.05  # of a split's completions; more is a DataError (module docstring)
# A split may always hold this many unparsed completions: in a split of a few records one truncated
# completion is more than 5% without meaning that the reader is wrong.
UNPARSED_ALWAYS_ALLOWED = 2


# --- completions ----------------------------------------------------------------------------

def parse_completion(task: str, completion: str, example: Example) -> Parsed:
  """Splits a PaLM completion into rationale and answer, and checks the answer (`parsers.parse`)."""
  if task not in TASKS:
    raise ValueError(f"unknown DSS task {task!r} (expected one of {TASKS})")
  return parsers.parse(task, completion, example)


# --- records ----------------------------------------------------------------------------------

def _str_field(rec: Mapping, name: str, where: str, *, allow_empty: bool = False) -> str:
  if name not in rec or rec[name] is None:
    raise bad_record("missing_field", f"{where}: missing field {name!r}")
  value = rec[name]
  if not isinstance(value, str):
    raise bad_record("bad_field", f"{where}: field {name!r} must be a string, got {type(value).__name__}")
  if not allow_empty and not value.strip():
    raise bad_record("empty_field", f"{where}: field {name!r} is empty")
  return value


def nli_label(value: Any, task: str, where: str) -> str:
  """0/1/2 (or "0"/"1"/"2", or the label word) -> entailment/neutral/contradiction."""
  if isinstance(value, str) and value.strip().lower() in NLI_LABELS:
    return value.strip().lower()
  try:  # a JSON true/false is no label, though Python's bool is an int
    i = int(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
  except ValueError:
    i = None
  if i is None or not 0 <= i < len(NLI_LABELS):
    labels = LABEL_SETS.get(task, NLI_LABELS)
    raise bad_record("unknown_label", f"{where}: unknown label {value!r} for task {task!r} "
                                      f"(expected 0, 1, 2 or one of {list(labels)})")
  return NLI_LABELS[i]


def nli_example(rec: Mapping, *, task: str, split: str, example_id: str, where: str,
                require_explanation: bool) -> Example:
  """e-SNLI/ANLI record -> Example (shared with the tfds and HF e-SNLI loaders)."""
  if not isinstance(rec, Mapping):
    raise bad_record("bad_record", f"{where}: expected a JSON object, got {type(rec).__name__}")
  premise = _str_field(rec, "premise", where)
  hypothesis = _str_field(rec, "hypothesis", where)
  if "label" not in rec or rec["label"] is None:
    raise bad_record("missing_field", f"{where}: missing field 'label'")
  label = nli_label(rec["label"], task, where)
  explanations = []
  for k in ("explanation_1", "explanation_2", "explanation_3"):
    if k in rec and rec[k] is not None:
      v = rec[k]
      if not isinstance(v, str):
        raise bad_record("bad_field", f"{where}: field {k!r} must be a string, got {type(v).__name__}")
      if v.strip():
        explanations.append(v.strip())
  if not explanations and isinstance(rec.get("reason"), str) and rec["reason"].strip():
    explanations.append(rec["reason"].strip())  # ANLI's annotator reason
  if require_explanation:
    first = rec.get("explanation_1")
    if first is None:
      raise bad_record("missing_field", f"{where}: missing field 'explanation_1'")
    if not isinstance(first, str) or not first.strip():
      raise bad_record("empty_explanation", f"{where}: field 'explanation_1' is empty "
                                            f"(every {task} {split} record has a human explanation)")
  return Example(id=example_id, task=task, inputs={"premise": premise, "hypothesis": hypothesis},
                 label=label, human_explanations=tuple(explanations), split=split)


def cqa_example(rec: Mapping, *, split: str, where: str) -> Example:
  if not isinstance(rec, Mapping):
    raise bad_record("bad_record", f"{where}: expected a JSON object, got {type(rec).__name__}")
  ex_id = _str_field(rec, "id", where)
  question = _str_field(rec, "question", where)
  if "choices" not in rec or rec["choices"] is None:
    raise bad_record("missing_field", f"{where}: missing field 'choices'")
  choices = rec["choices"]
  if (not isinstance(choices, list) or not 2 <= len(choices) <= len(CQA_LETTERS)
      or not all(isinstance(c, str) and c.strip() for c in choices)):
    raise bad_record("bad_field", f"{where}: field 'choices' must be a list of 2-{len(CQA_LETTERS)} "
                                  f"non-empty strings, got {choices!r}")
  answer = _str_field(rec, "answer", where)
  if answer not in choices:
    raise bad_record("unknown_label", f"{where}: answer {answer!r} is not one of the choices {choices!r}")
  explanation = _str_field(rec, "abstractive_explanation", where, allow_empty=True).strip()
  if not explanation:
    raise bad_record("empty_explanation", f"{where}: field 'abstractive_explanation' is empty")
  return Example(id=ex_id, task="cqa",
                 inputs={"question": question, "choices": format_choices([c.strip() for c in choices])},
                 label=answer, human_explanations=(explanation,), split=split)


def svamp_example(rec: Mapping, *, split: str, example_id: str, where: str) -> Example:
  if not isinstance(rec, Mapping):
    raise bad_record("bad_record", f"{where}: expected a JSON object, got {type(rec).__name__}")
  question = _str_field(rec, "input", where)
  label = _str_field(rec, "label", where)
  try:
    safe_eval(label)
  except ValueError:
    raise bad_record("unknown_label", f"{where}: label {label!r} is not an arithmetic equation") from None
  return Example(id=example_id, task="svamp", inputs={"question": question}, label=label,
                 human_explanations=(), split=split)


def example_from_record(task: str, split: str, index: int, rec: Any, where: str) -> Example:
  if task in NLI_TASKS:
    return nli_example(rec, task=task, split=split, example_id=f"{task}-{split}-{index}", where=where,
                       require_explanation=(task == "esnli" and split in ("valid", "test")))
  if task == "cqa":
    return cqa_example(rec, split=split, where=where)
  if task == "svamp":
    return svamp_example(rec, split=split, example_id=f"{task}-{split}-{index}", where=where)
  raise ValueError(f"unknown DSS task {task!r} (expected one of {TASKS})")


# --- files -----------------------------------------------------------------------------------

def _glob(directory: str, pattern: str) -> list[str]:
  """The paths in `directory` (local or remote) whose names match `pattern`; none when it is no directory."""
  d = epath.Path(directory)
  return [os.fspath(p) for p in d.glob(pattern)] if d.is_dir() else []


def task_dir(src_dir: str, task: str) -> str:
  """`src_dir` may be the release root (holding esnli/, cqa/, ...) or the task directory."""
  if task not in TASKS:
    raise ValueError(f"unknown DSS task {task!r} (expected one of {TASKS})")
  candidates = [os.path.join(src_dir, task)]
  if task == "anli":
    candidates += [os.path.join(src_dir, f"anli{r}") for r in (1, 2, 3)]
  for c in candidates:
    if epath.Path(c).is_dir():
      return c
  if _glob(src_dir, "*_*.json"):
    return src_dir
  raise FileNotFoundError(f"{src_dir}: no DSS {task} data (looked for {', '.join(candidates)} "
                          f"and *_{{split}}.json files)")


def split_files(tdir: str) -> dict[str, str]:
  """split -> records file, from `*_{split}.json` names (SVAMP.json and llm/ are ignored)."""
  found: dict[str, list[str]] = {}
  for f in _glob(tdir, "*_*.json"):
    m = re.fullmatch(r"(.+)_([A-Za-z]+)\.json", os.path.basename(f))
    if m:
      found.setdefault(m.group(2), []).append(f)
  out = {}
  for split, files in found.items():
    if len(files) > 1:
      raise DataError(f"{tdir}: several files for split {split!r}: {sorted(map(os.path.basename, files))}")
    out[split] = files[0]
  order = {s: i for i, s in enumerate(SPLIT_ORDER)}
  return dict(sorted(out.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))


def available_splits(src_dir: str, task: str) -> list[str]:
  return list(split_files(task_dir(src_dir, task)))


def cot_files(tdir: str, split: str) -> list[str]:
  """llm/{split}_CoT_{N}.json in N order."""
  files = []
  for f in _glob(os.path.join(tdir, "llm"), f"{split}_CoT_*.json"):
    m = re.fullmatch(rf"{re.escape(split)}_CoT_(\d+)\.json", os.path.basename(f))
    if m:
      files.append((int(m.group(1)), f))
  return [f for _, f in sorted(files)]


def read_records(path: str, policy: ErrorPolicy) -> list[tuple[str, Any]]:
  """[(where, record or None)] for each record position; malformed lines give None.

  Positions count every non-blank line (a bad line still takes its place), so record i
  aligns with completion i.
  """
  name = os.path.basename(path)
  data = epath.Path(path).read_bytes()
  if data.lstrip().startswith(b"["):  # a JSON list instead of JSON lines
    try:
      items = json.loads(decode_utf8(data, name))
    except json.JSONDecodeError as e:
      raise bad_record("malformed_json", f"{name}:{e.lineno}: malformed JSON ({e.msg})") from None
    return [(f"{name}: record {i + 1}", rec) for i, rec in enumerate(items)]
  out = []
  for lineno, raw in enumerate(data.splitlines(), start=1):
    if not raw.strip():
      continue
    where = f"{name}:{lineno}"
    try:
      out.append((where, json.loads(decode_utf8(raw, name, lineno))))
    except json.JSONDecodeError as e:
      policy.handle(bad_record("malformed_json", f"{where}: malformed JSON ({e.msg} at column {e.colno})"))
      out.append((where, None))
    except DataError as e:  # not UTF-8
      policy.handle(e)
      out.append((where, None))
  return out


def read_completions(files: Sequence[str]) -> list[tuple[str, Any]]:
  """Concatenated completions [(where, completion)] of the CoT files."""
  out = []
  for f in files:
    name = os.path.basename(f)
    data = epath.Path(f).read_bytes()
    try:
      items = json.loads(decode_utf8(data, name))
    except json.JSONDecodeError as e:
      raise bad_record("bad_cot_file", f"{name}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(items, list):
      raise bad_record("bad_cot_file", f"{name}: expected a JSON list of completions, "
                                       f"got {type(items).__name__}")
    out.extend((f"{name}[{i}]", c) for i, c in enumerate(items))
  return out


@dataclasses.dataclass
class SplitStats:
  examples: int = 0
  rationales: int = 0
  correct: int = 0
  unparsed: int = 0
  rationale_words: int = 0

  @property
  def accuracy(self) -> float:
    return self.correct / self.rationales if self.rationales else math.nan

  @property
  def mean_words(self) -> float:
    return self.rationale_words / self.rationales if self.rationales else math.nan


def split_stats(examples: Sequence[Example], rationales: Sequence[Rationale]) -> SplitStats:
  s = SplitStats(examples=len(examples), rationales=len(rationales))
  for r in rationales:
    s.correct += bool(r.teacher_correct)
    s.unparsed += r.teacher_answer == ""
    s.rationale_words += len(r.rationale.split())
  return s


def read_split(src_dir: str, task: str, split: str, on_error: str = "raise"
               ) -> tuple[list[Example], list[Rationale], dict[str, int]]:
  """Examples, PaLM rationales and skipped-record counts of one released split."""
  policy = ErrorPolicy(on_error)
  tdir = task_dir(src_dir, task)
  files = split_files(tdir)
  if split not in files:
    raise FileNotFoundError(f"{tdir}: no file for split {split!r} (found: {sorted(files)})")
  path = files[split]
  records = read_records(path, policy)

  completions: list[tuple[str, Any]] | None = None
  cfiles = cot_files(tdir, split)
  if not cfiles:
    logging.warning("%s: no llm/%s_CoT_*.json files; %s %s has no teacher rationales",
                    tdir, split, task, split)
  else:
    names = ", ".join(os.path.basename(f) for f in cfiles)
    try:
      completions = read_completions(cfiles)
      if len(completions) != len(records):
        raise bad_record(
            "cot_length_mismatch",
            f"{names}: {len(completions)} completions but {os.path.basename(path)} has {len(records)} "
            f"records (they must align index by index)")
    except DataError as e:
      policy.handle(e, count=len(records))  # skip: no rationale of this split can be trusted
      completions = None

  examples, rationales = [], []
  unparsed: list[str] = []  # "file[index]" of each completion without a readable answer
  seen_ids: set[str] = set()
  for i, (where, rec) in enumerate(records):
    if rec is None:  # malformed line, already counted
      continue
    try:
      ex = example_from_record(task, split, i, rec, where)
      if ex.id in seen_ids:
        raise bad_record("duplicate_id", f"{where}: duplicate id {ex.id!r}")
    except DataError as e:
      policy.handle(e)
      continue
    seen_ids.add(ex.id)
    examples.append(ex)
    if completions is None:
      continue
    cwhere, completion = completions[i]
    if not isinstance(completion, str):
      policy.handle(bad_record("bad_completion", f"{cwhere}: completion must be a string, "
                                                 f"got {type(completion).__name__}"))
      continue
    p = parse_completion(task, completion, ex)
    if not p.teacher_answer:
      unparsed.append(cwhere)
    rationales.append(Rationale(example_id=ex.id, teacher=TEACHER, prompt_id=PROMPT_ID, sample_index=0,
                                rationale=p.rationale, teacher_answer=p.teacher_answer,
                                teacher_correct=p.teacher_correct, raw=completion))
  require_examples(examples, path, len(records), policy.as_dict())
  check_unparsed(task, split, unparsed, len(rationales), policy)
  return examples, rationales, policy.as_dict()


def check_unparsed(task: str, split: str, unparsed: Sequence[str], parsed: int, policy: ErrorPolicy) -> None:
  """A DataError (counted as "unparsed_completions" with on_error=skip) when more than
  MAX_UNPARSED_FRACTION of a split's completions do not parse; `unparsed` are their places."""
  if len(unparsed) <= max(MAX_UNPARSED_FRACTION * parsed, UNPARSED_ALWAYS_ALLOWED):
    return
  policy.handle(bad_record(
      "unparsed_completions",
      f"{unparsed[0]}: the first of {len(unparsed)} of {parsed} {task} {split} completions "
      f"({len(unparsed) / parsed:.1%}, more than {MAX_UNPARSED_FRACTION:.0%}) whose answer does not parse; are "
      f"they {task} completions in the release's format (teachers/parsers.py)?"), count=len(unparsed))


# --- Dataset -----------------------------------------------------------------------------------

def assemble(task: str, by_split: Mapping[str, list[Example]], dev_size: int, max_train_examples: int,
             where: str) -> dict[str, list[Example]]:
  """Released splits -> train/dev/test (INTERFACES.md).

  No train split (e-SNLI as shipped here): train = valid minus its last dev_size, dev =
  those. A train split: train = train; dev = the last dev_size of valid if there is one,
  else the last dev_size of train. test = test, a key only when there is a test split (a cache
  may hold none). A cache whose examples already carry the assembled names (a "dev" split, e.g. a
  MoRSD selection written by jaxdistill.select) is used as written: released splits are never
  called "dev", and re-splitting would move examples.
  """
  if "dev" in by_split:
    train, dev = list(by_split.get("train", [])), list(by_split["dev"])
  elif "train" in by_split:
    train = list(by_split["train"])
    if by_split.get("valid"):
      valid = list(by_split["valid"])
      dev = valid[-dev_size:] if 0 < dev_size < len(valid) else valid
    else:
      train, dev = split_off_dev(train, dev_size, f"{where} ({task} train)")
  elif "valid" in by_split:
    train, dev = split_off_dev(by_split["valid"], dev_size, f"{where} ({task} valid)")
  else:
    raise DataError(f"{where}: {task} has neither a train nor a valid split (found: {sorted(by_split)})")
  splits = {"train": relabel_split(cap_train(train, max_train_examples), "train"),
            "dev": relabel_split(dev, "dev")}
  if by_split.get("test"):
    splits["test"] = relabel_split(by_split["test"], "test")
  return splits


def _wanted(splits: Sequence[str]) -> list[str]:
  return [s for s in splits if s in SPLIT_ORDER]


def load(config_data) -> Dataset:
  """config.data (source="dss") -> Dataset; reads an imported cache when cache_dir has one.
  splits["test"] exists only when the release (or the cache) has a test split."""
  task = cfg_get(config_data, "task", "esnli")
  if task not in TASKS:
    raise ValueError(f"config.data.task={task!r}: the dss source has tasks {TASKS}")
  path = cfg_get(config_data, "path", "") or ""
  cache_dir = cfg_get(config_data, "cache_dir", "") or ""
  dev_size = int(cfg_get(config_data, "dev_size", 1000))
  max_train = int(cfg_get(config_data, "max_train_examples", -1))
  on_error = cfg_get(config_data, "on_error", "raise")

  by_split: dict[str, list[Example]] = {}
  rationales: list[Rationale] = []
  skipped: dict[str, int] = {}
  cache = None
  if cache_dir:
    from jaxdistill.data.rationale_cache import RationaleCache  # pylint: disable=g-import-not-at-top
    if not RationaleCache.exists(cache_dir):
      raise FileNotFoundError(
          f"config.data.cache_dir={cache_dir!r} holds no rationale cache; build it with "
          f"`python -m jaxdistill.cache import-dss --task={task} --src=DIR --split=all --out={cache_dir}`")
    cache = RationaleCache.open(cache_dir)
    for ex in cache.read_examples(task=task):
      by_split.setdefault(ex.split, []).append(ex)
    source = cache.manifest.get("source", {})
    for info in source.get("imports", {}).get(task, {}).values():
      skipped = merge_skipped(skipped, info.get("skipped", {}))
  where = cache_dir or path
  if by_split and "test" not in by_split:
    logging.warning("%s: the cache holds %s splits %s but no test split (import it with --split=all)",
                    cache_dir, task, sorted(by_split))
  if not by_split:
    if not path:
      raise ValueError("config.data.path must point at the DSS release (e.g. ../shared/data/dss) "
                       "or config.data.cache_dir at an imported cache")
    for split in _wanted(available_splits(path, task)):
      exs, rats, sk = read_split(path, task, split, on_error=on_error)
      by_split[split] = exs
      rationales.extend(rats)
      skipped = merge_skipped(skipped, sk)
    where = path
  if cache is not None:
    rationales = cache.read_rationales()  # cache_dir set: rationales come from the cache
  splits = assemble(task, by_split, dev_size, max_train, where)
  ids = {ex.id for exs in splits.values() for ex in exs}
  return Dataset(task=task, splits=splits, rationales=group_rationales(rationales, ids),
                 labels=LABEL_SETS.get(task), skipped=skipped)
