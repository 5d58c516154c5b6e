"""Example records and task label sets (the Example contract every source meets).

Every data source (DSS release, tfds, HF datasets, JSONL, the embedded demo)
produces `Example`s; everything downstream (caches, objective views, the
pipeline, evaluation) consumes only them.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence


class DataError(ValueError):
  """Bad input data. The message always names the file and line or field."""


@dataclasses.dataclass(frozen=True)
class Example:
  id: str
  task: str
  inputs: Mapping[str, str]  # named text fields: premise/hypothesis, question/choices...
  label: str  # a string from the task's label set (or free text for open tasks)
  human_explanations: Sequence[str] = ()
  split: str = "train"

  def to_row(self) -> dict:
    return {
        "id": self.id,
        "task": self.task,
        "inputs": dict(self.inputs),
        "label": self.label,
        "human_explanations": list(self.human_explanations),
        "split": self.split,
    }

  @classmethod
  def from_row(cls, row: Mapping) -> "Example":
    return cls(
        id=str(row["id"]),
        task=str(row["task"]),
        inputs={str(k): str(v) for k, v in dict(row["inputs"]).items()},
        label=str(row["label"]),
        human_explanations=tuple(row.get("human_explanations") or ()),
        split=str(row.get("split", "train")),
    )


@dataclasses.dataclass(frozen=True)
class Rationale:
  """One teacher rationale for one example (the in-memory view of a cache row)."""

  example_id: str
  teacher: str
  prompt_id: str
  sample_index: int
  rationale: str
  teacher_answer: str
  teacher_correct: bool
  raw: str = ""


# Label sets of the known classification tasks. Open-ended tasks (svamp) have none.
ESNLI_LABELS = ("entailment", "neutral", "contradiction")
ANLI_LABELS = ESNLI_LABELS
LABEL_SETS: dict[str, tuple[str, ...]] = {
    "esnli": ESNLI_LABELS,
    "anli": ANLI_LABELS,
}


def check_label(task: str, label: str, where: str) -> str:
  """Returns `label` if it belongs to `task`'s label set; else a DataError naming `where`."""
  labels = LABEL_SETS.get(task)
  if labels is not None and label not in labels:
    raise DataError(f"{where}: unknown label {label!r} for task {task!r} (expected one of {list(labels)})")
  return label
