"""DSS release reader: completion parsing, splits, bad input, the import CLI, the real data."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from jaxdistill.data.examples import DataError, Example
from jaxdistill.data.sources import dss, load_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def dss_root():
  """The real release at ../shared/data/dss (never copied into the repo)."""
  root = REPO.parent / "shared" / "data" / "dss"
  if not root.is_dir():
    pytest.skip(f"{root} not found")
  return str(root)


def _nli(label="neutral"):
  return Example(id="e", task="esnli", inputs={"premise": "p", "hypothesis": "h"}, label=label)


def _cqa(label="ocean", choices=("ocean", "desert", "sky")):
  return Example(id="c", task="cqa", inputs={"question": "q", "choices": dss.format_choices(choices)},
                 label=label)


def _svamp(label="( 84.0 / 2.0 )"):
  return Example(id="s", task="svamp", inputs={"question": "q"}, label=label)


# --- parsing ---------------------------------------------------------------------------------

def test_parse_esnli():
  p = dss.parse_completion("esnli", "A is B.\nAnswer: neutral\n\nPremise: x\nHypothesis: y\nReasonings: z\n"
                           "Answer: entailment", _nli("neutral"))
  assert p == dss.Parsed("A is B.", "neutral", True)
  p = dss.parse_completion("esnli", "  Because.\nAnswer: Contradiction\n\nPre", _nli("neutral"))
  assert p == dss.Parsed("Because.", "contradiction", False)
  # No answer before the next exemplar: unparseable, rationale kept, never an error.
  p = dss.parse_completion("esnli", "Runs on and on\n\nPremise: p\nAnswer: neutral", _nli())
  assert p == dss.Parsed("Runs on and on", "", False)
  assert dss.parse_completion("esnli", "R.\nAnswer: maybe", _nli()) == dss.Parsed("R.", "", False)
  assert dss.parse_completion("anli", "R.\nAnswer: neutral", _nli()).teacher_correct


def test_parse_cqa():
  ex = _cqa()
  p = dss.parse_completion("cqa", "Sharks swim. So the answer is (a) ocean.\n\nQ: next?\nA: So the answer is "
                           "(b) desert.", ex)
  assert p == dss.Parsed("Sharks swim.", "ocean", True)
  # The text after the letter decides when it names a choice (the release reads the text; PaLM's letter
  # is sometimes one off), else the letter: PaLM corrects the choices' spelling ("(b) desserts").
  p = dss.parse_completion("cqa", "X. So the answer is (b) ocean.", ex)
  assert p == dss.Parsed("X.", "ocean", True)
  assert dss.parse_completion("cqa", "X. So the answer is (b) Deserts.", ex).teacher_answer == "desert"
  assert dss.parse_completion("cqa", "X. So the answer is (c).", ex).teacher_answer == "sky"
  for hedge in ("X. So the answer is either (a) ocean or (b) desert.",
                "X. So the answer is (a) ocean or (b) desert."):
    assert dss.parse_completion("cqa", hedge, ex) == dss.Parsed("X.", "", False)
  assert dss.parse_completion("cqa", "X. So the answer is (e) moon.", ex) == dss.Parsed("X.", "", False)
  assert dss.parse_completion("cqa", "No marker here.", ex) == dss.Parsed("No marker here.", "", False)
  assert dss.choice_list(ex) == ["ocean", "desert", "sky"]


def test_parse_svamp():
  ex = _svamp()
  p = dss.parse_completion("svamp", "84 / 2 = 42. The answer is (84 / 2).\n\nQ: x\nA: The answer is (1 + 1).",
                           ex)
  assert p == dss.Parsed("84 / 2 = 42.", "(84 / 2)", True)
  assert dss.parse_completion("svamp", "R. The answer is 42 - 0.", ex).teacher_correct
  p = dss.parse_completion("svamp", "R. The answer is (84 / 3).", ex)
  assert p == dss.Parsed("R.", "(84 / 3)", False)
  p = dss.parse_completion("svamp", "R. The answer is (16 * 17) * 4.\n\nQ",
                           _svamp("( ( 16.0 * 17.0 ) * 4.0 )"))
  assert p == dss.Parsed("R.", "(16 * 17) * 4", True)
  for bad in ("R. The answer is (some - 21).", "R. The answer is ((491 - 21", "R. no marker"):
    assert dss.parse_completion("svamp", bad, ex).teacher_answer == ""


def test_parse_release_markers():
  """The answer formats the release's reader (data_utils.py) takes that a line-start "Answer:" misses."""
  nli = _nli("neutral")
  # e-SNLI: "Answer:" anywhere (the release reads after the first "Answer: "), also after a blank line,
  # up to the next exemplar whether or not a blank line comes before it.
  assert dss.parse_completion("esnli", "A is B. Answer: neutral", nli) == dss.Parsed("A is B.", "neutral", True)
  assert dss.parse_completion("esnli", "A is B.\n\nAnswer: neutral\n\nPremise: x\nAnswer: entailment", nli) == \
      dss.Parsed("A is B.", "neutral", True)
  assert dss.parse_completion("esnli", "A is B.\nAnswer: neutral\nPremise: x\nHypothesis: y\nAnswer: entailment",
                              nli) == dss.Parsed("A is B.", "neutral", True)
  assert dss.parse_completion("esnli", "A is B.\n**Answer:** Neutral.", nli).teacher_answer == "neutral"
  # ANLI: "So the answer is <label>." (PaLM) and "The answer is <label>." (the release's GPT-NeoX reader).
  p = dss.parse_completion("anli", "It is not said. So the answer is neutral.\n\nPremise: x\nHypothesis: y", nli)
  assert p == dss.Parsed("It is not said.", "neutral", True)
  assert dss.parse_completion("anli", "Not so. The answer is contradiction.", nli) == \
      dss.Parsed("Not so.", "contradiction", False)
  assert dss.parse_completion("anli", "R. So the answer is neutral.\nPremise: x\nSo the answer is entailment.",
                              nli).teacher_answer == "neutral"
  # CQA: the letter anywhere after the marker on its line; the next "Q:" without a blank line.
  cqa = _cqa()
  assert dss.parse_completion("cqa", "X. So the answer is: (a) ocean.", cqa) == dss.Parsed("X.", "ocean", True)
  assert dss.parse_completion("cqa", "X. So the answer is option (c) sky.", cqa).teacher_answer == "sky"
  assert dss.parse_completion("cqa", "X. So the answer is (a) ocean.\nQ: Next?\nAnswer Choices:\n(a) x\n"
                              "A: So the answer is (b) desert.", cqa).teacher_answer == "ocean"
  # SVAMP: a parenthesised equation among other words, a colon, "= result", the next "Q:" without a blank.
  sv = _svamp()
  for text, answer in (("R. The answer is: (84 / 2).", "(84 / 2)"),
                       ("R. The answer is therefore (84 / 2).", "(84 / 2)"),
                       ("R. The answer is 84 / 2 = 42.", "84 / 2"),
                       ("R.\n\nThe answer is (84 / 2).", "(84 / 2)"),
                       ("R. The answer is (84 / 2).\nQ: x\nA: The answer is (1 + 1).", "(84 / 2)")):
    assert dss.parse_completion("svamp", text, sv) == dss.Parsed("R.", answer, True), text
  assert dss.parse_completion("svamp", "R. The answer is (84 / 2) = 41.", sv).teacher_answer == ""  # disagrees
  assert dss.parse_completion("svamp", "R. The answer is (8 / 4) and (6 / 4).", sv).teacher_answer == ""


