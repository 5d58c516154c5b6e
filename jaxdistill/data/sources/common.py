"""What every data source shares: the Dataset, config reads, the bad-record policy, UTF-8 checks,
dev split-off and rationale grouping, so that every source follows the same rules.

A module of its own, apart from the package __init__ that dispatches to the sources: a source
imports these helpers, the dispatcher imports the sources, and neither imports the other back.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import logging
import os
from typing import Any, Iterable, Mapping, Sequence

from etils import epath

from jaxdistill.data.examples import LABEL_SETS, DataError, Example, Rationale

ON_ERROR = ("raise", "skip")


@dataclasses.dataclass
class Dataset:
  task: str
  splits: dict[str, list[Example]]  # "train" and "dev" always; "test" only when the data has test examples
  rationales: dict[str, list[Rationale]]  # example_id -> teacher rationales (may be empty)
  labels: tuple[str, ...] | None  # label set for classification tasks
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # bad records by reason


def cfg_get(config_data, name: str, default: Any = None) -> Any:
  """Reads an optional field from a ConfigDict, a dict or any object (missing -> default)."""
  if config_data is None:
    return default
  if isinstance(config_data, Mapping):
    return config_data.get(name, default)
  try:
    return getattr(config_data, name)
  except (AttributeError, KeyError):
    return default


def bad_record(reason: str, message: str) -> DataError:
  """A DataError tagged with a short reason, the key used in `Dataset.skipped`."""
  err = DataError(message)
  err.reason = reason  # type: ignore[attr-defined]
  return err


class ErrorPolicy:
  """Raises bad-record errors (on_error="raise") or counts them by reason ("skip").

  Skipped records are logged and counted, never dropped silently.
  """

  def __init__(self, on_error: str = "raise"):
    if on_error not in ON_ERROR:
      raise ValueError(f"config.data.on_error={on_error!r}: expected one of {list(ON_ERROR)}")
    self.on_error = on_error
    self.skipped: collections.Counter[str] = collections.Counter()

  def handle(self, err: DataError, count: int = 1) -> None:
    if self.on_error == "raise":
      raise err
    reason = getattr(err, "reason", "bad_record")
    self.skipped[reason] += count
    logging.warning("skipping bad record (%s): %s", reason, err)

  def as_dict(self) -> dict[str, int]:
    return dict(sorted(self.skipped.items()))


def decode_utf8(data: bytes, name: str, first_line: int = 1) -> str:
  """The text of `data`, bytes of file `name` from line `first_line` on; a bad record naming the file
  and the line of the first byte that is not UTF-8 otherwise."""
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = first_line + data.count(b"\n", 0, e.start)
    raise bad_record("invalid_utf8", f"{name}:{line}: invalid UTF-8 (byte {data[e.start]:#04x}); "
                                     "save the file as UTF-8") from None


def check_utf8_file(path: str, chunk_size: int = 1 << 24) -> None:
  """A DataError naming `path` and the line of its first byte that is not UTF-8. For text files
  handed to a library (HF `datasets`), whose own error names neither file nor line."""
  decoder = codecs.getincrementaldecoder("utf-8")()
  newlines = 0
  with epath.Path(path).open("rb") as f:
    while True:
      chunk = f.read(chunk_size)
      try:
        decoder.decode(chunk, final=not chunk)
      except UnicodeDecodeError as e:
        # e.object: the chunk after the previous one's unfinished character (never a newline).
        decode_utf8(e.object, os.path.basename(path), first_line=newlines + 1)  # raises, naming the line
        raise
      if not chunk:
        return
      newlines += chunk.count(b"\n")


def require_examples(examples: Sequence[Example], path: str, records: int, skipped: Mapping[str, int]) -> None:
  """A DataError when a split file yields no examples (empty, or every record skipped): an empty
  split would train or score on nothing."""
  if examples:
    return
  reasons = ", ".join(f"{k}={v}" for k, v in sorted(skipped.items()))
  raise DataError(f"{path} has no examples" + (f" ({records} records skipped: {reasons})" if records else ""))


def merge_skipped(*counts: Mapping[str, int]) -> dict[str, int]:
  total: collections.Counter[str] = collections.Counter()
  for c in counts:
    total.update(c)
  return dict(sorted(total.items()))


def split_off_dev(examples: Sequence[Example], dev_size: int, where: str
                  ) -> tuple[list[Example], list[Example]]:
  """(all but the last dev_size, the last dev_size): the dev rule of INTERFACES.md."""
  examples = list(examples)
  if dev_size <= 0:
    return examples, []
  if dev_size >= len(examples):
    raise ValueError(
        f"{where}: dev_size={dev_size} leaves no training examples (only {len(examples)} records); "
        f"set a smaller config.data.dev_size")
  return examples[:-dev_size], examples[-dev_size:]


def cap_train(examples: list[Example], max_train_examples: int) -> list[Example]:
  if max_train_examples is not None and max_train_examples >= 0:
    return examples[:max_train_examples]
  return examples


def group_rationales(rationales: Iterable[Rationale], keep_ids: Iterable[str] | None = None
                     ) -> dict[str, list[Rationale]]:
  """example_id -> rationales sorted by (teacher, prompt_id, sample_index)."""
  keep = set(keep_ids) if keep_ids is not None else None
  out: dict[str, list[Rationale]] = collections.defaultdict(list)
  for r in rationales:
    if keep is None or r.example_id in keep:
      out[r.example_id].append(r)
  for rs in out.values():
    rs.sort(key=lambda r: (r.teacher, r.prompt_id, r.sample_index))
  return dict(out)


def cached_rationales(config_data, example_ids: Iterable[str]) -> dict[str, list[Rationale]] | None:
  """Rationales for `example_ids` from config.data.cache_dir; None when no cache_dir is set."""
  cache_dir = cfg_get(config_data, "cache_dir", "") or ""
  if not cache_dir:
    return None
  from jaxdistill.data.rationale_cache import RationaleCache  # pylint: disable=g-import-not-at-top
  ids = set(example_ids)
  return group_rationales(RationaleCache.open(cache_dir).read_rationales(example_ids=ids), ids)


def relabel_split(examples: Iterable[Example], split: str) -> list[Example]:
  """Sets `Example.split` to the split the example is used in (train/dev/test)."""
  return [ex if ex.split == split else dataclasses.replace(ex, split=split) for ex in examples]


def esnli_dataset(config_data, splits: dict[str, list[Example]], policy: ErrorPolicy) -> Dataset:
  """The e-SNLI Dataset of the tfds / HF loaders: teacher rationales only come from a cache."""
  ids = [ex.id for exs in splits.values() for ex in exs]
  return Dataset(task="esnli", splits=splits, rationales=cached_rationales(config_data, ids) or {},
                 labels=LABEL_SETS["esnli"], skipped=policy.as_dict())

