"""Teacher prompt templates (teachers/prompts.py) and answer parsers (teachers/parsers.py)."""

import dataclasses
import pathlib
import re

import pytest

from jaxdistill.data import formats
from jaxdistill.data.examples import Example
from jaxdistill.data.sources import load_dataset
from jaxdistill.teachers import base, parsers, prompts
from jaxdistill.teachers.parsers import Parsed

REPO = pathlib.Path(__file__).resolve().parents[1]
DSS_ROOT = REPO.parent / "shared" / "data" / "dss"
NEXT_EXEMPLAR = {"esnli": "\n\nPremise: x\nHypothesis: y\nReasoning: z\nAnswer: contradiction",
                 "anli": "\n\nPremise: x\nHypothesis: y\nReasoning: z So the answer is contradiction.",
                 "cqa": "\n\nQ: next?\nAnswer Choices:\n(a) a\nA: So the answer is (a) a.",
                 "svamp": "\n\nQ: next?\nA: The answer is (1 + 1)."}


@pytest.fixture(scope="module")
def real_examples():
  """task -> a few dev examples of the real release (../shared/data/dss), anli from the fixture release."""
  if not DSS_ROOT.is_dir():
    pytest.skip(f"{DSS_ROOT} not found")
  out = {}
  for task in ("esnli", "cqa", "svamp"):
    d = load_dataset({"source": "dss", "task": task, "path": str(DSS_ROOT / task), "dev_size": 10})
    out[task] = d.splits["dev"][:3]
  return out


@pytest.fixture(scope="module")
def anli_examples(dss_fixture_dir):
  return load_dataset({"source": "dss", "task": "anli", "path": str(dss_fixture_dir), "dev_size": 1}
                      ).splits["train"]


def _examples(task, real_examples, anli_examples):
  return anli_examples if task == "anli" else real_examples[task]


# --- templates -------------------------------------------------------------------------------------

@pytest.mark.parametrize("task,opener", [("esnli", "\nReasoning:"), ("anli", "\nReasoning:"), ("cqa", "\nA:"),
                                         ("svamp", "\nA:")])
def test_dss_render_and_messages_on_real_examples(task, opener, real_examples, anli_examples):
  t = prompts.get_template(task)
  assert t == prompts.get_template(task, "dss") and t.name == "dss" and t.task == task
  assert 3 <= len(t.exemplars) <= 4 and t.instruction
  for ex in _examples(task, real_examples, anli_examples):
    text = t.input_text(ex)
    prompt = t.render(ex)
    # Instruction, exemplars, then the example, blank-line separated, ending where the teacher writes.
    blocks = prompt.split("\n\n")
    assert blocks[0] == t.instruction and len(blocks) == 2 + len(t.exemplars)
    assert prompt.endswith(text + opener)
    for (inp, target), block in zip(t.exemplars, blocks[1:]):
      assert block == f"{inp}{opener} {target}"
    msgs = t.messages(ex)
    assert msgs[0] == {"role": "system", "content": t.instruction}
    assert [m["role"] for m in msgs[1:]] == ["user", "assistant"] * len(t.exemplars) + ["user"]
    assert [(u["content"], a["content"]) for u, a in zip(msgs[1:-1:2], msgs[2::2])] == list(t.exemplars)
    assert msgs[-1]["content"] == text
  ex = _examples(task, real_examples, anli_examples)[0]
  if task in ("esnli", "anli"):
    assert t.input_text(ex) == f"Premise: {ex.inputs['premise']}\nHypothesis: {ex.inputs['hypothesis']}"
  elif task == "cqa":
    lines = t.input_text(ex).split("\n")
    assert lines[:2] == [f"Q: {ex.inputs['question']}", "Answer Choices:"]
    assert lines[2:] == [f"({'abcde'[i]}) {c}" for i, c in enumerate(parsers.choice_list(ex))]
  else:
    assert t.input_text(ex) == f"Q: {ex.inputs['question']}"