def test_split_with_too_many_unparsed_completions(dss_fixture_dir, tmp_path):
  """More than 5% of a split's completions without an answer is an error naming the file and the first
  one (e.g. another task's completions), never a summary with accuracy near 0; skip counts them."""
  from jaxdistill import cache as cache_tool
  tdir = _copy_task(dss_fixture_dir, tmp_path, "esnli")
  for f in (tdir / "llm").glob("valid_CoT_*.json"):
    f.unlink()
  cqa_style = "The answer must be a place. So the answer is (a) ocean."
  (tdir / "llm" / "valid_CoT_0.json").write_text(json.dumps(["R.\nAnswer: neutral"] + [cqa_style] * 3))
  pattern = (r"valid_CoT_0\.json\[1\]: the first of 3 of 4 esnli valid completions \(75\.0%, more than 5%\) "
             r"whose answer does not parse")
  with pytest.raises(DataError, match=pattern):
    dss.read_split(str(tmp_path), "esnli", "valid")
  exs, rats, skipped = dss.read_split(str(tmp_path), "esnli", "valid", on_error="skip")
  assert skipped == {"unparsed_completions": 3} and len(exs) == len(rats) == 4  # the rows are kept
  assert [r.teacher_answer for r in rats] == ["neutral", "", "", ""]
  with pytest.raises(DataError, match=pattern):
    load_dataset({"source": "dss", "task": "esnli", "path": str(tmp_path), "dev_size": 1})
  lines = []
  (summary,) = cache_tool.import_dss("esnli", str(tmp_path), "valid", str(tmp_path / "cache"), on_error="skip",
                                     echo=lines.append)
  assert summary["skipped"] == {"unparsed_completions": 3} and summary["unparsed"] == 3
  assert "unparsed 3, skipped: unparsed_completions=3" in lines[0]


