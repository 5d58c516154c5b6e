"""e-SNLI from TensorFlow Datasets (`tfds.load("esnli")`): the full 549k-pair train split.

Splits train/validation/test -> train/dev/test; dev is the last `dev_size` validation
rows (the same rows the DSS source holds out of esnli_valid, so dev numbers compare
across sources; dev_size <= 0 keeps all of validation). `max_train_examples` becomes a
tfds slice ("train[:N]"), so a small run never decodes the whole train split.
`config.data.path`, if set, is the tfds `data_dir`; teacher rationales come from
`config.data.cache_dir` when set (keyed by these example ids, e.g. "esnli-train-17").
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from jaxdistill.data.examples import DataError, Example
from jaxdistill.data.sources.common import Dataset, ErrorPolicy, cap_train, cfg_get, esnli_dataset, relabel_split
from jaxdistill.data.sources.dss import nli_example

NAME = "esnli"
SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def to_text(value: Any) -> Any:
  """tf/numpy bytes -> str; numpy scalars -> Python scalars; anything else unchanged."""
  if isinstance(value, (bytes, np.bytes_)):
    return bytes(value).decode("utf-8")
  if isinstance(value, np.ndarray) and value.shape == ():
    return to_text(value.item())
  if isinstance(value, np.generic):
    return value.item()
  return value


def examples_from_records(records: Iterable[Mapping[str, Any]], *, split: str, source_split: str,
                          policy: ErrorPolicy, start: int = 0) -> list[Example]:
  """tfds feature dicts (numpy) -> Examples; bad records raise or are counted by `policy`."""
  out = []
  for i, rec in enumerate(records, start=start):
    where = f"tfds {NAME}/{source_split}: record {i + 1}"
    try:
      row = {k: to_text(v) for k, v in dict(rec).items()}
      out.append(nli_example(row, task="esnli", split=split, example_id=f"esnli-{source_split}-{i}",
                             where=where, require_explanation=split in ("dev", "test")))
    except DataError as e:
      policy.handle(e)
  return out


def examples_from_tf_dataset(ds, *, split: str, source_split: str, policy: ErrorPolicy) -> list[Example]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return examples_from_records(tfds.as_numpy(ds), split=split, source_split=source_split, policy=policy)


def load(config_data) -> Dataset:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], "GPU")  # keep TF off accelerators (runtime.prepare_process)
  data_dir = cfg_get(config_data, "path", "") or None
  dev_size = int(cfg_get(config_data, "dev_size", 1000))
  max_train = int(cfg_get(config_data, "max_train_examples", -1))
  policy = ErrorPolicy(cfg_get(config_data, "on_error", "raise"))
  splits = {}
  for split, source_split in SPLITS.items():
    arg = source_split
    if split == "train" and max_train >= 0:
      arg = f"{source_split}[:{max_train}]"
    ds = tfds.load(NAME, split=arg, data_dir=data_dir, shuffle_files=False)
    exs = examples_from_tf_dataset(ds, split=split, source_split=source_split, policy=policy)
    if split == "train":
      exs = cap_train(exs, max_train)  # also when a builder ignores the slice
    if split == "dev" and 0 < dev_size < len(exs):
      exs = exs[-dev_size:]
    splits[split] = relabel_split(exs, split)
  return esnli_dataset(config_data, splits, policy)
