"""Few-shot prompt templates for teachers, and the prompt ids their cache rows are keyed by.

`get_template(task, name)` returns one of:

  dss      (the default for esnli, anli, cqa, svamp) Distilling Step-by-Step style: a short
           instruction and a few hand-written exemplars, each a rationale followed by the answer
           marker the release's PaLM completions use and `parsers.parse` reads:
             esnli  "Premise: ...\\nHypothesis: ...\\nReasoning: <rationale>\\nAnswer: <label>"
             anli   "Premise: ...\\nHypothesis: ...\\nReasoning: <rationale> So the answer is <label>."
             cqa    "Q: ...\\nAnswer Choices:\\n(a) ...\\nA: <rationale> So the answer is (<letter>) <choice>."
             svamp  "Q: ...\\nA: <rationale> The answer is (<equation>)."
  generic  (the default for any other task) an instruction, the example's input fields as
           `formats.input_text` writes them, and "Answer: <answer>"; where the label set is known
           (`parsers.task_labels`) the instruction lists the allowed answers.
  student  exactly `formats.cot_prompt(example)`, no instruction, no exemplars: the prompt a jaxdistill
           decoder student trained with objective.format=rationale_answer continues with
           "<rationale> Answer: <label>" (a student as a local teacher).

A template renders two ways. `render(example)` is a completion-endpoint prompt: instruction,
exemplars, then the example's input and the line opener the teacher continues ("A:"), blocks
separated by blank lines (so a teacher that runs on into an invented next exemplar is cut there).
`messages(example)` is the chat form: the instruction as the system message, each exemplar as a
user turn (its input) and an assistant turn (its target), then the example as the last user turn.
Exemplars as real turns rather than text inside one message because a chat model copies the
format of its own earlier replies (rationale, then the marker) far more reliably than a described
format, and its reply then answers only the last question, with no next exemplar to cut off.

`prompt_id(template, sampling, endpoint)` names a (template, sampling, endpoint) in the cache:
"<name>-<task>-<endpoint>-<10 hex digits of a sha256 over all of them>", so changing any word of
the prompt, any sampling parameter or the endpoint starts new rows instead of mixing with old ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Sequence

from jaxdistill.data import formats
from jaxdistill.data.examples import Example
from jaxdistill.teachers import base, parsers

TEMPLATE_NAMES = ("default", "dss", "generic", "student")
DSS_TASKS = ("esnli", "anli", "cqa", "svamp")
SEPARATOR = "\n\n"  # between prompt blocks; parsers cut a completion at its first blank line


@dataclasses.dataclass(frozen=True)
class Template:
  name: str  # "dss", "generic" or "student"
  task: str
  instruction: str = ""
  exemplars: tuple[tuple[str, str], ...] = ()  # (input text, target text)
  answer_marker: str = "Answer:"  # what the targets put before the answer (parsers.parse reads it)
  input_style: str = "fields"  # how an example's inputs are written: nli | cqa | svamp | fields | student
  target_prefix: str = ""  # completion prompts: the opener of the target line ("A:"), "" for none

  def input_text(self, example: Example) -> str:
    return INPUT_STYLES[self.input_style](example, self.name)

  def render(self, example: Example) -> str:
    """The completion-endpoint prompt, ending where the teacher continues."""
    blocks = [self.instruction] if self.instruction else []
    blocks += [self._with_target(text, target) for text, target in self.exemplars]
    blocks.append(self._opened(self.input_text(example)))
    return SEPARATOR.join(blocks)

  def messages(self, example: Example) -> tuple[base.Message, ...]:
    """The chat prompt: system instruction, exemplars as user/assistant turns, the example."""
    turns: list[base.Message] = [{"role": "system", "content": self.instruction}] if self.instruction else []
    for text, target in self.exemplars:
      turns += [{"role": "user", "content": text}, {"role": "assistant", "content": target}]
    turns.append({"role": "user", "content": self.input_text(example)})
    return tuple(turns)

  def _opened(self, text: str) -> str:
    return f"{text}\n{self.target_prefix}" if self.target_prefix else text

  def _with_target(self, text: str, target: str) -> str:
    return f"{self._opened(text)} {target}" if self.target_prefix else f"{text}\n{target}"


# --- input styles ----------------------------------------------------------------------------------

def _field(example: Example, name: str, template: str) -> str:
  if name not in example.inputs:
    raise ValueError(f"example {example.id!r}: the {template!r} prompt needs input field {name!r} "
                     f"(it has {sorted(example.inputs)})")
  return example.inputs[name]


def _nli_input(example: Example, template: str) -> str:
  return f"Premise: {_field(example, 'premise', template)}\nHypothesis: {_field(example, 'hypothesis', template)}"


def _cqa_input(example: Example, template: str) -> str:
  question = _field(example, "question", template)
  choices = parsers.choice_list(example)
  if not choices:
    raise ValueError(f"example {example.id!r}: the {template!r} prompt needs input field 'choices' as "
                     f"\"(a) x (b) y ...\" (got {example.inputs.get('choices')!r})")
  lines = [f"({parsers.CHOICE_LETTERS[i]}) {c}" for i, c in enumerate(choices)]
  return "\n".join([f"Q: {question}", "Answer Choices:", *lines])


def _svamp_input(example: Example, template: str) -> str:
  return f"Q: {_field(example, 'question', template)}"


INPUT_STYLES = {
    "nli": _nli_input,
    "cqa": _cqa_input,
    "svamp": _svamp_input,
    "fields": lambda example, template: formats.input_text(example),
    "student": lambda example, template: formats.cot_prompt(example),
}


# --- the DSS-style templates ----------------------------------------------------------------------

def _nli(task: str, premise: str, hypothesis: str, label: str) -> Example:
  return Example(id="exemplar", task=task, inputs={"premise": premise, "hypothesis": hypothesis}, label=label)


def _cqa(question: str, choices: Sequence[str], answer: str) -> Example:
  return Example(id="exemplar", task="cqa", inputs={"question": question,
                                                     "choices": parsers.format_choices(choices)}, label=answer)


def _svamp(question: str, equation: str) -> Example:
  return Example(id="exemplar", task="svamp", inputs={"question": question}, label=equation)


# Hand-written exemplars: (example, rationale). Each target (`_target`) parses back to the label.
EXEMPLARS: dict[str, tuple[tuple[Example, str], ...]] = {
    "esnli": (
        (_nli("esnli", "A woman in a yellow raincoat walks two dogs along a beach.",
              "A woman is outside with animals.", "entailment"),
         "A beach is outside, and dogs are animals."),
        (_nli("esnli", "Three boys kick a ball down a dusty street.", "The boys play for their school team.",
              "neutral"),
         "Kicking a ball in the street does not mean the boys are on a school team."),
        (_nli("esnli", "An old man is asleep on a park bench.", "The man is jogging through the park.",
              "contradiction"),
         "A man cannot be asleep on a bench and jogging at the same time."),
        (_nli("esnli", "A chef slices onions in a busy kitchen.", "Someone is preparing food.", "entailment"),
         "Slicing onions is preparing food, and the chef is someone."),
    ),
    "anli": (
        (_nli("anli", "The Harwick Lighthouse was built in 1872 on the northern cape of Elden Island and was "
              "automated in 1961.", "Keepers ran the lighthouse for less than a century.", "entailment"),
         "From 1872 to its automation in 1961 is 89 years, which is less than a century."),
        (_nli("anli", "Marta Quill is a Portuguese cyclist who won two stages of the 2015 Tour of the Algarve.",
              "Marta Quill won the 2015 Tour of the Algarve.", "neutral"),
         "Winning two stages is not winning the race, and the premise does not say who won overall."),
        (_nli("anli", "Blue Fern is a 2009 album by the folk duo Orla and Finn, recorded in a single week in Galway.",
              "Blue Fern took several months to record.", "contradiction"),
         "The album was recorded in a single week, not over several months."),
    ),
    "cqa": (
        (_cqa("Where would you put a carton of milk to keep it cold?",
              ("cupboard", "refrigerator", "mailbox", "oven", "backpack"), "refrigerator"),
         "The answer must be a place that keeps food cold. Of the above choices, only a refrigerator does."),
        (_cqa("What does a person usually do after hearing a funny joke?",
              ("cry", "sleep", "shout", "laugh", "run away"), "laugh"),
         "The answer must be a reaction to something funny. Of the above choices, only laughing is."),
        (_cqa("Where can you borrow books without paying for them?",
              ("library", "bookstore", "printing press", "classroom desk", "newsstand"), "library"),
         "The answer must be a place that lends books for free. Of the above choices, only a library does."),
        (_cqa("What must seeds get before they can sprout?", ("sunglasses", "salt", "music", "paint", "water"),
              "water"),
         "The answer must be something seeds need to grow. Of the above choices, only water is."),
    ),
    "svamp": (
        (_svamp("Nora has 5 boxes of crayons. Each box holds 8 crayons.\nHow many crayons does Nora have?",
                "(5 * 8)"), "Nora has 5 boxes with 8 crayons each. So she has 5 * 8 = 40 crayons."),
        (_svamp("A bus had 42 passengers. At the first stop 15 got off and 9 got on.\n"
                "How many passengers are on the bus now?", "((42 - 15) + 9)"),
         "After 15 got off there were 42 - 15 = 27 passengers. Then 9 got on, so there are 27 + 9 = 36."),
        (_svamp("Ali shared 36 stickers equally among 4 friends.\nHow many stickers did each friend get?",
                "(36 / 4)"), "36 stickers shared by 4 friends is 36 / 4 = 9 stickers each."),
        (_svamp("Tessa read 18 pages on Monday and some more on Tuesday. She read 31 pages in all.\n"
                "How many pages did she read on Tuesday?", "(31 - 18)"),
         "She read 31 pages in all and 18 of them on Monday. So she read 31 - 18 = 13 pages on Tuesday."),
    ),
}

_DSS = {  # task: (input style, target prefix, answer marker, instruction)
    "esnli": ("nli", "Reasoning:", "Answer:",
              "Decide whether the premise entails the hypothesis, contradicts it, or neither (neutral). "
              "Explain in a sentence, then give the answer on its own line as \"Answer: entailment\", "
              "\"Answer: neutral\" or \"Answer: contradiction\"."),
    "anli": ("nli", "Reasoning:", "So the answer is",
             "Decide whether the premise entails the hypothesis, contradicts it, or neither (neutral). "
             "Explain in a sentence or two, then end with \"So the answer is entailment.\", \"So the answer "
             "is neutral.\" or \"So the answer is contradiction.\""),
    "cqa": ("cqa", "A:", "So the answer is",
            "Answer the multiple-choice question. Explain in a sentence or two, then end with "
            "\"So the answer is (<letter>) <choice>.\""),
    "svamp": ("svamp", "A:", "The answer is",
              "Solve the math word problem. Explain step by step, then end with \"The answer is (<equation>).\", "
              "an equation of the problem's numbers with + - * / and parentheses."),
}


def _target(task: str, example: Example, rationale: str) -> str:
  """An exemplar's target text: the rationale, then the task's marker and answer."""
  if task == "esnli":
    return f"{rationale}\nAnswer: {example.label}"
  if task == "cqa":
    letter = parsers.CHOICE_LETTERS[parsers.choice_list(example).index(example.label)]
    return f"{rationale} So the answer is ({letter}) {example.label}."
  marker = _DSS[task][2]
  return f"{rationale} {marker} {example.label}."


def dss_template(task: str) -> Template:
  if task not in _DSS:
    raise ValueError(f"the 'dss' prompt has no template for task {task!r} (it has {', '.join(DSS_TASKS)}); "
                     "use 'generic'")
  style, prefix, marker, instruction = _DSS[task]
  style_fn = INPUT_STYLES[style]
  exemplars = tuple((style_fn(ex, "dss"), _target(task, ex, rationale)) for ex, rationale in EXEMPLARS[task])
  return Template(name="dss", task=task, instruction=instruction, exemplars=exemplars, answer_marker=marker,
                  input_style=style, target_prefix=prefix)


def generic_template(task: str, labels: Sequence[str] | None = None) -> Template:
  """No exemplars (the task is unknown): an instruction that names the answer format and, when
  known, the allowed answers."""
  instruction = ("Answer the question about the input below. Reason step by step in a few sentences, then "
                 "give the answer on a last line as \"Answer: <answer>\".")
  label_set = parsers.task_labels(task, labels)
  if label_set:
    instruction += " Allowed answers: " + ", ".join(label_set) + "."
  return Template(name="generic", task=task, instruction=instruction, target_prefix="Reasoning:")


def student_template(task: str) -> Template:
  return Template(name="student", task=task, input_style="student")


def get_template(task: str, name: str = "default", labels: Sequence[str] | None = None) -> Template:
  """The template `name` (TEMPLATE_NAMES) for `task`; "default" is "dss" for the DSS tasks and
  "generic" for any other. `labels` overrides the task's label set in the generic instruction."""
  if name == "default":
    name = "dss" if task in _DSS else "generic"
  if name == "dss":
    return dss_template(task)
  if name == "generic":
    return generic_template(task, labels)
  if name == "student":
    return student_template(task)
  raise ValueError(f"teacher prompt {name!r}: expected one of {', '.join(TEMPLATE_NAMES)}")