def test_unparsed_threshold():
  from jaxdistill.data.sources import ErrorPolicy
  policy = ErrorPolicy("raise")
  dss.check_unparsed("svamp", "train", ["f.json[7]"] * 5, 100, policy)  # 5% is allowed
  with pytest.raises(DataError, match=r"^f\.json\[7\]: the first of 6 of 100 svamp train completions \(6\.0%"):
    dss.check_unparsed("svamp", "train", ["f.json[7]"] * 6, 100, policy)
  dss.check_unparsed("svamp", "test", ["f.json[0]"] * 2, 4, policy)  # a tiny split may hold two
  with pytest.raises(DataError, match="3 of 4"):
    dss.check_unparsed("svamp", "test", ["f.json[0]"] * 3, 4, policy)
  skip = ErrorPolicy("skip")
  dss.check_unparsed("svamp", "test", ["f.json[0]"] * 3, 4, skip)
  assert skip.as_dict() == {"unparsed_completions": 3}


def test_safe_eval():
  assert dss.safe_eval("( ( 17.0 + 15.0 ) + 2.0 )") == 34.0
  assert dss.safe_eval("-(3 - 5) * 2 / 4") == 1.0
  assert dss.safe_eval("11,210 + 1") == 11211.0
  assert dss.equations_equal("( 84.0 / 2.0 )", "84/2") and not dss.equations_equal("1/3", "0.333")
  assert dss.equations_equal("1/3", "0.33334")  # within 1e-4
  for bad in ("__import__('os').system('true')", "x + 1", "2 ** 8", "1 / 0", "(1, 2)", "7x = 14", "", "1 +",
              "(" * 300 + "1" + ")" * 300, "1e308 * 10", "abs(-1)", "[1][0]", "1 if 1 else 2"):
    with pytest.raises(ValueError):
      dss.safe_eval(bad)


# --- reading the fixture release (tests/dss_fixture.py, written by the dss_fixture_dir fixture) -----

def test_read_esnli_fixture(dss_fixture_dir):
  exs, rats, skipped = dss.read_split(str(dss_fixture_dir), "esnli", "valid")
  assert skipped == {}
  assert [e.id for e in exs] == ["esnli-valid-0", "esnli-valid-1", "esnli-valid-2", "esnli-valid-3"]
  assert [e.label for e in exs] == ["neutral", "entailment", "contradiction", "entailment"]
  assert exs[0].inputs == {"premise": "Two jugglers in striped vests toss pins beside a fountain.",
                           "hypothesis": "The jugglers are brothers."}
  assert exs[0].human_explanations == ("Jugglers side by side need not be brothers.",
                                       "Matching vests do not make people family.")
  assert exs[0].split == "valid"
  # CoT files concatenate in numeric order: _0 (2 items), _2, _10.
  assert [(r.teacher_answer, r.teacher_correct) for r in rats] == [
      ("neutral", True), ("contradiction", False), ("", False), ("entailment", True)]
  assert rats[3].rationale == "A toddler stacking blocks is playing with them."
  assert rats[0].raw.startswith("Jugglers beside") and rats[0].raw.endswith("Answer: entailment")
  assert {(r.teacher, r.prompt_id, r.sample_index) for r in rats} == {("palm-540b", "dss-cot", 0)}
  assert [r.example_id for r in rats] == [e.id for e in exs]
  # The task directory itself works as src too.
  assert dss.read_split(str(dss_fixture_dir / "esnli"), "esnli", "valid")[0] == exs


def test_read_cqa_svamp_anli_fixtures(dss_fixture_dir):
  fixtures = str(dss_fixture_dir)
  exs, rats, _ = dss.read_split(fixtures, "cqa", "train")
  assert [e.id for e in exs] == ["cqa-a1", "cqa-a2", "cqa-a3", "cqa-a4"]
  assert exs[1].inputs["choices"] == "(a) spoon (b) sharpener (c) pillow (d) cup (e) sharpener"
  assert exs[1].human_explanations == ("a sharpener sharpens pencils",)
  assert [(r.teacher_answer, r.teacher_correct) for r in rats] == [
      ("iceberg", True), ("pillow", False), ("", False), ("", False)]
  exs, rats, _ = dss.read_split(fixtures, "svamp", "train")
  assert exs[0].inputs == {"question": "A robot stacks 96 bricks into 3 equal towers.\n"
                                       "How many bricks are in each tower?"}
  assert [(r.teacher_answer, r.teacher_correct) for r in rats] == [
      ("(96 / 3)", True), ("(12 * 15) * 3", True), ("", False), ("(2,340 + 61)", False)]
  # ANLI: same layout as e-SNLI under anli1/, files globbed as *_{split}.json.
  assert dss.available_splits(fixtures, "anli") == ["train", "valid", "test"]
  exs, rats, _ = dss.read_split(fixtures, "anli", "train")
  assert [e.label for e in exs] == ["entailment", "contradiction", "neutral"]
  assert exs[0].human_explanations == ("The tram line is in Vellmoor.",) and exs[1].human_explanations == ()
  assert [r.teacher_correct for r in rats] == [True, True, False]
  exs, _, _ = dss.read_split(fixtures, "anli", "valid")
  assert exs[0].label == "entailment"  # label given as a word


