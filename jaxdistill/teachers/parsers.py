"""Answer parsers: a teacher's completion -> (rationale, teacher answer, whether it is right).

`parse(task, completion, example, reasoning)` reads every teacher the same way: the PaLM completions
of the Distilling Step-by-Step release (`data/sources/dss.py`), an API or local teacher prompted with
`prompts.py`, and a jaxdistill student's "<rationale> Answer: <label>".

The rules, in order:

1. Reasoning. A `<think>...</think>` block in the text (also one whose opening tag was in the prompt,
   or one cut off before its end) and the separate `reasoning` (an API's `reasoning_content`) are the
   *thought*; the *visible* text is the rest.
2. Region. A completion-endpoint teacher runs on into an invented next exemplar. Its answer is read
   up to the first blank line (PaLM's exemplars are separated by one) or the first line that opens
   an exemplar ("Premise:", "Q:", "Question:"; the release's own cut), whichever comes first; where
   that holds no answer marker (a chat model writing paragraphs), up to that exemplar line alone.
3. Marker. The answer follows the *last* answer marker in the region: "Answer:" (e-SNLI, the
   student format), "So the answer is" / "The answer is" (CQA, SVAMP, ANLI), each also with "final"
   and in any case. What follows it on its line (or on the next line when the marker ends its line)
   is read by the task's reader:
     esnli, anli  an NLI label word (entailment / neutral / contradiction)
     cqa          "(letter) text": the choice the text names when it names one, else the letter's
                  choice; a line naming two letters is a hedge (unparsed)
     svamp        an arithmetic equation (numbers, + - * /, parentheses), also "EQUATION = NUMBER"
                  (both sides agreeing) and a parenthesised equation inside other words
                  ("therefore (3 + 4)")
     other tasks  a label of the task's label set (`task_labels`), a choice when the example has
                  "(a) x (b) y" choices, else the answer text itself
   A label reader accepts the label alone or at the start of the answer ("neutral, since ..."), and
   refuses an answer that names two labels.
4. Rationale: the region's text before the marker when non-empty, else the thought (a reasoning
   model whose visible text holds only the answer). With no marker, a one-line visible text is read
   as the answer: after a thought as if it followed a marker, without one only when it is exactly an
   answer (a label, a choice or its "(letter)", an equation); the thought is then the rationale.

An answer that does not read leaves `teacher_answer` "" and `teacher_correct` False; the rationale is
kept. Correctness: SVAMP equations within `EQUATION_TOLERANCE`; every other answer equal to the gold
label (free-text answers case- and punctuation-insensitively).

Where this differs from the release's reader (google-research/distilling-step-by-step, data_utils.py),
on purpose: its CQA answer is the text after the letter, compared case-sensitively with the answer, so
PaLM's "(c) knowledge" for the choice "knowlege" or "(e) Istanbul" for "istanbul" counts wrong; here
the letter decides unless the text names another choice. Its SVAMP answer is the span from the first
"(" to the last ")", so "(16 * 17) * 4" reads as "(16 * 17)"; here the whole equation. Hedges it reads
as a wrong answer ("aquarium or") are unparsed here; both count as not correct. It cuts at "Q:" and
"Premise" anywhere in a line; here only where a line starts with them (a rationale may quote one).
Per split, the correct and unparsed counts of the release's completions read this way are pinned in
tests/test_dss.py (test_real_release_every_row_parses).
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
import re
from typing import Sequence

from jaxdistill.data.examples import ESNLI_LABELS, Example, LABEL_SETS

NLI_TASKS = ("esnli", "anli")
NLI_LABELS = ESNLI_LABELS  # label ids 0, 1, 2
CHOICE_LETTERS = "abcdefghij"
EQUATION_TOLERANCE = 1e-4


@dataclasses.dataclass(frozen=True)
class Parsed:
  rationale: str
  teacher_answer: str  # "" when unparseable
  teacher_correct: bool


def parse(task: str, completion: str, example: Example, reasoning: str = "", *,
          labels: Sequence[str] | None = None) -> Parsed:
  """Splits a teacher's completion into rationale and answer and checks the answer against
  `example.label` (module docstring). `labels` overrides the task's label set (`task_labels`)."""
  visible, thought = split_thinking(completion, reasoning)
  region, marker = answer_region(visible)
  if marker is None:
    answer = read_bare_answer(task, visible, example, labels, has_thought=bool(thought))
    rationale = thought if answer else (region.strip() or thought)
  else:
    answer = read_answer(task, answer_line(region, marker.end()), example, labels)
    rationale = strip_rationale_label(region[:marker.start()]) or thought
  return Parsed(rationale, answer, bool(answer) and is_correct(task, answer, example))


# --- reasoning ---------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.S)


