"""MS MARCO QA (Microsoft Machine Reading Comprehension) through Hugging Face `datasets`.

A row is {"query", "query_type", "answers": [str], "passages": {"is_selected": [0/1, ...],
"passage_text": [str, ...], "url": [...]}, "query_id", "wellFormedAnswers"} (the hub's `ms_marco`
layout). `config.data.path`:
  - "" -> `datasets.load_dataset("ms_marco", "v2.1")`; `config.data.hf_name` may name another
    "dataset:config" (e.g. "ms_marco:v1.1");
  - a directory -> its json / jsonl / parquet / csv files, the split named by the file
    (train / validation / test, as for the HF e-SNLI source).
Splits: train = the hub's train minus its last `dev_size` rows, which are dev; test = the hub's
validation split (v2.1's test split has no public answers; without a validation split there is
no "test" key). `max_train_examples` and `max_eval_examples` cap the rows read.

Example: inputs {"question", "passages": "[1] ... [2] ..."}, label = the first answer. Its trace:
  type      the query type (description | numeric | entity | location | person)
  passages  the numbers of the passages the annotators selected (is_selected)
  answer    the label
Type and selection are annotations, not recomputable from the text: the gold trace travels as the
"rule" rationale and evaluation reads it from there. Rows without an answer ("No Answer Present.")
or without a selected passage are skipped and counted (skipped["no_answer"]).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from etils import epath

from jaxdistill.data.examples import DataError, Example
from jaxdistill.data.sources.common import (Dataset, ErrorPolicy, bad_record, cfg_get, merge_skipped, relabel_split,
                                            split_off_dev)
from jaxdistill.data.sources.hf_esnli import local_data_files
from jaxdistill.traces.decomposers import Decomposer, register, trace_rationale
from jaxdistill.traces.steps import ANSWER, CLASSIFICATION, RETRIEVAL, Step, count_items, number_items

TASK = "msmarco"
DEFAULT_NAME = "ms_marco:v2.1"
QUERY_TYPES = ("description", "numeric", "entity", "location", "person")
NO_ANSWER = "no answer present."


def example_from_row(row: Mapping[str, Any], split: str, index: int, where: str
                     ) -> tuple[Example, list[Step]] | None:
  """One row -> (Example, gold steps); None for a row without answer or selected passage."""
  query = row.get("query")
  if not isinstance(query, str) or not query.strip():
    raise bad_record("missing_field", f"{where}: missing field 'query'")
  passages = row.get("passages")
  if not isinstance(passages, Mapping) or not isinstance(passages.get("passage_text"), (list, tuple)):
    raise bad_record("missing_field", f"{where}: missing field 'passages.passage_text'")
  texts = [str(t) for t in passages["passage_text"]]
  selected = list(passages.get("is_selected") or [0] * len(texts))
  if len(selected) != len(texts):
    raise bad_record("bad_field", f"{where}: 'passages.is_selected' has {len(selected)} entries for "
                                  f"{len(texts)} passages")
  query_type = str(row.get("query_type") or "").strip().lower()
  if query_type not in QUERY_TYPES:
    raise bad_record("unknown_label", f"{where}: query_type {row.get('query_type')!r} is not one of "
                                      f"{[t.upper() for t in QUERY_TYPES]}")
  answers = [str(a).strip() for a in row.get("answers") or () if str(a).strip()]
  chosen = tuple(i for i, s in enumerate(selected, 1) if int(s))
  if not answers or answers[0].lower() == NO_ANSWER or not chosen:
    return None
  ex = Example(id=f"{TASK}-{row.get('query_id', index)}", task=TASK,
               inputs={"question": " ".join(query.split()), "passages": number_items(texts)},
               label=answers[0], split=split)
  return ex, DECOMPOSER.steps({"type": query_type, "passages": chosen, "answer": ex.label})


def _load(config_data) -> tuple[Any, dict[str, str]]:
  import datasets  # pylint: disable=g-import-not-at-top
  path = cfg_get(config_data, "path", "") or ""
  if path and epath.Path(path).is_dir():
    builder, data_files = local_data_files(path)
    dd = datasets.load_dataset(builder, data_files=data_files)
    return dd, {s: (os.path.basename(fs[0]) if len(fs) == 1 else f"{path} [{s}]") for s, fs in data_files.items()}
  name = path or cfg_get(config_data, "hf_name", "") or DEFAULT_NAME
  hub_name, _, hub_config = name.partition(":")
  dd = datasets.load_dataset(hub_name, hub_config or None)
  return dd, {s: f"{name} [{s}]" for s in dd}


def load(config_data) -> Dataset:
  dd, where = _load(config_data)
  if "train" not in dd:
    raise DataError(f"{cfg_get(config_data, 'path', '') or DEFAULT_NAME}: no train split")
  policy = ErrorPolicy(cfg_get(config_data, "on_error", "raise"))
  dev_size = int(cfg_get(config_data, "dev_size", 1000))
  limits = {"train": int(cfg_get(config_data, "max_train_examples", -1)),
            "validation": int(cfg_get(config_data, "max_eval_examples", -1))}
  if limits["train"] >= 0:
    limits["train"] += max(dev_size, 0)
  unusable = 0
  read: dict[str, list[tuple[Example, list[Step]]]] = {}
  for hf_split in ("train", "validation"):
    rows = dd[hf_split] if hf_split in dd else []
    if hf_split in dd and 0 <= limits[hf_split] < len(rows):
      rows = rows.select(range(limits[hf_split]))
    read[hf_split] = []
    for i, row in enumerate(rows):
      try:
        made = example_from_row(dict(row), "train" if hf_split == "train" else "test", i,
                                f"{where[hf_split]}: row {i + 1}")
      except DataError as e:
        policy.handle(e)
        continue
      if made is None:
        unusable += 1
      else:
        read[hf_split].append(made)
  steps = {ex.id: s for made in read.values() for ex, s in made}
  train, dev = split_off_dev([ex for ex, _ in read["train"]], dev_size, where["train"])
  splits = {"train": relabel_split(train, "train"), "dev": relabel_split(dev, "dev")}
  if "validation" in dd:
    splits["test"] = relabel_split([ex for ex, _ in read["validation"]], "test")
  rationales = {ex.id: [trace_rationale(ex, steps[ex.id], DECOMPOSER.prompt_id)]
                for exs in splits.values() for ex in exs}
  return Dataset(task=TASK, splits=splits, rationales=rationales, labels=None,
                 skipped=merge_skipped(policy.as_dict(), {"no_answer": unusable} if unusable else {}))


class MsMarcoDecomposer(Decomposer):
  """type (the query type) -> passages (the selected passages' numbers) -> answer."""

  task = TASK
  specs = (("type", CLASSIFICATION), ("passages", RETRIEVAL), ("answer", ANSWER))
  classes = QUERY_TYPES

  def num_items(self, example: Example) -> int:
    return count_items(example.inputs.get("passages", ""))


DECOMPOSER = register(MsMarcoDecomposer())  # traces.decomposer_for(task) finds it once this module is loaded