def test_load_splits(dss_fixture_dir):
  cfg = {"source": "dss", "task": "esnli", "path": str(dss_fixture_dir), "dev_size": 1,
         "max_train_examples": -1, "on_error": "raise", "cache_dir": ""}
  d = load_dataset(cfg)
  assert d.task == "esnli" and d.labels == ("entailment", "neutral", "contradiction") and d.skipped == {}
  # No train split: train = valid minus the last dev_size, dev = those, test = test.
  assert [e.id for e in d.splits["train"]] == ["esnli-valid-0", "esnli-valid-1", "esnli-valid-2"]
  assert [e.id for e in d.splits["dev"]] == ["esnli-valid-3"]
  assert [e.id for e in d.splits["test"]] == ["esnli-test-0", "esnli-test-1"]
  assert {e.split for e in d.splits["train"]} == {"train"} and d.splits["dev"][0].split == "dev"
  assert set(d.rationales) == {e.id for s in d.splits.values() for e in s}
  assert d.rationales["esnli-test-1"][0].teacher_answer == "neutral"
  d = load_dataset(dict(cfg, max_train_examples=2))
  assert len(d.splits["train"]) == 2 and len(d.splits["dev"]) == 1
  assert "esnli-valid-2" not in d.rationales
  # Train split present (cqa/svamp): dev = last dev_size of train.
  d = load_dataset(dict(cfg, task="cqa"))
  assert [e.id for e in d.splits["dev"]] == ["cqa-a4"] and len(d.splits["train"]) == 3
  assert d.labels is None and len(d.splits["test"]) == 2
  # Train and valid present (anli): train = train, dev = last dev_size of valid.
  d = load_dataset(dict(cfg, task="anli"))
  assert [len(d.splits[s]) for s in ("train", "dev", "test")] == [3, 1, 1]
  with pytest.raises(ValueError, match="dev_size=4 leaves no training examples"):
    load_dataset(dict(cfg, dev_size=4))


# --- bad input -----------------------------------------------------------------------------------

def _copy_task(fixture_dir, tmp_path, task):
  src = fixture_dir / ("anli1" if task == "anli" else task)
  dst = tmp_path / src.name
  shutil.copytree(src, dst)
  return dst


def _edit_line(path, lineno, fn):
  lines = path.read_text().split("\n")
  lines[lineno - 1] = fn(lines[lineno - 1])
  path.write_text("\n".join(lines))


def _set_field(key, value):
  def fn(line):
    rec = json.loads(line)
    if value is _DELETE:
      del rec[key]
    else:
      rec[key] = value
    return json.dumps(rec)
  return fn


_DELETE = object()

BAD_RECORDS = [
    # task, split, file, line, edit, reason, message pattern
    ("esnli", "valid", "esnli_valid.json", 2, lambda l: l[:-5], "malformed_json",
     r"esnli_valid\.json:2: malformed JSON"),
    ("esnli", "valid", "esnli_valid.json", 4, _set_field("hypothesis", _DELETE), "missing_field",
     r"esnli_valid\.json:4: missing field 'hypothesis'"),
    ("esnli", "valid", "esnli_valid.json", 5, _set_field("label", 7), "unknown_label",
     r"esnli_valid\.json:5: unknown label 7"),
    ("esnli", "valid", "esnli_valid.json", 5, _set_field("label", True), "unknown_label",
     r"esnli_valid\.json:5: unknown label True"),
    ("esnli", "test", "esnli_test.json", 1, _set_field("explanation_1", "  "), "empty_explanation",
     r"esnli_test\.json:1: field 'explanation_1' is empty"),
    ("esnli", "valid", "esnli_valid.json", 1, _set_field("premise", ["x"]), "bad_field",
     r"esnli_valid\.json:1: field 'premise' must be a string"),
    ("cqa", "train", "cqa_train.json", 2, _set_field("answer", "hammer"), "unknown_label",
     r"cqa_train\.json:2: answer 'hammer' is not one of the choices"),
    ("cqa", "train", "cqa_train.json", 3, _set_field("choices", _DELETE), "missing_field",
     r"cqa_train\.json:3: missing field 'choices'"),
    ("cqa", "test", "cqa_test.json", 2, _set_field("abstractive_explanation", ""), "empty_explanation",
     r"cqa_test\.json:2: field 'abstractive_explanation' is empty"),
    ("cqa", "train", "cqa_train.json", 4, _set_field("id", "cqa-a1"), "duplicate_id",
     r"cqa_train\.json:4: duplicate id 'cqa-a1'"),
    ("svamp", "train", "svamp_train.json", 3, _set_field("label", "( x + 1 )"), "unknown_label",
     r"svamp_train\.json:3: label '\( x \+ 1 \)' is not an arithmetic equation"),
    ("svamp", "test", "svamp_test.json", 1, _set_field("input", _DELETE), "missing_field",
     r"svamp_test\.json:1: missing field 'input'"),
    ("anli", "train", "anli1_train.json", 2, _set_field("label", "maybe"), "unknown_label",
     r"anli1_train\.json:2: unknown label 'maybe'"),
]