@pytest.mark.parametrize("task", prompts.DSS_TASKS)
def test_exemplar_targets_parse_to_their_own_answers(task):
  t = prompts.get_template(task)
  assert len(prompts.EXEMPLARS[task]) == len(t.exemplars)
  for (ex, rationale), (inp, target) in zip(prompts.EXEMPLARS[task], t.exemplars):
    assert inp == t.input_text(ex)
    assert t.answer_marker in target
    expected = Parsed(rationale, ex.label, True)
    assert parsers.parse(task, target, ex) == expected
    # As a completion-endpoint teacher writes it: after the opener, running on into a next exemplar.
    assert parsers.parse(task, " " + target + NEXT_EXEMPLAR[task], ex) == expected


def test_exemplars_span_the_labels():
  assert {ex.label for ex, _ in prompts.EXEMPLARS["esnli"]} == set(parsers.NLI_LABELS)
  assert {ex.label for ex, _ in prompts.EXEMPLARS["anli"]} == set(parsers.NLI_LABELS)
  letters = {parsers.choice_list(ex).index(ex.label) for ex, _ in prompts.EXEMPLARS["cqa"]}
  assert len(letters) >= 3  # the answer is not always (a)


def test_generic_template_for_other_tasks():
  ex = Example(id="q1", task="mytask", inputs={"claim": "Cats bark.", "evidence": "Cats meow."}, label="false")
  t = prompts.get_template("mytask")
  assert t.name == "generic" and t.exemplars == () and "Answer: <answer>" in t.instruction
  assert "Allowed" not in t.instruction  # no known label set
  assert t.render(ex) == t.instruction + "\n\nclaim: Cats bark. evidence: Cats meow.\nReasoning:"
  assert t.messages(ex) == ({"role": "system", "content": t.instruction},
                            {"role": "user", "content": "claim: Cats bark. evidence: Cats meow."})
  assert "Allowed answers: true, false." in prompts.get_template("mytask", labels=("true", "false")).instruction
  # The embedded demo task has e-SNLI's labels; any DSS task can use the generic template too.
  assert "Allowed answers: entailment, neutral, contradiction." in prompts.get_template("demo").instruction
  assert prompts.get_template("esnli", "generic").name == "generic"
  demo = load_dataset({"source": "demo"}).splits["dev"][0]
  assert prompts.get_template("demo").render(demo).endswith(formats.input_text(demo) + "\nReasoning:")


def test_student_template_is_the_cot_prompt():
  for ex in load_dataset({"source": "demo"}).splits["dev"][:3]:
    t = prompts.get_template("demo", "student")
    assert t.render(ex) == formats.cot_prompt(ex)
    assert t.messages(ex) == ({"role": "user", "content": formats.cot_prompt(ex)},)
    # What such a student writes (formats' rationale_answer target) parses back.
    target = formats.combined_record(ex, ex.label, "Because it says so.", "rationale_answer", 1.0).target
    assert parsers.parse("demo", target, ex) == Parsed("Because it says so.", ex.label, True)
    answer_only = formats.combined_record(ex, ex.label, None, "rationale_answer", 1.0).target
    assert parsers.parse("demo", answer_only, ex) == Parsed("", ex.label, True)


def test_student_completions_of_dss_tasks_parse(real_examples):
  for task in ("esnli", "cqa", "svamp"):
    ex = real_examples[task][0]
    target = formats.combined_record(ex, ex.label, "Some reason.", "rationale_answer", 1.0).target
    assert parsers.parse(task, target, ex) == Parsed("Some reason.", ex.label, True), target


def test_template_errors():
  with pytest.raises(ValueError, match="teacher prompt 'fancy': expected one of default, dss, generic, student"):
    prompts.get_template("esnli", "fancy")
  with pytest.raises(ValueError, match="no template for task 'mytask'.*use 'generic'"):
    prompts.get_template("mytask", "dss")
  ex = Example(id="q1", task="esnli", inputs={"premise": "p"}, label="neutral")
  with pytest.raises(ValueError, match=r"example 'q1': the 'dss' prompt needs input field 'hypothesis' "
                                       r"\(it has \['premise'\]\)"):
    prompts.get_template("esnli").render(ex)
  with pytest.raises(ValueError, match="needs input field 'choices'"):
    prompts.get_template("cqa").messages(Example(id="c", task="cqa", inputs={"question": "q?"}, label="x"))