def split_thinking(completion: str, reasoning: str = "") -> tuple[str, str]:
  """(visible text, thought): <think> blocks and `reasoning` are thought, the rest is visible."""
  thoughts = [reasoning.strip()] + [m.group(1).strip() for m in _THINK_BLOCK.finditer(completion)]
  visible = _THINK_BLOCK.sub("", completion)
  if "</think>" in visible:  # the chat template opened the block in the prompt
    before, _, visible = visible.rpartition("</think>")
    thoughts.insert(1, before.strip())
  if "<think>" in visible:  # generation stopped while thinking
    visible, _, unfinished = visible.partition("<think>")
    thoughts.append(unfinished.strip())
  return visible.strip(), "\n".join(t for t in thoughts if t)


# --- where the answer is -------------------------------------------------------------------------

_BLANK_LINE = re.compile(r"\n[ \t]*\n")
_NEXT_EXEMPLAR = re.compile(r"^[ \t]*(?:premise|q|question)[ \t]*:", re.I | re.M)
_MARKER = re.compile(r"\b(?:(?:so[ \t]+)?the[ \t]+(?:final[ \t]+)?answer[ \t]+is\b|(?:final[ \t]+)?answer[ \t]*:)",
                     re.I)
_RATIONALE_LABEL = re.compile(r"^(?:reasoning|reasonings|rationale|explanation)[ \t]*:", re.I)


def cut_completion(text: str) -> str:
  """Drops the invented next few-shot exemplar: everything from the first blank line."""
  m = _BLANK_LINE.search(text)
  return text[:m.start()] if m else text


def cut_at_next_exemplar(text: str) -> str:
  """Everything before the first line that opens a new exemplar (the release's cut)."""
  m = _NEXT_EXEMPLAR.search(text, 1)  # from 1: the completion itself may start with "Q:" text
  return text[:m.start()] if m else text


def last_marker(text: str) -> re.Match | None:
  found = None
  for found in _MARKER.finditer(text):
    pass
  return found


def answer_region(visible: str) -> tuple[str, re.Match | None]:
  """(the text the answer is read from, its last answer marker or None); rule 2 of the docstring."""
  head = cut_at_next_exemplar(cut_completion(visible))
  marker = last_marker(head)
  if marker is None:
    longer = cut_at_next_exemplar(visible)
    marker = last_marker(longer)
    if marker is not None:
      return longer, marker
  return head, marker


def answer_line(region: str, start: int) -> str:
  """The rest of the marker's line, or the next non-empty line when the marker ends its line."""
  rest = region[start:]
  first, _, more = rest.partition("\n")
  if clean_answer(first) or not more.strip():
    return first
  return more.strip().split("\n", 1)[0]


def strip_rationale_label(text: str) -> str:
  return _RATIONALE_LABEL.sub("", text.strip(), count=1).strip()


# --- reading an answer ---------------------------------------------------------------------------

_EDGE_PUNCT = " \t\r\n:*_`\"'"


def clean_answer(text: str) -> str:
  """The answer text without surrounding markdown, quotes, a leading colon or a final period."""
  text = text.strip(_EDGE_PUNCT)
  text = re.sub(r"[.!;,]+$", "", text).strip(_EDGE_PUNCT)
  return text


def normalize(text: str) -> str:
  return " ".join(clean_answer(text).lower().split())


def task_labels(task: str, labels: Sequence[str] | None = None) -> tuple[str, ...] | None:
  """The label set answers are matched against: `labels` when given, else the task's
  (`LABEL_SETS`, the embedded demo task's), else None (choices or free text)."""
  if labels:
    return tuple(labels)
  if task in LABEL_SETS:
    return LABEL_SETS[task]
  from jaxdistill.data.sources import demo  # pylint: disable=g-import-not-at-top
  return demo.LABELS if task == demo.TASK else None


def answer_space(task: str, example: Example, labels: Sequence[str] | None = None
                 ) -> tuple[str, Sequence[str]]:
  """How `task`'s answers read: ("equation", ()), ("label", the label set), ("choice", the example's
  choices) or ("free", ()) for open tasks."""
  if task == "svamp":
    return "equation", ()
  label_set = task_labels(task, labels)
  if label_set:
    return "label", label_set
  choices = choice_list(example)
  if task == "cqa" or choices:
    return "choice", choices
  return "free", ()


def read_answer(task: str, line: str, example: Example, labels: Sequence[str] | None = None) -> str:
  """The task's answer in the text after a marker, or ""."""
  kind, space = answer_space(task, example, labels)
  if kind == "equation":
    return read_equation(line)
  if kind == "label":
    return read_label(line, space)
  if kind == "choice":
    return read_choice(line, space)
  return clean_answer(line)


def read_bare_answer(task: str, visible: str, example: Example, labels: Sequence[str] | None,
                     has_thought: bool) -> str:
  """Visible text with no marker: after a thought, any one-line answer; without one, only a line
  that is exactly an answer (a label, a choice or its "(letter)", an equation); else ""."""
  if not visible or "\n" in visible:
    return ""
  if has_thought:
    return read_answer(task, visible, example, labels)
  kind, space = answer_space(task, example, labels)
  if kind == "equation":
    return clean_answer(visible) if _is_equation(clean_answer(visible)) else ""
  if kind == "label":
    return match_label(normalize(visible), space)
  if kind == "choice":
    answer = read_choice(visible, space)
    return answer if _is_bare_choice(visible, answer, space) else ""
  return ""