@pytest.mark.parametrize("task,split,fname,line,edit,reason,pattern", BAD_RECORDS,
                         ids=[f"{b[0]}-{b[5]}-{i}" for i, b in enumerate(BAD_RECORDS)])
def test_bad_records(dss_fixture_dir, tmp_path, task, split, fname, line, edit, reason, pattern):
  tdir = _copy_task(dss_fixture_dir, tmp_path, task)
  _edit_line(tdir / fname, line, edit)
  with pytest.raises(DataError, match=pattern):
    dss.read_split(str(tmp_path), task, split)
  good_exs, good_rats, _ = dss.read_split(str(dss_fixture_dir), task, split)
  exs, rats, skipped = dss.read_split(str(tmp_path), task, split, on_error="skip")
  assert skipped == {reason: 1}
  assert len(exs) == len(good_exs) - 1 and len(rats) == len(good_rats) - 1
  # Completions stay aligned with their records around the skipped one.
  good = {r.example_id: r for r in good_rats}
  for r in rats:
    if reason != "duplicate_id":
      assert r == good[r.example_id]


def test_cot_length_mismatch(dss_fixture_dir, tmp_path):
  tdir = _copy_task(dss_fixture_dir, tmp_path, "esnli")
  (tdir / "llm" / "valid_CoT_10.json").write_text("[]")
  pattern = (r"valid_CoT_0\.json, valid_CoT_2\.json, valid_CoT_10\.json: 3 completions but "
             r"esnli_valid\.json has 4 records")
  with pytest.raises(DataError, match=pattern):
    dss.read_split(str(tmp_path), "esnli", "valid")
  exs, rats, skipped = dss.read_split(str(tmp_path), "esnli", "valid", on_error="skip")
  assert len(exs) == 4 and rats == [] and skipped == {"cot_length_mismatch": 4}


def test_bad_cot_files(dss_fixture_dir, tmp_path):
  tdir = _copy_task(dss_fixture_dir, tmp_path, "esnli")
  (tdir / "llm" / "valid_CoT_2.json").write_text('["unterminated')
  with pytest.raises(DataError, match=r"valid_CoT_2\.json:1: malformed JSON"):
    dss.read_split(str(tmp_path), "esnli", "valid")
  assert dss.read_split(str(tmp_path), "esnli", "valid", on_error="skip")[2] == {"bad_cot_file": 4}
  (tdir / "llm" / "valid_CoT_2.json").write_text("[null]")
  with pytest.raises(DataError, match=r"valid_CoT_2\.json\[0\]: completion must be a string"):
    dss.read_split(str(tmp_path), "esnli", "valid")
  exs, rats, skipped = dss.read_split(str(tmp_path), "esnli", "valid", on_error="skip")
  assert len(exs) == 4 and len(rats) == 3 and skipped == {"bad_completion": 1}


def test_invalid_utf8_in_records(dss_fixture_dir, tmp_path):
  tdir = _copy_task(dss_fixture_dir, tmp_path, "esnli")
  path = tdir / "esnli_valid.json"
  lines = path.read_bytes().split(b"\n")
  lines[1] = lines[1].replace(b"Tossing", b"To\xe9ssing")  # Latin-1, not UTF-8
  path.write_bytes(b"\n".join(lines))
  with pytest.raises(DataError, match=r"esnli_valid\.json:2: invalid UTF-8"):
    dss.read_split(str(tmp_path), "esnli", "valid")
  exs, rats, skipped = dss.read_split(str(tmp_path), "esnli", "valid", on_error="skip")
  assert skipped == {"invalid_utf8": 1} and [e.id for e in exs] == ["esnli-valid-0", "esnli-valid-2",
                                                                    "esnli-valid-3"]
  good = {r.example_id: r for r in dss.read_split(str(dss_fixture_dir), "esnli", "valid")[1]}
  assert rats == [good[e.id] for e in exs]  # completions stay aligned around the bad line
  # A JSON-list records file names the line too.
  path.write_bytes(b'[{"premise": "p",\n "hypothesis": "\xff"}]')
  with pytest.raises(DataError, match=r"esnli_valid\.json:2: invalid UTF-8"):
    dss.read_split(str(tmp_path), "esnli", "valid", on_error="skip")