# --- prompt ids ----------------------------------------------------------------------------------------

def test_prompt_id_is_stable_readable_and_sensitive():
  t = prompts.get_template("esnli")
  s = base.Sampling()
  pid = prompts.prompt_id(t, s, "chat")
  assert re.fullmatch(r"dss-esnli-chat-[0-9a-f]{10}", pid)
  assert pid == prompts.prompt_id(prompts.get_template("esnli"), base.Sampling(), "chat")
  variants = [
      prompts.prompt_id(t, s, "completions"),
      prompts.prompt_id(dataclasses.replace(t, instruction=t.instruction + " "), s, "chat"),
      prompts.prompt_id(dataclasses.replace(t, exemplars=t.exemplars[:-1]), s, "chat"),
      prompts.prompt_id(dataclasses.replace(t, exemplars=((t.exemplars[0][0], t.exemplars[0][1] + "."),)
                                            + t.exemplars[1:]), s, "chat"),
      prompts.prompt_id(dataclasses.replace(t, name="dss2"), s, "chat"),
      prompts.prompt_id(dataclasses.replace(t, target_prefix="Because:"), s, "chat"),
      prompts.prompt_id(prompts.get_template("anli"), s, "chat"),
      prompts.prompt_id(prompts.get_template("esnli", "generic"), s, "chat"),
      prompts.prompt_id(prompts.get_template("esnli", "student"), s, "chat"),
  ]
  for field, value in (("temperature", 0.0), ("top_p", 0.9), ("top_k", 40), ("max_tokens", 128),
                       ("top_logprobs", 5), ("stop", ("\n\n",))):
    variants.append(prompts.prompt_id(t, dataclasses.replace(s, **{field: value}), "chat"))
  assert len(set(variants + [pid])) == len(variants) + 1


# --- chat templates --------------------------------------------------------------------------------

def _tiny_tokenizer(chat_template):
  from tokenizers import Tokenizer, models, pre_tokenizers
  from transformers import PreTrainedTokenizerFast
  tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
  fast.chat_template = chat_template
  return fast


CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
             "supported') }}{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
             "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_apply_chat_template():
  ex = Example(id="e", task="esnli", inputs={"premise": "A dog runs.", "hypothesis": "An animal moves."},
               label="entailment")
  msgs = prompts.get_template("esnli").messages(ex)
  text = prompts.apply_chat_template(_tiny_tokenizer(CHAT), msgs)
  assert text == "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in msgs) + "<|assistant|>"
  # A template without a system role: the instruction opens the first user turn.
  text = prompts.apply_chat_template(_tiny_tokenizer(NO_SYSTEM), msgs)
  assert text.startswith(f"<|user|>{msgs[0]['content']}\n\n{msgs[1]['content']}<|end|><|assistant|>")
  assert "<|system|>" not in text and text.endswith("<|user|>" + msgs[-1]["content"] + "<|end|><|assistant|>")
  # No chat template: a plain join (instruction, then each exemplar as input and target, then the input).
  plain = prompts.apply_chat_template(_tiny_tokenizer(None), msgs)
  t = prompts.get_template("esnli")
  assert plain == "\n\n".join([t.instruction, *(f"{i}\n{o}" for i, o in t.exemplars), t.input_text(ex)]) + "\n"


# --- parsing: reasoning models, generic tasks -----------------------------------------------------------

def _nli(label="neutral"):
  return Example(id="e", task="esnli", inputs={"premise": "p", "hypothesis": "h"}, label=label)


