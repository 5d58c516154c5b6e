"""Tokenizers: T5 conventions, round trips, train/save/reload, determinism."""

import os
import subprocess
import sys

import pytest

from jaxdistill.data import tokenizer as tk

TEXTS = [
    "premise: A man plays a guitar on stage. hypothesis: A person makes music.",
    "Ann has 3 + 4 = 7 apples. Bob has 6 apples. 7 is more than 6.",
    "Since 12 - 5 = 7, the answer is 7.",
    "entailment", "neutral", "contradiction",
] * 20


def test_byte_tokenizer_round_trip():
  tok = tk.load_tokenizer("byte")
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert tok.vocab_size == 384  # 259 rounded up to a multiple of 128
  ids = tok.encode("héllo, wörld")
  assert ids[-1] == tok.eos_id and ids[0] == ord("h") + 3
  assert tok.decode(ids) == "héllo, wörld"
  assert tok.decode(ids + [5, 6] + [0, 0]) == "héllo, wörld"  # stops at EOS
  assert tok.decode([0, ord("a") + 3, 0]) == "a"  # skips padding


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tok") / "bpe")
  tk.load_tokenizer("bpe", TEXTS, save_dir=d, vocab_size=300)
  return d


def test_bpe_round_trip_and_conventions(bpe_dir):
  tok = tk.load_tokenizer("bpe", save_dir=bpe_dir)
  assert (tok.pad_id, tok.eos_id, tok.unk_id) == (0, 1, 2)
  assert tok.vocab_size % 128 == 0 and tok.vocab_size >= tok.num_tokens
  for text in TEXTS[:6] + ["unseen wörds & symbols {}", "  two  spaces "]:
    ids = tok.encode(text)
    assert ids[-1] == tok.eos_id and tok.pad_id not in ids
    assert max(ids) < tok.num_tokens
    assert tok.decode(ids) == text  # byte-level BPE is lossless
  # Digits are split one by one.
  ids = tok.encode("12345")[:-1]
  assert len(ids) == 5


def test_bpe_save_reload_same_ids(bpe_dir, tmp_path):
  assert os.path.exists(os.path.join(bpe_dir, "tokenizer.json"))
  reloaded = tk.load_tokenizer("bpe", texts=None, save_dir=bpe_dir)
  retrained = tk.load_tokenizer("bpe", TEXTS, save_dir=str(tmp_path / "again"), vocab_size=300)
  via_path = tk.load_tokenizer(bpe_dir)  # AutoTokenizer on the saved dir, offline
  for text in TEXTS[:6]:
    ids = reloaded.encode(text)
    assert retrained.encode(text) == ids
    assert via_path.encode(text) == ids
  assert via_path.eos_id == 1 and via_path.pad_id == 0


def test_saved_tokenizer_is_found_with_its_kind(bpe_dir, tmp_path):
  assert tk.is_saved(bpe_dir) and tk.saved_kind(bpe_dir) == "bpe"
  assert sorted(os.listdir(os.path.dirname(bpe_dir))) == ["bpe"]  # saved whole: no temp directory left
  assert not tk.is_saved(str(tmp_path)) and not tk.is_saved(None) and tk.saved_kind(str(tmp_path)) is None


def test_existing_save_dir_is_loaded_not_retrained(bpe_dir):
  before = open(os.path.join(bpe_dir, "tokenizer.json")).read()
  tok = tk.load_tokenizer("bpe", ["completely different corpus"] * 3, save_dir=bpe_dir, vocab_size=300)
  assert open(os.path.join(bpe_dir, "tokenizer.json")).read() == before
  assert tok.decode(tok.encode(TEXTS[1])) == TEXTS[1]
  with pytest.raises(ValueError, match="wordpiece"):
    tk.load_tokenizer("wordpiece", save_dir=bpe_dir)


def test_training_deterministic_across_processes(tmp_path):
  script = ("import sys, hashlib; from jaxdistill.data import tokenizer as tk; "
            "from tests.test_tokenizer import TEXTS; "
            "print(hashlib.md5(tk._train(sys.argv[1], TEXTS, 300).to_str().encode()).hexdigest())")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**os.environ, "PYTHONPATH": root}
  for kind in ("bpe", "wordpiece"):
    digests = {subprocess.run([sys.executable, "-c", script, kind], capture_output=True, text=True,
                              check=True, cwd=root, env=env).stdout for _ in range(2)}
    assert len(digests) == 1, kind


def test_wordpiece(tmp_path):
  tok = tk.load_tokenizer("wordpiece", TEXTS, save_dir=str(tmp_path / "wp"), vocab_size=200)
  assert (tok.pad_id, tok.eos_id) == (0, 1)
  text = "A man plays a guitar on stage."
  assert tok.decode(tok.encode(text)).replace(" .", ".") == text
  again = tk.load_tokenizer("wordpiece", save_dir=str(tmp_path / "wp"))
  assert again.encode(text) == tok.encode(text)


def test_needs_texts_to_train():
  with pytest.raises(ValueError, match="texts"):
    tk.load_tokenizer("bpe")


def test_round_up():
  assert tk.round_up(1) == 128 and tk.round_up(128) == 128 and tk.round_up(32100) == 32128


def test_pretrained_tokenizer_padding_and_truncation_are_off():
  """all-MiniLM-L6-v2's tokenizer.json pads and truncates every text to 128 tokens; records must
  keep their own length (the pipeline truncates, packs and pads)."""
  from jaxdistill.models import bert
  tok = tk.load_tokenizer(bert.packaged_minilm_dir())
  assert tok.encode("entailment") == [4372, 14162, 3672, tok.eos_id]
  long_text = " ".join(["word"] * 300)
  assert len(tok.encode(long_text)) == 301
  assert [len(ids) for ids in tok.encode_batch(["a dog runs", long_text])] == [4, 301]