def test_invalid_utf8_in_cot_file(dss_fixture_dir, tmp_path):
  tdir = _copy_task(dss_fixture_dir, tmp_path, "esnli")
  (tdir / "llm" / "valid_CoT_2.json").write_bytes(b'["A potter \xe0 the wheel."]')
  with pytest.raises(DataError, match=r"valid_CoT_2\.json:1: invalid UTF-8"):
    dss.read_split(str(tmp_path), "esnli", "valid")
  exs, rats, skipped = dss.read_split(str(tmp_path), "esnli", "valid", on_error="skip")
  assert len(exs) == 4 and rats == [] and skipped == {"invalid_utf8": 4}


def test_split_keys_follow_the_data(dss_fixture_dir, tmp_path):
  """splits has "train" and "dev" always, "test" only when the data has a test split."""
  tdir = _copy_task(dss_fixture_dir, tmp_path, "esnli")
  (tdir / "esnli_test.json").unlink()
  (tdir / "llm" / "test_CoT_0.json").unlink()
  cfg = {"source": "dss", "task": "esnli", "path": str(tmp_path), "dev_size": 1}
  d = load_dataset(cfg)
  assert sorted(d.splits) == ["dev", "train"]
  out = str(tmp_path / "cache")
  assert _cli("import-dss", "--task=cqa", f"--src={dss_fixture_dir}", "--split=train", f"--out={out}").returncode == 0
  d = load_dataset({"source": "dss", "task": "cqa", "cache_dir": out, "dev_size": 1})
  assert sorted(d.splits) == ["dev", "train"] and len(d.splits["dev"]) == 1
  assert sorted(load_dataset(dict(cfg, path=str(dss_fixture_dir))).splits) == ["dev", "test", "train"]


@pytest.mark.parametrize("split,fname", [("test", "esnli_test.json"), ("valid", "esnli_valid.json")])
def test_released_split_without_examples(dss_fixture_dir, tmp_path, split, fname):
  tdir = _copy_task(dss_fixture_dir, tmp_path, "esnli")
  for cot in (tdir / "llm").glob(f"{split}_CoT_*.json"):
    cot.unlink()
  (tdir / fname).write_text("\n")
  cfg = {"source": "dss", "task": "esnli", "path": str(tmp_path), "dev_size": 1}
  with pytest.raises(DataError, match=rf"{fname} has no examples"):
    load_dataset(cfg)
  (tdir / fname).write_text('{"premise": "p"}\n[1]\n')  # every record bad, and skipped
  with pytest.raises(DataError, match=rf"{fname} has no examples \(2 records skipped: "
                                      r"bad_record=1, missing_field=1\)"):
    load_dataset(dict(cfg, on_error="skip"))


def test_load_reports_skipped(dss_fixture_dir, tmp_path):
  tdir = _copy_task(dss_fixture_dir, tmp_path, "esnli")
  _edit_line(tdir / "esnli_valid.json", 1, _set_field("label", -1))
  cfg = {"source": "dss", "task": "esnli", "path": str(tmp_path), "dev_size": 1, "on_error": "skip"}
  d = load_dataset(cfg)
  assert d.skipped == {"unknown_label": 1} and len(d.splits["train"]) == 2
  with pytest.raises(DataError, match="esnli_valid.json:1"):
    load_dataset(dict(cfg, on_error="raise"))


# --- CLI -----------------------------------------------------------------------------------------

def _cli(*args):
  return subprocess.run([sys.executable, "-m", "jaxdistill.cache", *args], cwd=REPO, capture_output=True,
                        text=True, timeout=120)


def test_cli_import_fixture_resumable_and_load_from_cache(dss_fixture_dir, tmp_path):
  fixtures = str(dss_fixture_dir)
  out = str(tmp_path / "cache")
  r = _cli("import-dss", "--task=cqa", f"--src={fixtures}", "--split=all", f"--out={out}")
  assert r.returncode == 0, r.stderr
  assert "cqa/train: examples 4 (4 new), rationales 4 (4 new), unparsed 2, skipped: none" in r.stdout
  assert "teacher accuracy: 0.2500 (1/4)" in r.stdout.splitlines()
  assert "teacher accuracy: 1.0000 (2/2)" in r.stdout.splitlines()  # "(b) resin": the letter decides
  r = _cli("import-dss", "--task=cqa", f"--src={fixtures}", "--split=all", f"--out={out}")
  assert r.returncode == 0 and "(0 new)" in r.stdout and "(4 new)" not in r.stdout
  cfg = {"source": "dss", "task": "cqa", "path": fixtures, "dev_size": 1}
  from_raw = load_dataset(cfg)
  from_cache = load_dataset(dict(cfg, path="", cache_dir=out))
  assert from_cache.splits == from_raw.splits and from_cache.rationales == from_raw.rationales
  r = _cli("import-dss", "--task=esnli", f"--src={fixtures}", "--split=nope", f"--out={out}")
  assert r.returncode != 0 and "no file for split 'nope'" in r.stderr
  r = _cli("bogus-command")
  assert r.returncode != 0 and "import-dss" in r.stderr


