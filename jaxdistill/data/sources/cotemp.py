"""CoTempQA (co-temporal QA over Wikidata facts, Su et al. 2024) through Hugging Face `datasets`.

A row is {"question", "facts": [str, ...], "answer": [str, ...], "triple_element", "index"}, one
split (or file) per co-temporal scenario: equal, overlap, during, mix. `config.data.path`:
  - "" -> `datasets.load_dataset(config.data.hf_name or "Warrieryes/CotempQA")`, whose splits
    (or a row's "scenario" field) name the scenario;
  - a directory -> its *.json / *.jsonl / *.parquet files, the scenario named by the file
    (equal.json, overlap.json, during.json, mix.json, as the release ships them).
The benchmark has no train/dev/test split: the rows are shuffled with `config.data.seed`, the first
`config.data.test_size` (default 1000) are test, the next `dev_size` dev, the rest train
(`max_train_examples` caps it).

Example: inputs {"context": "[1] fact [2] fact ...", "question"}, label = the answers joined by
" and ". Its trace (jaxdistill/traces/), written by rule:
  relation  the co-temporal scenario (an annotation: not recomputable from the text, so the gold
            trace travels as the "rule" rationale and evaluation reads it from there)
  facts     the facts the answer rests on: the fact the question's "While ..." clause describes
            (most words in common) and every fact that names an answer in a relation the
            question asks about (it shares a content word with the question)
  answer    the label
Rows without an answer or without facts are skipped and counted (skipped["no_answer"]).
"""

from __future__ import annotations

import os
import random
import re
from typing import Any, Mapping, Sequence

from etils import epath

from jaxdistill.data.examples import DataError, Example
from jaxdistill.data.sources.common import (Dataset, ErrorPolicy, bad_record, cfg_get, check_utf8_file, merge_skipped,
                                            relabel_split)
from jaxdistill.traces.decomposers import Decomposer, register, trace_rationale
from jaxdistill.traces.steps import ANSWER, CLASSIFICATION, RETRIEVAL, Step, count_items, number_items

TASK = "cotemp"
DEFAULT_NAME = "Warrieryes/CotempQA"
SCENARIOS = ("equal", "overlap", "during", "mix")
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
ANSWER_JOIN = " and "
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> set[str]:
  return set(_WORD.findall(text.lower()))


_STOP = frozenset("a an the of in on at to for from and or by with as is was were did do does which who whom what "
                  "while during same time period span interval identical also".split())


def _content(text: str, drop: set[str] = frozenset()) -> set[str]:
  return {w for w in _words(text) if w not in _STOP and w not in drop and not w.isdigit()}


def support_facts(question: str, facts: Sequence[str], answers: Sequence[str]) -> tuple[int, ...]:
  """1-based indices of the facts the answer rests on (the rule described in the module doc).

  A fact naming an answer counts when it also shares a content word with the question (the
  subject or the relation's object), so a fact about the answer entity in another relation
  ("Omar Reyes attended Hill University") is left out; if that leaves none, all naming facts count."""
  named = {i for i, f in enumerate(facts, 1) if any(a.strip() and a.strip().lower() in f.lower() for a in answers)}
  answer_words = set().union(*(_words(a) for a in answers))
  asked = _content(question, answer_words)
  related = {i for i in named if _content(facts[i - 1], answer_words) & asked}
  named = related or named
  m = re.match(r"\s*while\s+([^,?]+)", question, flags=re.IGNORECASE)
  if m:
    clause = _words(m.group(1))
    best = max(((len(clause & _words(f)), -i) for i, f in enumerate(facts, 1) if i not in named), default=None)
    if best and best[0] > 0:
      named.add(-best[1])
  return tuple(sorted(named))


def example_from_row(row: Mapping[str, Any], scenario: str, split: str, index: int, where: str
                     ) -> tuple[Example, list[Step]] | None:
  """One row -> (Example, gold steps); None for a row without answer or facts; DataError when malformed."""
  question = row.get("question")
  if not isinstance(question, str) or not question.strip():
    raise bad_record("missing_field", f"{where}: missing field 'question'")
  facts, answers = row.get("facts"), row.get("answer")
  if isinstance(answers, str):
    answers = [answers]
  if facts is not None and not isinstance(facts, (list, tuple)):
    raise bad_record("bad_field", f"{where}: field 'facts' must be a list of strings")
  if answers is not None and not isinstance(answers, (list, tuple)):
    raise bad_record("bad_field", f"{where}: field 'answer' must be a list of strings")
  facts = [str(f) for f in facts or () if str(f).strip()]
  answers = [str(a).strip() for a in answers or () if str(a).strip()]
  if not facts or not answers:
    return None
  row_id = index if row.get("index") is None else row["index"]
  ex = Example(id=f"{TASK}-{scenario}-{row_id}", task=TASK,
               inputs={"context": number_items(facts), "question": " ".join(question.split())},
               label=ANSWER_JOIN.join(answers), split=split)
  steps = DECOMPOSER.steps({"relation": scenario, "facts": support_facts(question, facts, answers),
                            "answer": ex.label})
  return ex, steps


