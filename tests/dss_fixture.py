"""A tiny, invented Distilling-Step-by-Step release, written on demand for the tests.

The real release (../shared/data/dss) must never be committed, nor any file named like one of its
files, so the fixture lives here as Python data and `write_dss_fixture(root)` lays it out under `root`
with the release's file names: `<task>/<task>_<split>.json` (JSON lines) and
`<task>/llm/<split>_CoT_<n>.json` (a JSON list of PaLM completions, concatenated over n in numeric order,
one per record). Every sentence is made up.

Edge cases it carries (the tests rely on them):
  esnli  valid: a blank line between records (line 3), an empty explanation_2 between two non-empty ones,
         two records sharing a premise, completions split over valid_CoT_0 (2 items), _2 and _10 (numeric,
         not lexical, order), a completion that runs on into the next exemplar, a wrong answer and an
         unparseable, repetitive completion; test: an answer word in another case ("Neutral").
  cqa    a repeated choice, an answer given as the right letter with other text, a wrong letter, a hedged
         answer ("either (b) ... or (c) ..."), a completion with no answer marker, CoT lists over two lines.
  svamp  a nested equation, an answer outside parentheses, a non-arithmetic answer, a thousands comma in a
         wrong answer, a completion with no answer marker.
  anli   the anli1/ directory layout, integer and word labels, an empty reason.
"""

import json
import pathlib

_BLANK = None  # a blank line in a JSON-lines file


def _esnli(premise, hypothesis, label, e1, e2="", e3=""):
  return {"premise": premise, "hypothesis": hypothesis, "label": label, "explanation_1": e1,
          "explanation_2": e2, "explanation_3": e3}


def _cqa(id_, question, choices, answer, abstractive, extractive):
  return {"id": id_, "question": question, "choices": choices, "answer": answer,
          "abstractive_explanation": abstractive, "extractive_explanation": extractive}


def _anli(uid, premise, hypothesis, label, reason):
  return {"uid": uid, "premise": premise, "hypothesis": hypothesis, "label": label, "reason": reason}


# Records: path -> list of records (`_BLANK` for a blank line).
RECORDS = {
    "esnli/esnli_valid.json": [
        _esnli("Two jugglers in striped vests toss pins beside a fountain.",
               "The jugglers are brothers.", 1,
               "Jugglers side by side need not be brothers.", "",
               "Matching vests do not make people family."),
        _esnli("Two jugglers in striped vests toss pins beside a fountain.",
               "Two jugglers are tossing pins.", 0,
               "Tossing pins beside a fountain means tossing pins.", "Both say the jugglers toss pins.", ""),
        _BLANK,
        _esnli("A potter shapes a clay bowl at a wheel.", "The potter is swimming in a lake.", 2,
               "One cannot shape a bowl at a wheel while swimming in a lake."),
        _esnli("A toddler stacks green blocks.", "A small child is playing with blocks.", 0,
               "A toddler stacking blocks is a small child playing with blocks."),
    ],
    "esnli/esnli_test.json": [
        _esnli("A goat climbs a snowy hill.", "A goat is outside.", 0,
               "A goat is an animal and a snowy hill is outdoors."),
        _esnli("A sailor reads a letter on deck.", "The sailor is reading a letter from home.", 1,
               "Not every letter on deck is from home."),
    ],
    "cqa/cqa_train.json": [
        _cqa("cqa-a1", "Where would you find a resting walrus?",
             ["iceberg", "desert", "library", "sky", "forest"],
             "iceberg", "walruses rest on icebergs", "walrus"),
        _cqa("cqa-a2", "What do you use to sharpen a pencil?",
             ["spoon", "sharpener", "pillow", "cup", "sharpener"],
             "sharpener", "a sharpener sharpens pencils", "sharpen a pencil"),
        _cqa("cqa-a3", "Where do people keep ice lollies frozen?",
             ["oven", "freezer", "closet", "garage", "car"],
             "freezer", "a freezer keeps lollies frozen", "frozen"),
        _cqa("cqa-a4", "What can a kangaroo do?", ["hop", "swim", "read", "drive", "type"],
             "hop", "kangaroos hop", "kangaroo"),
    ],
    "cqa/cqa_test.json": [
        _cqa("cqa-t1", "Where is a good place to paint in peace?",
             ["studio", "volcano", "ocean floor", "highway", "sky"],
             "studio", "a studio is a calm place for painting", "paint"),
        _cqa("cqa-t2", "What is sticky?", ["water", "glue", "snow", "rain", "fog"],
             "glue", "glue sticks things together", "sticky"),
    ],
    "svamp/svamp_train.json": [
        {"input": "A robot stacks 96 bricks into 3 equal towers.\nHow many bricks are in each tower?",
         "label": "( 96.0 / 3.0 )"},
        {"input": "A baker fills 12 trays with 15 buns each, on each of 3 shelves.\nHow many buns are there?",
         "label": "( ( 12.0 * 15.0 ) * 3.0 )"},
        {"input": "Pip had some shells and lost 8. She has 7 left.\nHow many shells did she have?",
         "label": "( 7.0 + 8.0 )"},
        {"input": "A kiosk sold 2,340 stamps and 60 postcards.\nHow many items did the kiosk sell?",
         "label": "( 2340.0 + 60.0 )"},
    ],
    "svamp/svamp_test.json": [
        {"input": "A gardener plants 6 rows of 25 tulips.\nHow many tulips does the gardener plant?",
         "label": "( 6.0 * 25.0 )"},
        {"input": "Ivo had 13 coins and spent 4.\nHow many coins does Ivo keep?", "label": "( 13.0 - 4.0 )"},
    ],
    "anli1/anli1_train.json": [
        _anli("a1", "The Vellmoor tram line links the old harbour to the museum.",
              "Vellmoor has a tram line.", 0,
              "The tram line is in Vellmoor."),
        _anli("a2", "Odrin Pask was a Finnish glassblower.", "Odrin Pask was Chilean.", 2, ""),
        _anli("a3", "The puppet show opened in 2011.", "The puppet show sold out every night.", 1,
              "The premise says nothing about ticket sales."),
    ],
    "anli1/anli1_valid.json": [
        _anli("v1", "Lio teaches violin in Manitoba.", "Lio works in Canada.", "entailment",
              "Manitoba is in Canada."),
    ],
    "anli1/anli1_test.json": [
        _anli("t1", "Tove bought four plums.", "Tove bought some fruit.", 0, "Plums are a kind of fruit."),
    ],
}