def test_think_blocks_and_reasoning_content():
  ex = _nli()
  # Visible text holds only the answer: the thought is the rationale.
  assert parsers.parse("esnli", "<think>\nThe premise says nothing of it.\n</think>\n\nAnswer: neutral", ex) == \
      Parsed("The premise says nothing of it.", "neutral", True)
  assert parsers.parse("esnli", "<think>Nothing said.</think>Neutral", ex) == Parsed("Nothing said.", "neutral", True)
  assert parsers.parse("esnli", "Answer: neutral", ex, reasoning="From reasoning_content.") == \
      Parsed("From reasoning_content.", "neutral", True)
  assert parsers.parse("esnli", "neutral", ex, reasoning="Thought.") == Parsed("Thought.", "neutral", True)
  # The chat template opened the block in the prompt: only the closing tag is generated.
  assert parsers.parse("esnli", "It is unstated.\n</think>\n\nAnswer: contradiction", ex) == \
      Parsed("It is unstated.", "contradiction", False)
  # A visible rationale before the marker wins over the thought.
  assert parsers.parse("esnli", "<think>long</think>Visible reason.\nAnswer: neutral", ex) == \
      Parsed("Visible reason.", "neutral", True)
  # Cut off while thinking: no answer, the thought is kept.
  assert parsers.parse("esnli", "<think>Still thinking about Answer: entail", ex) == \
      Parsed("Still thinking about Answer: entail", "", False)
  # Free text of an open task after a thought is the answer; without a thought it is not.
  open_ex = Example(id="o", task="open", inputs={"q": "Capital of France?"}, label="Paris")
  assert parsers.parse("open", "Paris.", open_ex, reasoning="France's capital is Paris.") == \
      Parsed("France's capital is Paris.", "Paris", True)
  assert parsers.parse("open", "Paris.", open_ex) == Parsed("Paris.", "", False)


def test_generic_parser():
  demo = Example(id="d", task="demo", inputs={"premise": "p", "hypothesis": "h"}, label="neutral")
  # The demo task's labels are known; the final marker counts.
  assert parsers.parse("demo", "Not entailment. So the answer is: **Neutral**.", demo) == \
      Parsed("Not entailment.", "neutral", True)
  assert parsers.parse("demo", "The answer is unclear at first. Answer: contradiction", demo) == \
      Parsed("The answer is unclear at first.", "contradiction", False)
  assert parsers.parse("demo", "R.\nFinal answer:\nneutral", demo).teacher_answer == "neutral"
  assert parsers.parse("demo", "R. Answer: neutral, as nothing is said.", demo).teacher_answer == "neutral"
  for unparsed in ("R. Answer: neutral or contradiction", "R. Answer: probably neutral", "R. Answer: maybe",
                   "R. No marker at all.", "Reasoning: R.\nAnswer:"):
    assert parsers.parse("demo", unparsed, demo).teacher_answer == "", unparsed
  assert parsers.parse("demo", "Reasoning: R.\nAnswer: neutral", demo).rationale == "R."
  # Labels given by the caller; an unknown label set: the answer text itself, compared loosely.
  ex = Example(id="q", task="fact", inputs={"claim": "c"}, label="true")
  assert parsers.parse("fact", "R. Answer: True.", ex, labels=("true", "false")) == Parsed("R.", "true", True)
  assert parsers.parse("fact", "R. Answer: yes", ex, labels=("true", "false")).teacher_answer == ""
  assert parsers.parse("fact", "R. Answer: True.", ex) == Parsed("R.", "True", True)
  # Multiple choice outside CQA: the example's "(a) x (b) y" choices are its label space.
  mc = Example(id="m", task="quiz", inputs={"question": "q", "choices": parsers.format_choices(["red", "blue"])},
               label="blue")
  assert parsers.parse("quiz", "R. Answer: (b)", mc) == Parsed("R.", "blue", True)
  assert parsers.parse("quiz", "R. Answer: Blue", mc) == Parsed("R.", "blue", True)
  assert parsers.parse("quiz", "R. Answer: green", mc).teacher_answer == ""
  assert parsers.parse("quiz", "(b)", mc) == Parsed("", "blue", True)  # the bare answer, no rationale