def test_cli_on_error_skip(dss_fixture_dir, tmp_path):
  _copy_task(dss_fixture_dir, tmp_path, "svamp")
  _edit_line(tmp_path / "svamp" / "svamp_train.json", 2, lambda l: "{not json")
  out = str(tmp_path / "cache")
  r = _cli("import-dss", "--task=svamp", f"--src={tmp_path}", "--split=train", f"--out={out}")
  assert r.returncode != 0 and "svamp_train.json:2: malformed JSON" in r.stderr
  r = _cli("import-dss", "--task=svamp", f"--src={tmp_path}", "--split=train", f"--out={out}",
           "--on_error=skip")
  assert r.returncode == 0, r.stderr
  assert "skipped: malformed_json=1" in r.stdout and "teacher accuracy: 0.3333 (1/3)" in r.stdout


def _json_out(text):
  return json.loads(text[text.index("{"):])


def test_cli_verify_info_and_reimport_after_a_lost_shard(dss_fixture_dir, tmp_path):
  from jaxdistill.data.rationale_cache import RationaleCache
  out = str(tmp_path / "cache")
  args = ("import-dss", "--task=cqa", f"--src={dss_fixture_dir}", "--split=all", f"--out={out}")
  assert _cli(*args).returncode == 0
  assert _cli("verify", f"--out={out}").returncode == 0
  lost = RationaleCache(out).shard_files("rationales")[-1]  # the test split's 2 rationales
  pathlib.Path(lost).unlink()
  r = _cli("info", f"--out={out}")
  assert r.returncode == 0, r.stderr
  info = _json_out(r.stdout)
  assert info["counts"]["rationales"] == 6 and info["on_disk"]["rationales"] == 4
  assert any("missing on disk" in p for p in info["problems"]) and "problem(s)" in r.stderr
  r = _cli("verify", f"--out={out}")
  assert r.returncode == 1 and f"problem: rationales/{pathlib.Path(lost).name}: listed in manifest.json" in r.stdout
  cfg = {"source": "dss", "task": "cqa", "path": "", "cache_dir": out, "dev_size": 1}
  with pytest.raises(DataError, match=r"data lost or changed.*verify --out=.* --repair"):
    load_dataset(cfg)
  # Re-running the import writes the lost rows again and the manifest matches the shards.
  r = _cli(*args)
  assert r.returncode == 0 and "rationales 2 (2 new)" in r.stdout
  assert f"cache {out}: 6 examples, 6 rationales" in r.stdout
  assert _cli("verify", f"--cache={out}").returncode == 0
  assert _json_out(_cli("info", f"--out={out}").stdout)["problems"] == []
  assert len(load_dataset(cfg).splits["test"]) == 2


def test_cli_verify_repair_accepts_the_shards(dss_fixture_dir, tmp_path):
  from jaxdistill.data.rationale_cache import RationaleCache
  out = str(tmp_path / "cache")
  assert _cli("import-dss", "--task=cqa", f"--src={dss_fixture_dir}", "--split=all", f"--out={out}").returncode == 0
  pathlib.Path(RationaleCache(out).shard_files("rationales")[-1]).unlink()
  r = _cli("verify", f"--out={out}", "--repair")
  assert r.returncode == 0, r.stdout + r.stderr
  assert "problem: " in r.stdout and "repaired: rebuilt" in r.stdout and "4 rationales" in r.stdout
  m = RationaleCache.open(out).manifest
  assert m["counts"]["rationales"] == 4 and set(m["source"]["imports"]["cqa"]) == {"train", "test"}
  # An unreadable manifest: named, refused, and rebuilt from the shards.
  pathlib.Path(out, "manifest.json").write_text('{"schema_version": 1, "shar')
  r = _cli("info", f"--out={out}")
  assert "manifest.json: unreadable manifest" in r.stdout
  r = _cli("verify", f"--out={out}")
  assert r.returncode == 1 and "manifest.json: unreadable manifest" in r.stdout
  assert _cli("verify", f"--out={out}", "--repair").returncode == 0
  assert RationaleCache.open(out).manifest["counts"] == {
      "examples": 6, "rationales": 4, "examples_by_task_split": {"cqa/train": 4, "cqa/test": 2},
      "rationales_by_teacher_prompt": {"palm-540b/dss-cot": 4}}
  r = _cli("verify", f"--out={tmp_path / 'nothing'}")
  assert r.returncode != 0 and "no rationale cache here" in r.stderr