def _scenario_files(path: str) -> tuple[str, dict[str, list[str]]]:
  by_builder: dict[str, dict[str, list[str]]] = {}
  # Listed through epath (local or remote); `datasets` reads remote files through fsspec (gcsfs for gs://).
  for f in sorted(os.fspath(p) for p in epath.Path(path).iterdir() if not p.name.startswith(".")):
    ext = os.path.splitext(f)[1].lower()
    if ext not in BUILDERS or not epath.Path(f).is_file():
      continue
    words = set(re.split(r"[^a-z]+", os.path.basename(f).lower()))
    found = [s for s in SCENARIOS if s in words]
    if len(found) != 1:
      raise DataError(f"{f}: can't tell its scenario from the name (want one of {list(SCENARIOS)})")
    if BUILDERS[ext] == "json":
      check_utf8_file(f)  # `datasets`' own error names neither file nor line
    by_builder.setdefault(BUILDERS[ext], {}).setdefault(found[0], []).append(f)
  if not by_builder:
    raise FileNotFoundError(f"{path}: no *.json, *.jsonl or *.parquet files")
  if len(by_builder) > 1:
    raise DataError(f"{path}: mixed file formats {sorted(by_builder)}; keep one format per directory")
  return by_builder.popitem()


def _load_rows(config_data) -> dict[str, tuple[Any, str]]:
  """hf split -> (rows, `where` prefix)."""
  import datasets  # pylint: disable=g-import-not-at-top
  path = cfg_get(config_data, "path", "") or ""
  if path and epath.Path(path).is_dir():
    builder, data_files = _scenario_files(path)
    dd = datasets.load_dataset(builder, data_files=data_files)
    return {s: (dd[s], os.path.basename(fs[0]) if len(fs) == 1 else f"{path} [{s}]") for s, fs in data_files.items()}
  name = path or cfg_get(config_data, "hf_name", "") or DEFAULT_NAME
  dd = datasets.load_dataset(name)
  return {s: (dd[s], f"{name} [{s}]") for s in dd}


def load(config_data) -> Dataset:
  policy = ErrorPolicy(cfg_get(config_data, "on_error", "raise"))
  unusable = 0
  rows: list[tuple[Example, list[Step]]] = []
  for hf_split, (split_rows, where) in sorted(_load_rows(config_data).items()):
    for i, row in enumerate(split_rows):
      row = dict(row)
      scenario = str(row.get("scenario") or hf_split).lower()
      at = f"{where}: row {i + 1}"
      try:
        if scenario not in SCENARIOS:
          raise bad_record("unknown_label", f"{at}: scenario {scenario!r} (from the split or the 'scenario' "
                                            f"field) is not one of {list(SCENARIOS)}")
        made = example_from_row(row, scenario, "train", i, at)
      except DataError as e:
        policy.handle(e)
        continue
      if made is None:
        unusable += 1
      else:
        rows.append(made)
  rows.sort(key=lambda r: r[0].id)
  random.Random(int(cfg_get(config_data, "seed", 0))).shuffle(rows)
  test_size = int(cfg_get(config_data, "test_size", 1000))
  dev_size = int(cfg_get(config_data, "dev_size", 1000))
  if test_size + dev_size >= len(rows):
    raise ValueError(f"CoTempQA: test_size={test_size} + dev_size={dev_size} leave no training examples "
                     f"(only {len(rows)} rows); set smaller config.data.test_size / dev_size")
  parts = {"test": rows[:test_size], "dev": rows[test_size:test_size + dev_size],
           "train": rows[test_size + dev_size:]}
  cap = int(cfg_get(config_data, "max_train_examples", -1))
  if cap >= 0:
    parts["train"] = parts["train"][:cap]
  splits, rationales = {}, {}
  for split in ("train", "dev", "test"):
    splits[split] = relabel_split([ex for ex, _ in parts[split]], split)
    for ex, steps in zip(splits[split], (s for _, s in parts[split])):
      rationales[ex.id] = [trace_rationale(ex, steps, DECOMPOSER.prompt_id)]
  return Dataset(task=TASK, splits=splits, rationales=rationales, labels=None,
                 skipped=merge_skipped(policy.as_dict(), {"no_answer": unusable} if unusable else {}))


class CoTempDecomposer(Decomposer):
  """relation (the co-temporal scenario) -> facts (supporting fact numbers) -> answer."""

  task = TASK
  specs = (("relation", CLASSIFICATION), ("facts", RETRIEVAL), ("answer", ANSWER))
  classes = SCENARIOS

  def num_items(self, example: Example) -> int:
    return count_items(example.inputs.get("context", ""))


DECOMPOSER = register(CoTempDecomposer())  # traces.decomposer_for(task) finds it once this module is loaded
