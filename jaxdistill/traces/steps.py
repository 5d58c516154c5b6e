"""Trace steps and their text: "type: two-facts ; facts: 2 5 Answer: kitchen" <-> typed steps.

The answer goes after formats.ANSWER_MARK, so a trace *is* a rationale_answer target whose
rationale is the trace without its answer: the existing cot machinery (records, packing, caches)
trains on traces unchanged. Parsing never raises: malformed, missing or repeated fields read as
None, which every verifier counts as wrong.
"""

from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Sequence

from jaxdistill.data import formats

CLASSIFICATION, RETRIEVAL, ANSWER = "classification", "retrieval", "answer"
KINDS = (CLASSIFICATION, RETRIEVAL, ANSWER)
FIELD_SEP = " ; "
ANSWER_FIELD = formats.ANSWER_MARK.strip().rstrip(":")  # "Answer": the rationale_answer marker
NO_ITEMS = "none"  # how an empty retrieval set is written

Value = Any  # str for classification / answer steps, tuple[int, ...] for retrieval steps


@dataclasses.dataclass(frozen=True)
class Step:
  """One step of a trace: `name` is its field in the text, `kind` decides how it is checked."""
  name: str
  kind: str
  value: Value


def format_value(kind: str, value: Value) -> str:
  if kind == RETRIEVAL:
    return " ".join(str(i) for i in sorted(value)) if value else NO_ITEMS
  return str(value)


def format_trace(steps: Sequence[Step]) -> str:
  """Steps as text, the answer last after formats.ANSWER_MARK ("... Answer: kitchen").

  Without an answer step this is the rationale a rationale_answer record trains on; with it,
  the whole target (rationale + ANSWER_MARK + label), character for character."""
  head = FIELD_SEP.join(f"{s.name}: {format_value(s.kind, s.value)}" for s in steps if s.kind != ANSWER)
  answers = [s for s in steps if s.kind == ANSWER]
  if not answers:
    return head
  tail = formats.ANSWER_MARK + str(answers[-1].value)
  return head + tail if head else tail.lstrip()


def clean(text: str) -> str:
  """Single spaces, no leading or trailing whitespace."""
  return " ".join(text.split())


def _parse_value(kind: str, raw: str) -> Value | None:
  raw = clean(raw)
  if not raw:
    return None
  if kind == RETRIEVAL:
    tokens = raw.replace(",", " ").split()
    if tokens == [NO_ITEMS]:
      return ()
    if not all(t.isdigit() and t.isascii() and int(t) > 0 for t in tokens):
      return None
    ids = [int(t) for t in tokens]
    return tuple(sorted(ids)) if len(set(ids)) == len(ids) else None  # a repeated index is malformed
  if kind == CLASSIFICATION:
    return raw.lower()
  return raw


def parse_trace(text: Any, specs: Sequence[tuple[str, str]]) -> dict[str, Value | None]:
  """Reads generated text back into {step name: value or None}; never raises.

  `specs` are the task's (name, kind) pairs. A field is "name: value", ended by the next known
  field, a ";" or the end. None means the step cannot be read: missing, empty, not of its kind
  (a retrieval value that is not distinct positive integers) or written more than once (a
  student that repeats a field has not committed to one value). The answer is the text after
  the *last* answer marker, exactly as formats.parse_answer reads it, so answer-step accuracy
  and the Evaluator's accuracy agree.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8", errors="replace")
  if not isinstance(text, str):
    text = ""
  out: dict[str, Value | None] = {name: None for name, _ in specs}
  kinds = dict(specs)
  answer_names = [name for name, kind in specs if kind == ANSWER]
  head, mark, tail = text.rpartition(ANSWER_FIELD + ":")
  if not mark:
    head = text
  elif answer_names:
    out[answer_names[0]] = _parse_value(ANSWER, tail)
  names = [name for name, kind in specs if kind != ANSWER] + [ANSWER_FIELD]
  marker = re.compile(r"(?<![\w-])(" + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
                      + r")\s*:")
  hits = list(marker.finditer(head))
  counts = collections.Counter(m.group(1) for m in hits)
  for i, m in enumerate(hits):
    name = m.group(1)
    if name == ANSWER_FIELD or counts[name] > 1:
      continue
    end = hits[i + 1].start() if i + 1 < len(hits) else len(head)
    value = head[m.end():end].split(";", 1)[0]
    out[name] = _parse_value(kinds[name], value)
  return out


_ITEM = re.compile(r"\[(\d+)\] ")


def number_items(items: Sequence[str]) -> str:
  """Facts or passages as one text, "[1] ... [2] ...": the numbers a retrieval step names.
  Brackets, not "1 ...", because real facts and passages hold their own digits and periods."""
  return " ".join(f"[{i}] {clean(t)}" for i, t in enumerate(items, 1))


def count_items(text: str) -> int:
  """How many items `number_items` wrote into `text` (the last of the consecutive [1], [2], ...)."""
  n = 0
  for m in _ITEM.finditer(text or ""):
    if int(m.group(1)) == n + 1:
      n += 1
  return n