def test_import_killed_between_examples_and_rationales_is_completed_by_rerun(dss_fixture_dir, tmp_path,
                                                                             monkeypatch):
  from jaxdistill import cache as cache_tool
  from jaxdistill.data.rationale_cache import RationaleCache
  out = str(tmp_path / "cache")

  def killed(self, rows):
    raise KeyboardInterrupt  # the process dies after the examples shard, before the rationales one

  with monkeypatch.context() as m:
    m.setattr(RationaleCache, "write_rationales", killed)
    with pytest.raises(KeyboardInterrupt):
      cache_tool.import_dss("cqa", str(dss_fixture_dir), "train", out, echo=lambda _: None)
  cache = RationaleCache.open(out)
  assert len(cache.read_examples()) == 4 and cache.read_rationales() == []
  (summary,) = cache_tool.import_dss("cqa", str(dss_fixture_dir), "train", out, echo=lambda _: None)
  assert summary["new_examples"] == 0 and summary["new_rationales"] == summary["rationales"] == 4
  assert cache.verify() == [] and len(cache.read_rationales()) == 4


# --- the real release ----------------------------------------------------------------------------

def _record_count(path):
  with open(path) as f:
    return sum(1 for line in f if line.strip())


# (correct, unparsed) per split of PaLM's completions as teachers/parsers.py reads them.
REAL_RELEASE_COUNTS = {("esnli", "valid"): (7201, 4), ("esnli", "test"): (7171, 0),
                       ("cqa", "train"): (7344, 287), ("cqa", "test"): (959, 25),
                       ("svamp", "train"): (594, 33), ("svamp", "test"): (155, 7)}


@pytest.mark.parametrize("task", ["esnli", "cqa", "svamp"])
def test_real_release_every_row_parses(dss_root, task):
  splits = dss.available_splits(dss_root, task)
  assert splits == {"esnli": ["valid", "test"], "cqa": ["train", "test"], "svamp": ["train", "test"]}[task]
  for split in splits:
    exs, rats, skipped = dss.read_split(dss_root, task, split)  # on_error="raise": any bad row fails
    n = _record_count(dss.split_files(dss.task_dir(dss_root, task))[split])
    assert skipped == {} and len(exs) == len(rats) == n
    assert len({e.id for e in exs}) == n
    stats = dss.split_stats(exs, rats)
    assert 0.6 < stats.accuracy < 0.85 and stats.unparsed < 0.05 * n
    assert (stats.correct, stats.unparsed) == REAL_RELEASE_COUNTS[(task, split)]
    if task == "cqa":
      assert all(dss.choice_list(e) == [c.strip() for c in _choices(e)] for e in exs[:50])
      assert all(r.teacher_answer in ("", *dss.choice_list(e)) for e, r in zip(exs, rats))
    if task == "esnli":
      assert all(e.human_explanations for e in exs)


def _choices(example):
  return re.split(r"\s?\([a-e]\) ", example.inputs["choices"])[1:]


def test_real_release_imports_via_cli(dss_root, tmp_path):
  """Every row of every task imports; the known check: PaLM's e-SNLI dev accuracy is 0.7317 (7201/9842)."""
  out = str(tmp_path / "cache")
  accuracy = {}
  for task in ("esnli", "cqa", "svamp"):
    r = _cli("import-dss", f"--task={task}", f"--src={dss_root}", "--split=all", f"--out={out}")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for i, line in enumerate(lines):
      if line.startswith("teacher accuracy:"):
        split = re.match(r"(\w+)/(\w+):", lines[i - 2]).group(2)
        accuracy[(task, split)] = line
    if task == "esnli":
      words = float(re.search(r"mean rationale words: ([\d.]+)", r.stdout).group(1))
      assert 8 < words < 13  # "about 10 words"
  m = re.fullmatch(r"teacher accuracy: (\d\.\d{4}) \((\d+)/(\d+)\)", accuracy[("esnli", "valid")])
  assert m and m.group(3) == "9842" and abs(float(m.group(1)) - 0.7317) <= 0.002
  from jaxdistill.data.rationale_cache import RationaleCache
  cache = RationaleCache.open(out)
  counts = cache.manifest["counts"]
  expected = {}
  for task in ("esnli", "cqa", "svamp"):
    for split, path in dss.split_files(dss.task_dir(dss_root, task)).items():
      n = expected[f"{task}/{split}"] = _record_count(path)
      assert accuracy[(task, split)].endswith(f"/{n})")  # every record has a rationale
  assert counts["examples_by_task_split"] == expected
  assert counts["examples"] == counts["rationales"] == sum(expected.values()) == len(cache.keys())
  correct = {}
  for r in cache.read_rationales():
    correct[r.example_id] = r.teacher_correct
  valid_ids = {e.id for e in cache.read_examples(task="esnli", split="valid")}
  assert sum(correct[i] for i in valid_ids) == int(m.group(2))
  # The DSS source reads the imported cache exactly like the raw files.
  cfg = {"source": "dss", "task": "svamp", "path": dss_root, "dev_size": 100}
  assert load_dataset(dict(cfg, path="", cache_dir=out)).splits == load_dataset(cfg).splits
