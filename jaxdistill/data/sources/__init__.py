"""Data sources: each turns some on-disk or hub format into `Example`s (data/examples.py).

Every source module exposes `load(config_data) -> Dataset`; `load_dataset` picks one
by `config_data.source`. The helpers every source shares (error policy, dev split-off, grouping
rationales) live in common.py and are re-exported here.
"""

from __future__ import annotations

import dataclasses
import importlib
import types

# Re-exported: callers outside the sources read these from the package.
from jaxdistill.data.sources.common import (ON_ERROR, Dataset, ErrorPolicy, bad_record, cached_rationales,
                                            cap_train, cfg_get, check_utf8_file, decode_utf8, esnli_dataset,
                                            group_rationales, merge_skipped, relabel_split, require_examples,
                                            split_off_dev)

SOURCES = {
    "demo": "jaxdistill.data.sources.demo",
    "dss": "jaxdistill.data.sources.dss",
    "tfds": "jaxdistill.data.sources.tfds_esnli",
    "hf": "jaxdistill.data.sources.hf_esnli",
    "jsonl": "jaxdistill.data.sources.jsonl",
    "babi": "jaxdistill.data.sources.babi",  # built-in bAbI-style QA with gold traces (configs/traces.py)
    "cotemp": "jaxdistill.data.sources.cotemp",
    "msmarco": "jaxdistill.data.sources.msmarco",
}


def load_dataset(config_data) -> Dataset:
  """Dispatches on `config_data.source`; modules are imported lazily (tfds/HF are heavy)."""
  source = cfg_get(config_data, "source", "demo")
  if source not in SOURCES:
    raise ValueError(f"config.data.source={source!r}: unknown source (expected one of {sorted(SOURCES)})")
  ErrorPolicy(cfg_get(config_data, "on_error", "raise"))  # refused for every source, also those never skipping
  dataset = source_module(source).load(config_data)
  fields = [f.strip() for f in str(cfg_get(config_data, "input_fields", "") or "").split(",") if f.strip()]
  if fields:
    dataset = only_fields(dataset, fields)
  if not dataset.splits.get("test"):
    dataset.splits.pop("test", None)  # no test examples (e.g. num_test=0): no test split
  return dataset


def only_fields(dataset: Dataset, fields: list[str]) -> Dataset:
  """The dataset with each example's inputs cut to `fields` (in that order): e.g. a hypothesis-only
  NLI baseline (config.data.input_fields="hypothesis")."""
  splits = {}
  for split, examples in dataset.splits.items():
    for ex in examples[:1]:
      missing = [f for f in fields if f not in ex.inputs]
      if missing:
        raise ValueError(f"config.data.input_fields: {missing} not among the {dataset.task} inputs "
                         f"{list(ex.inputs)} ({split} example {ex.id})")
    splits[split] = [dataclasses.replace(ex, inputs={f: ex.inputs[f] for f in fields}) for ex in examples]
  return dataclasses.replace(dataset, splits=splits)


def source_module(source: str) -> types.ModuleType:
  """The module of source `source` (a SOURCES key), imported on first use. Importing a trace source
  (babi, cotemp, msmarco) also registers its task's decomposer (traces.decomposer_for)."""
  return importlib.import_module(SOURCES[source])


__all__ = [
    "Dataset", "load_dataset", "source_module", "SOURCES", "ON_ERROR", "cfg_get", "bad_record", "ErrorPolicy",
    "decode_utf8", "check_utf8_file", "require_examples", "merge_skipped", "split_off_dev", "cap_train",
    "group_rationales", "cached_rationales", "relabel_split", "esnli_dataset",
]