def _is_bare_choice(text: str, answer: str, choices: Sequence[str]) -> bool:
  """`text` is just the choice `answer`: its text, its "(letter)", or both."""
  if not answer:
    return False
  letter = f"({CHOICE_LETTERS[list(choices).index(answer)]})"
  return normalize(text) in (normalize(answer), letter, f"{letter} {normalize(answer)}")


def match_label(text: str, labels: Sequence[str]) -> str:
  """The label `text` (normalized) is, case-insensitively, or ""."""
  for label in labels:
    if normalize(label) == text:
      return label
  return ""


def read_label(line: str, labels: Sequence[str]) -> str:
  """A label alone, or at the start of the answer with no other label named; else ""."""
  text = normalize(line)
  exact = match_label(text, labels)
  if exact:
    return exact
  named = [l for l in labels if re.search(rf"(?<!\w){re.escape(normalize(l))}(?!\w)", text)]
  if len(named) != 1 or not re.match(rf"{re.escape(normalize(named[0]))}(?!\w)", text):
    return ""
  return named[0]


_LETTER = re.compile(r"\(([a-j])\)", re.I)


def read_choice(line: str, choices: Sequence[str]) -> str:
  """"(letter) text" -> a choice (module docstring, rule 3); a bare choice text too; else ""."""
  m = _LETTER.search(line)
  if m is None:
    return _named_choice(line, choices)
  if _LETTER.search(line, m.end()):
    return ""  # "(a) x or (b) y": a hedge
  idx = CHOICE_LETTERS.index(m.group(1).lower())
  if idx >= len(choices):
    return ""
  return _named_choice(line[m.end():], choices) or choices[idx]


def _named_choice(text: str, choices: Sequence[str]) -> str:
  text = normalize(text)
  return next((c for c in choices if text and normalize(c) == text), "")


def read_equation(line: str) -> str:
  """An arithmetic equation: the whole answer, or the span from its first "(" to its last ")"
  (the release's reading: "therefore (3 + 4)"); "EQ = NUMBER" gives EQ when both sides agree and
  nothing when they do not; else ""."""
  text = clean_answer(line)
  if "=" in text:
    lhs, _, rhs = text.partition("=")
    agree = _is_equation(lhs) and _is_equation(rhs) and equations_equal(lhs, rhs)
    return lhs.strip() if agree else ""
  candidates = [text]
  if "(" in text and ")" in text:
    candidates.append(text[text.index("("):text.rindex(")") + 1])
  return next((c for c in candidates if _is_equation(c)), "")


def is_correct(task: str, answer: str, example: Example) -> bool:
  if task == "svamp":
    return equations_equal(answer, example.label)
  return answer == example.label or normalize(answer) == normalize(example.label)


# --- choices ---------------------------------------------------------------------------------

def choice_list(example: Example) -> list[str]:
  """The choices back from the example's "(a) x (b) y ..." `choices` input ([] without one)."""
  text = example.inputs.get("choices", "")
  parts = re.split(r"(?:^|\s)\([a-j]\)\s", text)
  return [p.strip() for p in parts[1:]]


def format_choices(choices: Sequence[str]) -> str:
  """["x", "y"] -> "(a) x (b) y": how a multiple-choice example keeps its choices in `inputs`."""
  return " ".join(f"({CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(choices))


# --- arithmetic ---------------------------------------------------------------------------------

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def safe_eval(expr: str) -> float:
  """Evaluates numbers with + - * / and parentheses (never `eval`); ValueError otherwise."""
  text = _THOUSANDS.sub("", expr.strip())
  if not text or len(text) > 500:
    raise ValueError(f"not an equation: {expr!r}")
  try:
    tree = ast.parse(text, mode="eval")
  except (SyntaxError, ValueError) as e:
    raise ValueError(f"not an equation: {expr!r}") from e

  def ev(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
      return ev(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
      return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
      left, right = ev(node.left), ev(node.right)
      if isinstance(node.op, ast.Div) and right == 0:
        raise ValueError(f"division by zero in {expr!r}")
      return _BINOPS[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
      return _UNARY[type(node.op)](ev(node.operand))
    raise ValueError(f"not an equation: {expr!r}")

  try:
    value = ev(tree)
  except RecursionError as e:
    raise ValueError(f"equation too deep: {expr!r}") from e
  if not math.isfinite(value):
    raise ValueError(f"equation is not finite: {expr!r}")
  return value


def _is_equation(text: str) -> bool:
  try:
    safe_eval(text)
  except ValueError:
    return False
  return True


def equations_equal(a: str, b: str, tol: float = EQUATION_TOLERANCE) -> bool:
  try:
    return abs(safe_eval(a) - safe_eval(b)) <= tol
  except ValueError:
    return False
