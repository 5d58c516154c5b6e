"""e-SNLI through Hugging Face `datasets`: the hub dataset or local json/parquet/csv files.

`config.data.path`:
  - "" -> `datasets.load_dataset(config.data.hf_name or "esnli")` (needs the network or the HF cache);
  - a directory -> its *.json/*.jsonl/*.parquet/*.csv files, loaded with datasets' packaged
    builder for that format; a file's split comes from its name (train / valid, validation,
    dev / test);
  - anything else -> a hub name.
Splits train/validation/test -> train/dev/test, dev = the last `dev_size` validation rows
(as in the tfds and DSS sources); without a test split Dataset.splits has no "test" key.
Labels may be 0/1/2 or the label words. Teacher rationales come from `config.data.cache_dir`
when set. Text files are checked for UTF-8 first (an error names the file and line).
"""

from __future__ import annotations

import os
import re
from typing import Any

from etils import epath

from jaxdistill.data.examples import DataError, Example
from jaxdistill.data.sources.common import Dataset, ErrorPolicy, cfg_get, check_utf8_file, esnli_dataset, relabel_split
from jaxdistill.data.sources.dss import nli_example

DEFAULT_NAME = "esnli"
SPLITS = {"train": "train", "dev": "validation", "test": "test"}
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
TEXT_FORMATS = (".json", ".jsonl", ".csv")  # checked for UTF-8 before `datasets` reads them
_SPLIT_WORDS = {"train": "train", "valid": "validation", "validation": "validation", "dev": "validation",
                "test": "test"}


def local_data_files(path: str) -> tuple[str, dict[str, list[str]]]:
  """(builder name, {hf split: files}) for a directory of json/jsonl/parquet/csv files."""
  by_builder: dict[str, dict[str, list[str]]] = {}
  # Listed through epath (local or remote); `datasets` reads remote files through fsspec (gcsfs for gs://).
  for f in sorted(os.fspath(p) for p in epath.Path(path).iterdir() if not p.name.startswith(".")):
    ext = os.path.splitext(f)[1].lower()
    if ext not in BUILDERS or not epath.Path(f).is_file():
      continue
    words = re.split(r"[^a-z]+", os.path.basename(f).lower())
    splits = {_SPLIT_WORDS[w] for w in words if w in _SPLIT_WORDS}
    if len(splits) != 1:
      raise DataError(f"{f}: can't tell its split from the name "
                      f"(want one of train, valid/validation/dev, test)")
    if ext in TEXT_FORMATS:
      check_utf8_file(f)
    by_builder.setdefault(BUILDERS[ext], {}).setdefault(splits.pop(), []).append(f)
  if not by_builder:
    raise FileNotFoundError(f"{path}: no *.json, *.jsonl, *.parquet or *.csv files")
  if len(by_builder) > 1:
    raise DataError(f"{path}: mixed file formats {sorted(by_builder)}; keep one format per directory")
  builder, data_files = by_builder.popitem()
  return builder, data_files


def examples_from_rows(rows, *, split: str, source_split: str, where_prefix: str, policy: ErrorPolicy,
                       line_numbers: bool = False) -> list[Example]:
  """HF rows (dicts) -> Examples; `where` names the file and 1-based row (line for JSON lines)."""
  out = []
  for i, row in enumerate(rows):
    where = f"{where_prefix}:{i + 1}" if line_numbers else f"{where_prefix}: row {i + 1}"
    try:
      out.append(nli_example(dict(row), task="esnli", split=split, example_id=f"esnli-{source_split}-{i}",
                             where=where, require_explanation=split in ("dev", "test")))
    except DataError as e:
      policy.handle(e)
  return out


def _load(config_data) -> tuple[Any, dict[str, str], dict[str, bool]]:
  """The DatasetDict, a `where` prefix per hf split, and whether rows are file lines."""
  import datasets  # pylint: disable=g-import-not-at-top
  path = cfg_get(config_data, "path", "") or ""
  if path and epath.Path(path).is_dir():
    builder, data_files = local_data_files(path)
    dd = datasets.load_dataset(builder, data_files=data_files)
    where = {s: (os.path.basename(fs[0]) if len(fs) == 1 else f"{path} [{s}]")
             for s, fs in data_files.items()}
    lines = {s: builder == "json" and len(fs) == 1 for s, fs in data_files.items()}
    return dd, where, lines
  name = path or cfg_get(config_data, "hf_name", "") or DEFAULT_NAME
  dd = datasets.load_dataset(name)
  return dd, {s: f"{name} [{s}]" for s in dd}, {s: False for s in dd}


def load(config_data) -> Dataset:
  dd, where, lines = _load(config_data)
  dev_size = int(cfg_get(config_data, "dev_size", 1000))
  max_train = int(cfg_get(config_data, "max_train_examples", -1))
  policy = ErrorPolicy(cfg_get(config_data, "on_error", "raise"))
  splits = {}
  for split, hf_split in SPLITS.items():
    if hf_split not in dd:
      if split == "train":
        raise DataError(f"{cfg_get(config_data, 'path', '') or DEFAULT_NAME}: no train split")
      if split == "dev":
        splits[split] = []
      continue
    rows = dd[hf_split]
    if split == "train" and 0 <= max_train < len(rows):
      rows = rows.select(range(max_train))
    exs = examples_from_rows(rows, split=split, source_split=hf_split, where_prefix=where[hf_split],
                             policy=policy, line_numbers=lines[hf_split])
    if split == "dev" and 0 < dev_size < len(exs):
      exs = exs[-dev_size:]
    splits[split] = relabel_split(exs, split)
  return esnli_dataset(config_data, splits, policy)