# Completions: path -> (completions, whether the JSON list puts each on its own line).
COMPLETIONS = {
    "esnli/llm/valid_CoT_0.json": ([
        "Jugglers beside a fountain are not necessarily brothers.\nAnswer: neutral\n\n"
        "Premise: Two jugglers in striped vests toss pins beside a fountain.\n"
        "Hypothesis: Two jugglers are tossing pins.\nReasonings: They toss pins.\nAnswer: entailment",
        "The jugglers toss juggling pins, not bowling pins.\nAnswer: contradiction\n\n"
        "Premise: A potter sits.",
    ], True),
    # Numeric order: _2 comes before _10 (a lexical sort would swap them).
    "esnli/llm/valid_CoT_2.json": ([
        "A potter at a wheel is dry. A potter at a wheel is dry. A potter at a",
    ], False),
    "esnli/llm/valid_CoT_10.json": ([
        "A toddler stacking blocks is playing with them.\nAnswer: entailment\n\nPre",
    ], False),
    "esnli/llm/test_CoT_0.json": ([
        "A goat is an animal, and a hill is outdoors.\nAnswer: entailment\n\nPremise: x",
        "A letter is not necessarily from home.\nAnswer: Neutral",
    ], False),
    "cqa/llm/train_CoT_0.json": ([
        "The answer must be a place where walruses rest. Of the above choices, only iceberg is icy. "
        "So the answer is (a) iceberg.\n\nQ: What is green?\nAnswer Choices:\n(a) grass\n"
        "A: So the answer is (a) grass.",
        "The answer must be a tool that sharpens. So the answer is (c) pillow.",
    ], True),
    "cqa/llm/train_CoT_1.json": ([
        "The answer must keep lollies frozen. So the answer is either (b) freezer or (c) closet.",
        "The answer must be something kangaroos do. Kangaroos hop.",
    ], True),
    "cqa/llm/test_CoT_0.json": ([
        "The answer must be a calm place. So the answer is (a) studio.\n\nQ: next",
        "The answer must be sticky. So the answer is (b) resin.",
    ], False),
    "svamp/llm/train_CoT_0.json": ([
        "The robot makes 3 towers from 96 bricks. 96 / 3 = 32. The answer is (96 / 3).\n\n"
        "Q: There are 140 owls.\nA: The answer is (140 / 7).",
        "There are 12 * 15 = 180 buns per shelf. The answer is (12 * 15) * 3.\n\nQ",
    ], True),
    "svamp/llm/train_CoT_1.json": ([
        "Pip had some shells. The answer is (shells - 8).",
        "The kiosk sold 2,340 stamps and 60 postcards. The answer is (2,340 + 61).",
    ], False),
    "svamp/llm/test_CoT_0.json": ([
        "6 * 25 = 150. The answer is (6 * 25).",
        "Ivo had 13 coins. So Ivo keeps 13 - 4 = 9 coins.",
    ], False),
    "anli1/llm/train_CoT_0.json": ([
        "The Vellmoor line is a tram line.\nAnswer: entailment\n\nPremise: x",
        "A Finnish person is not Chilean.\nAnswer: contradiction",
        "The premise does not say.\nAnswer: entailment",
    ], False),
    "anli1/llm/valid_CoT_0.json": ([
        "Manitoba is a Canadian province.\nAnswer: entailment",
    ], False),
    "anli1/llm/test_CoT_0.json": ([
        "Plums are a kind of fruit.\nAnswer: entailment\n\n",
    ], False),
}


def _dumps(obj) -> str:
  return json.dumps(obj, separators=(",", ":"))


def _records_text(records) -> str:
  return "".join(("" if r is _BLANK else _dumps(r)) + "\n" for r in records)


def _completions_text(items, one_per_line: bool) -> str:
  sep = ",\n " if one_per_line else ", "
  return "[" + sep.join(json.dumps(c) for c in items) + "]\n"


def write_dss_fixture(root: pathlib.Path) -> pathlib.Path:
  """Writes the fixture release under `root` (created if needed) and returns `root`."""
  root = pathlib.Path(root)
  files = {path: _records_text(recs) for path, recs in RECORDS.items()}
  files.update({path: _completions_text(*c) for path, c in COMPLETIONS.items()})
  for rel, text in files.items():
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
  return root