# --- ids and chat templates --------------------------------------------------------------------------

def prompt_id(template: Template, sampling: base.Sampling, endpoint: str) -> str:
  """"<name>-<task>-<endpoint>-<sha256[:10]>" of everything that shapes the prompt and the sampling."""
  payload = {"template": dataclasses.asdict(template), "sampling": sampling.as_dict(), "endpoint": endpoint}
  digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
  return f"{template.name}-{template.task}-{endpoint}-{digest[:10]}"


def apply_chat_template(tokenizer: Any, messages: Sequence[base.Message]) -> str:
  """The prompt string of `messages`: the tokenizer's chat template with the assistant turn opened
  (add_generation_prompt=True) when it has one, else `plain_join(messages)`. A chat template that
  refuses a system message (e.g. Gemma's) gets the instruction at the head of the first user turn."""
  messages = [dict(m) for m in messages]
  if not getattr(tokenizer, "chat_template", None):
    return plain_join(messages)
  import jinja2  # pylint: disable=g-import-not-at-top  # transformers renders chat templates with it
  try:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  except jinja2.TemplateError:
    if not messages or messages[0]["role"] != "system" or len(messages) < 2:
      raise
    folded = [dict(messages[1], content=f"{messages[0]['content']}{SEPARATOR}{messages[1]['content']}"),
              *messages[2:]]
    return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=True)


def plain_join(messages: Sequence[base.Message]) -> str:
  """For a model without a chat template: each turn's text, a blank line before every system or
  user turn, an assistant turn on the line after its user turn, and a newline to continue on."""
  blocks: list[str] = []
  for m in messages:
    if m["role"] == "assistant" and blocks:
      blocks[-1] += "\n" + m["content"]
    else:
      blocks.append(m["content"])
  return SEPARATOR.join(blocks) + "\n"
