"""`python -m jaxdistill.select --config=configs/morsd.py`: MoRSD rationale selection (cache -> cache).

Model-Oriented Rationale Selection keeps, out of several teacher rationales per training
example, those that are right, not redundant, and useful to *this* student:

  candidates   the train split's rationales (+ its human explanations with include_human)
  accuracy     keep teacher_correct ones                               (select.accuracy)
  diversity    drop a rationale whose similarity to an already kept one of the same example
               is above select.threshold: Jaccard of word n-gram sets, or cosine of MiniLM
               sentence embeddings                                      (select.diversity)
  difficulty   RD = PPL(gold | question + rationale) / PPL(gold | question) under a scoring
               student; RD < 1 means the rationale makes the answer easier to produce
  keep k       the k lowest-RD (or highest-RD, a seeded random k, or all) per example

The result is a NEW rationale cache at select.out_dir: every example of every split, the kept
train rationales with score columns `rd`, `nll_with`, `nll_without`, and the dev/test rationales
unchanged (so dev/test rationale perplexity still works); plus `selection.json`,
`selection_report.md` and `rd_hist.png` beside it. `configs/morsd.py` trains on it because its
data.cache_dir is the same FieldReference as select.out_dir.

Scoring. "question alone" is `formats.label_record(ex)`; "question + rationale" is the label
record of the same example with one more input field, `rationale`. A record's NLL is the mean
token cross-entropy over the gold answer's tokens (EOS included). Records are batched one per row
(`pipeline.make_eval_batches`), placed as global arrays over the mesh and scored by one jitted
function; decoder-only students read them through `pipeline.batch_view`. The scorer is either an
existing run (select.scorer.workdir: its exported WORKDIR/hf and tokenizer) or, by default,
warm-up "readers" cross-fitted over select.scorer.folds: fold f's reader is trained on the other
folds' examples (plain and with each candidate rationale as input, labelled as below) and scores fold
f's candidates, so no rationale is scored by a model that saw its example. A randomly initialised
student cannot read, so some reader is needed; cross-fitting keeps it honest.

What a reader learns decides what RD can see. With gold labels on every record
(select.scorer.reader_target="gold") a reader that can answer from the question alone learns to
ignore rationales, wrong ones included, and RD flattens to ~1: on the embedded demo (solvable from
premise and hypothesis) gold readers reached 0.99 dev accuracy and their lowest-RD rationale was
the correct one in 48% of the examples that had a correct and a wrong candidate, i.e. chance.
reader_target="teacher" (the default) labels each rationale record with the answer that rationale argues for
(its teacher_answer; no gold correctness is used), so the reader learns to follow rationales, as a
pretrained student reading its input would, and a rationale arguing for a wrong answer raises the
gold answer's perplexity: on the same pool the lowest-RD rationale was the correct one in all 850
such examples (mean log RD -0.08 for correct, +3.67 for wrong rationales). With the accuracy filter
on, every candidate's teacher answer is the gold label and the two targets train the same reader.

Resumable: readers are ordinary runs under out_dir/scorer-F (skipped once metrics.json exists),
and every scored record's NLL is kept in out_dir/scores/<scorer> (Parquet shards keyed by the
record's text, written per chunk), so a killed run continues where it stopped and a re-selection
with another strategy or k re-scores nothing.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import math
import os
import shutil
import time
import uuid
import zlib
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, logging
from flax import nnx
from ml_collections import config_flags

from jaxdistill import evaluate, files, partitioning, runtime
from jaxdistill.data import formats, pipeline, sources
from jaxdistill.data import tokenizer as tokenizer_lib
from jaxdistill.data.cache import RationaleCache
from jaxdistill.data.examples import Example, Rationale
from jaxdistill.models import families, hf
from jaxdistill.objectives import losses

STRATEGIES = ("lowest", "highest", "random", "all")
DIVERSITY = ("ngram", "embedding", "none")
READER_TARGETS = ("gold", "teacher")
HUMAN = "human"  # teacher and prompt_id of human explanations taken in as candidates
SCORE_COLUMNS = ("rd", "nll_with", "nll_without")
RATIONALE_FIELD = "rationale"  # the extra input field of "question + rationale" records
REPORT_JSON, REPORT_MD, RD_HIST = "selection.json", "selection_report.md", "rd_hist.png"

Key = tuple  # (example_id, teacher, prompt_id, sample_index): the cache-row key
Candidates = dict[str, list[Rationale]]  # example_id -> its candidate rationales


def key_of(r: Rationale) -> Key:
  return (r.example_id, r.teacher, r.prompt_id, int(r.sample_index))


def count(cands: Mapping[str, Sequence[Rationale]]) -> int:
  return sum(len(rs) for rs in cands.values())


# --------------------------------------------------------------------------- config

def check_config(sel: ml_collections.ConfigDict) -> None:
  """Fails early, naming the config field, on values the stages cannot use."""
  def bad(field: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"config.select.{field}={value!r}: {expected}")

  if not str(sel.out_dir or ""):
    raise bad("out_dir", sel.out_dir, "must name the directory of the selected cache")
  if sel.strategy not in STRATEGIES:
    raise bad("strategy", sel.strategy, f"expected one of {STRATEGIES}")
  if sel.diversity not in DIVERSITY:
    raise bad("diversity", sel.diversity, f"expected one of {DIVERSITY}")
  if not 0.0 < float(sel.threshold) <= 1.0:
    raise bad("threshold", sel.threshold, "must be in (0, 1] (Jaccard or cosine similarity)")
  if int(sel.ngram_n) < 1:
    raise bad("ngram_n", sel.ngram_n, "must be >= 1")
  if int(sel.k) < 1:
    raise bad("k", sel.k, "must be >= 1 (strategy='all' keeps every candidate)")
  scorer = sel.scorer
  if not scorer.workdir and int(scorer.folds) < 2:
    raise bad("scorer.folds", scorer.folds, "must be >= 2 (a warm-up reader scores the folds it did not see)")
  if scorer.reader_target not in READER_TARGETS:
    raise bad("scorer.reader_target", scorer.reader_target, f"expected one of {READER_TARGETS}")
  for field in ("steps", "batch_size", "score_batch_size", "max_source_len", "chunk"):
    if int(scorer[field]) < 1:
      raise bad(f"scorer.{field}", scorer[field], "must be >= 1")
  if sel.input_cache and os.path.abspath(sel.input_cache) == os.path.abspath(sel.out_dir):
    raise bad("input_cache", sel.input_cache, "is the output directory; the pool must come from elsewhere")


# --------------------------------------------------------------------------- stages

def human_candidates(ex: Example) -> list[Rationale]:
  """An example's human explanations as candidates (always correct: they explain the gold label)."""
  return [Rationale(example_id=ex.id, teacher=HUMAN, prompt_id=HUMAN, sample_index=j, rationale=h.strip(),
                    teacher_answer=ex.label, teacher_correct=True, raw="")
          for j, h in enumerate(ex.human_explanations) if h and h.strip()]


def candidates(dataset: sources.Dataset, include_human: bool = False) -> Candidates:
  """The train split's candidate rationales; dev/test are never selected."""
  out = {}
  for ex in dataset.splits["train"]:
    rs = [r for r in dataset.rationales.get(ex.id, ()) if r.rationale and r.rationale.strip()]
    out[ex.id] = rs + (human_candidates(ex) if include_human else [])
  return out


def accuracy_filter(cands: Mapping[str, Sequence[Rationale]]) -> Candidates:
  """Keeps rationales whose teacher answer is the gold label."""
  return {i: [r for r in rs if r.teacher_correct] for i, rs in cands.items()}


def ngrams(text: str, n: int) -> frozenset:
  """Lower-cased word n-grams; a text shorter than n words is one gram (so it still compares)."""
  words = tuple(w for w in "".join(c.lower() if c.isalnum() else " " for c in text).split())
  if len(words) < n:
    return frozenset([words]) if words else frozenset()
  return frozenset(words[i:i + n] for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
  if not a and not b:
    return 1.0  # two empty texts are the same text
  return len(a & b) / len(a | b)


def diversity_filter(cands: Mapping[str, Sequence[Rationale]], mode: str = "ngram", threshold: float = 0.7,
                     *, ngram_n: int = 3, embed: Callable[[Sequence[str]], np.ndarray] | None = None
                     ) -> Candidates:
  """Per example, in candidate order, drops a rationale whose similarity to one already kept is
  above `threshold`. Greedy and order-stable, so the first of a group of duplicates survives.
  `embed` (mode "embedding") maps texts to unit vectors, e.g. `embed.Embedder().embed`."""
  if mode == "none":
    return {i: list(rs) for i, rs in cands.items()}
  if mode == "ngram":
    grams = {id(r): ngrams(r.rationale, ngram_n) for rs in cands.values() for r in rs}
    similarity = lambda a, b: jaccard(grams[id(a)], grams[id(b)])
  elif mode == "embedding":
    if embed is None:
      raise ValueError("diversity_filter(mode='embedding') needs `embed` (texts -> unit vectors)")
    flat = [r for rs in cands.values() for r in rs]
    vectors = np.asarray(embed([r.rationale for r in flat]), np.float32) if flat else np.zeros((0, 1))
    row = {id(r): vectors[i] for i, r in enumerate(flat)}
    similarity = lambda a, b: float(row[id(a)] @ row[id(b)])
  else:
    raise ValueError(f"config.select.diversity={mode!r}: expected one of {DIVERSITY}")
  out = {}
  for ex_id, rs in cands.items():
    kept: list[Rationale] = []
    for r in rs:
      if all(similarity(r, k) <= threshold for k in kept):
        kept.append(r)
    out[ex_id] = kept
  return out


def keep_k(cands: Mapping[str, Sequence[Rationale]], scores: Mapping[Key, Mapping[str, float]] | None,
           strategy: str, k: int, seed: int = 0) -> Candidates:
  """The k lowest-RD / highest-RD / random (seeded per example, so independent of the order of
  examples) rationales of each example, or all of them; ties in RD keep candidate order."""
  if strategy not in STRATEGIES:
    raise ValueError(f"config.select.strategy={strategy!r}: expected one of {STRATEGIES}")
  out = {}
  for ex_id, rs in cands.items():
    rs = list(rs)
    if strategy == "all":
      out[ex_id] = rs
    elif strategy == "random":
      rng = np.random.default_rng([int(seed), zlib.crc32(ex_id.encode())])
      pick = sorted(rng.choice(len(rs), size=min(k, len(rs)), replace=False).tolist()) if rs else []
      out[ex_id] = [rs[i] for i in pick]
    else:
      missing = [key_of(r) for r in rs if scores is None or key_of(r) not in scores]
      if missing:
        raise KeyError(f"strategy={strategy!r} needs RD scores; none for {missing[:3]}")
      sign = 1.0 if strategy == "lowest" else -1.0
      order = sorted(range(len(rs)), key=lambda i: (sign * scores[key_of(rs[i])]["rd"], i))
      out[ex_id] = [rs[i] for i in sorted(order[:k])]
  return out


# --------------------------------------------------------------------------- RD scoring

def with_rationale(ex: Example, rationale: str) -> Example:
  """The example with the rationale as one more input field (after the question's own fields)."""
  return dataclasses.replace(ex, inputs={**ex.inputs, RATIONALE_FIELD: rationale})


def rd_records(ex: Example, rationale: str) -> tuple[formats.Seq2SeqRecord, formats.Seq2SeqRecord]:
  """(question + rationale, question alone) label records; both target the gold label."""
  return formats.label_record(with_rationale(ex, rationale), None), formats.label_record(ex, None)


def record_key(record: formats.Seq2SeqRecord) -> str:
  """Content address of a record: equal texts share a score, changed texts never reuse one."""
  return hashlib.sha1(f"{record.source}\x00{record.target}".encode()).hexdigest()[:24]


@dataclasses.dataclass
class Scorer:
  """A generating student that scores records: model, its tokenizer, kind, mesh and batch shape."""
  model: nnx.Module
  tokenizer: tokenizer_lib.Tokenizer
  kind: str  # seq2seq | decoder
  mesh: jax.sharding.Mesh
  batch_size: int = 64
  max_source_len: int = 256
  max_target_len: int = 32


@nnx.jit
def _row_nll(model, batch):
  """Per row: summed cross-entropy of the target tokens and their count."""
  logits = model(batch)["logits"]
  xent = losses.token_cross_entropy(logits, batch["decoder_target_ids"])
  weights = (batch["decoder_loss_weights"] > 0).astype(jnp.float32)
  return (xent * weights).sum(-1), weights.sum(-1)


def record_nll(scorer: Scorer, records: Sequence[formats.Seq2SeqRecord]) -> np.ndarray:
  """Mean target-token NLL of each record (one jitted forward per batch of rows)."""
  data_devices = math.prod(scorer.mesh.shape[a] for a in partitioning.BATCH_AXES)
  if scorer.batch_size % data_devices:
    raise ValueError(f"config.select.scorer.score_batch_size={scorer.batch_size} is not divisible by the "
                     f"{data_devices} data-parallel devices of the mesh")
  out = np.full(len(records), np.nan, np.float64)
  view = pipeline.batch_view(scorer.kind, scorer.tokenizer)
  for batch, index in pipeline.make_eval_batches(records, scorer.tokenizer, scorer.batch_size,
                                                 scorer.max_source_len, scorer.max_target_len):
    total, tokens = _row_nll(scorer.model, evaluate.to_global(view(batch) if view else batch, scorer.mesh))
    total, tokens = evaluate.to_host(total), evaluate.to_host(tokens)
    real = index >= 0
    out[index[real]] = total[real] / np.maximum(tokens[real], 1.0)
  return out


class ScoreStore:
  """Record NLLs of one scorer on disk: Parquet shards (key, nll), one per scored chunk,
  written to a temp file and renamed, so a killed run loses at most the chunk in flight."""

  def __init__(self, directory: str):
    self.directory = directory
    self.nll: dict[str, float] = {}
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    for path in sorted(glob.glob(os.path.join(directory, "part-*.parquet"))):
      t = pq.read_table(path)
      self.nll.update(zip(t.column("key").to_pylist(), t.column("nll").to_pylist()))

  def add(self, nll: Mapping[str, float]) -> None:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    self.nll.update(nll)
    if jax.process_index() != 0 or not nll:
      return
    os.makedirs(self.directory, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    tmp = os.path.join(self.directory, f".{name}.tmp")
    pq.write_table(pa.table({"key": list(nll), "nll": [float(v) for v in nll.values()]}), tmp)
    os.replace(tmp, os.path.join(self.directory, name))


def rationale_difficulty(scorer: Scorer, examples: Mapping[str, Example],
                         cands: Mapping[str, Sequence[Rationale]], *, store: ScoreStore | None = None,
                         chunk: int = 2048) -> dict[Key, dict[str, float]]:
  """RD of every candidate: {key: {"nll_with", "nll_without", "rd"}}, rd = exp(nll_with - nll_without)
  (the ratio of the two perplexities). Records already in `store` are not scored again; new ones
  are scored in chunks (sorted by length, so rows of a chunk pad little) and saved per chunk."""
  records: dict[str, formats.Seq2SeqRecord] = {}
  pairs = []
  for ex_id, rs in cands.items():
    for r in rs:
      with_rec, without_rec = rd_records(examples[ex_id], r.rationale)
      pairs.append((key_of(r), record_key(with_rec), record_key(without_rec)))
      records.setdefault(pairs[-1][1], with_rec)
      records.setdefault(pairs[-1][2], without_rec)
  known = dict(store.nll) if store is not None else {}
  # Chunks are cut from all records, not from those left to score, so a resumed run pads and
  # batches every record exactly as an uninterrupted one (identical NLLs, bit for bit).
  ordered = sorted(records, key=lambda k: (len(records[k].source), k))
  todo = sum(k not in known for k in ordered)
  if todo:
    logging.info("scoring %d records (%d already scored)", todo, len(records) - todo)
  chunk = max(int(chunk), 1)
  for start in range(0, len(ordered), chunk):
    part = [k for k in ordered[start:start + chunk] if k not in known]
    if not part:
      continue
    new = dict(zip(part, record_nll(scorer, [records[k] for k in part]).tolist()))
    known.update(new)
    if store is not None:
      store.add(new)
  return {key: {"nll_with": known[w], "nll_without": known[wo], "rd": math.exp(known[w] - known[wo])}
          for key, w, wo in pairs}


# --------------------------------------------------------------------------- scorers

def scorer_tokenizer(workdir: str, spec: str = "auto") -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: the one exported with WORKDIR/hf, else the trained one in WORKDIR/tokenizer."""
  if spec != "auto":
    return tokenizer_lib.load_tokenizer(spec)
  hf_dir, trained = os.path.join(workdir, "hf"), os.path.join(workdir, "tokenizer")
  if os.path.exists(os.path.join(hf_dir, "tokenizer.json")):
    return tokenizer_lib.load_tokenizer(hf_dir)
  if os.path.exists(os.path.join(trained, "tokenizer.json")):
    kind = "bpe"
    meta = os.path.join(trained, tokenizer_lib._META)  # pylint: disable=protected-access
    if os.path.exists(meta):
      with open(meta) as f:
        kind = json.load(f).get("kind", kind)
    return tokenizer_lib.load_tokenizer(kind, save_dir=trained)
  raise FileNotFoundError(f"config.select.scorer.workdir={workdir}: no tokenizer in hf/ or tokenizer/ "
                          "(a byte-tokenizer run saves none: set config.select.scorer.tokenizer=byte)")


def load_scorer(workdir: str, mesh, rules, *, tokenizer: str = "auto", batch_size: int = 64,
                max_source_len: int = 256, max_target_len: int = 32) -> Scorer:
  """The best model a jaxdistill run exported to WORKDIR/hf, sharded over `mesh`."""
  hf_dir = os.path.join(workdir, "hf")
  if not os.path.exists(os.path.join(hf_dir, hf.CONFIG)):
    raise FileNotFoundError(f"config.select.scorer.workdir={workdir}: no {hf_dir}/{hf.CONFIG} (finished runs "
                            "export their best model there unless config.train.export_hf=False)")
  hf_config = hf.read_config(hf_dir)
  kind = families.kind(families.family_for(hf_config, os.path.join(hf_dir, hf.CONFIG)))  # unknown: a clear error
  if kind == "encoder":
    raise ValueError(f"config.select.scorer.workdir={workdir}: an encoder student ({hf_config['model_type']}) "
                     "predicts labels with a classification head and has no answer perplexity; RD needs a "
                     "generating (seq2seq or decoder) student")
  tok = scorer_tokenizer(workdir, tokenizer)
  model = families.load(hf_dir, mesh=mesh, rules=rules)
  if model.config.vocab_size < tok.vocab_size:
    raise ValueError(f"{hf_dir}: the model has {model.config.vocab_size} token embeddings but its tokenizer "
                     f"{tok.vocab_size} ids")
  return Scorer(model, tok, kind, mesh, batch_size, max_source_len, max_target_len)


def fold_of(examples: Sequence[Example], folds: int) -> dict[str, int]:
  """Example id -> fold, round-robin over the train order (folds of equal size)."""
  return {ex.id: i % folds for i, ex in enumerate(examples)}


def reader_rows(examples: Sequence[Example], cands: Mapping[str, Sequence[Rationale]],
                target: str = "gold") -> list[dict]:
  """JSON-lines rows that teach a reader: each example plain (gold label) and with each rationale as
  input, labelled with the gold label (target="gold") or with the answer that rationale argues for
  (target="teacher": its teacher_answer; gold where it has none)."""
  if target not in READER_TARGETS:
    raise ValueError(f"config.select.scorer.reader_target={target!r}: expected one of {READER_TARGETS}")
  rows = []
  for ex in examples:
    rows.append({"id": ex.id, "inputs": dict(ex.inputs), "label": ex.label})
    for j, r in enumerate(cands.get(ex.id, ())):
      label = r.teacher_answer if target == "teacher" and r.teacher_answer else ex.label
      rows.append({"id": f"{ex.id}~r{j}", "inputs": dict(with_rationale(ex, r.rationale).inputs), "label": label})
  return rows


def _write_jsonl(path: str, rows: Sequence[Mapping]) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  files.atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def reader_config(config: ml_collections.ConfigDict, data_dir: str, task: str) -> ml_collections.ConfigDict:
  """The warm-up reader's run: label-only (baseline) on the jsonl rows of `reader_rows`."""
  scorer = config.select.scorer
  c = config.copy_and_resolve_references()
  with c.unlocked():
    del c["select"]  # the selection's own settings do not change a reader (its run's fingerprint)
  c.name = "morsd-reader"
  c.objective.name, c.objective.alpha, c.objective.format = "baseline", 1.0, "multitask"
  c.data.source, c.data.path, c.data.task, c.data.cache_dir = "jsonl", data_dir, task, ""
  c.data.max_train_examples = c.data.max_eval_examples = -1
  c.data.max_source_len = int(scorer.max_source_len)
  c.data.row_source_len = c.data.row_target_len = 0
  c.model.preset, c.model.checkpoint = scorer.preset, ""
  steps = int(scorer.steps)
  c.train.steps, c.train.batch_size = steps, int(scorer.batch_size)
  c.train.warmup_steps = min(int(c.train.warmup_steps), max(steps // 5, 1))
  c.train.log_every = c.train.checkpoint_every = max(steps // 2, 1)
  c.eval.every = steps  # one dev evaluation, at the end: the reader is the final model
  c.train.export_hf = True  # the reader is loaded back from WORKDIR/hf
  c.eval.rationale_perplexity = False
  return c


def _fingerprint(*parts: Any) -> str:
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_reader(config, dataset: sources.Dataset, cands: Candidates, fold: int, folds: Mapping[str, int],
                 out_dir: str) -> tuple[str, str]:
  """Trains fold `fold`'s reader on the other folds' examples (skipped when its run finished);
  returns (its workdir, the fingerprint of its data and config). A reader dir built from another
  pool is refused, never silently reused."""
  from jaxdistill import train  # pylint: disable=g-import-not-at-top  (heavy: CLU, Orbax)
  workdir = os.path.join(out_dir, f"scorer-{fold}")
  seen = [ex for ex in dataset.splits["train"] if folds[ex.id] != fold]
  dev = list(dataset.splits.get("dev", []))[:int(config.select.scorer.max_dev_examples)]
  target = config.select.scorer.reader_target
  train_rows, dev_rows = reader_rows(seen, cands, target), reader_rows(dev, dataset.rationales, target)
  c = reader_config(config, os.path.join(workdir, "data"), dataset.task)
  stamp = _fingerprint(train_rows, dev_rows, c.model.to_dict(), c.train.to_dict(), c.data.max_source_len)
  stamp_path = os.path.join(workdir, "fingerprint.txt")
  if os.path.exists(stamp_path):
    with open(stamp_path) as f:
      if f.read().strip() != stamp:
        raise ValueError(f"{workdir} holds a reader trained on another pool or config; delete it or use "
                         "another config.select.out_dir")
  if os.path.exists(os.path.join(workdir, "metrics.json")):
    logging.info("reader %d: reusing the finished run in %s", fold, workdir)
    return workdir, stamp
  if jax.process_index() == 0:
    _write_jsonl(os.path.join(workdir, "data", "train.jsonl"), train_rows)
    _write_jsonl(os.path.join(workdir, "data", "dev.jsonl"), dev_rows)
    files.atomic_write_text(stamp_path, stamp + "\n")
  print(f"reader {fold}: training on {len(seen)} examples ({len(train_rows)} records), {c.train.steps} steps",
        flush=True)
  train.run(c, workdir)
  return workdir, stamp


def score_candidates(config, dataset: sources.Dataset, cands: Candidates, out_dir: str
                     ) -> tuple[dict[Key, dict[str, float]], dict[str, Any]]:
  """RD of every candidate with the configured scorer; (scores, scorer description for the report)."""
  scorer_cfg = config.select.scorer
  mesh = partitioning.make_mesh(config.mesh)
  examples = {ex.id: ex for ex in dataset.splits["train"]}
  shape = dict(batch_size=int(scorer_cfg.score_batch_size), max_source_len=int(scorer_cfg.max_source_len),
               max_target_len=int(config.data.max_target_len))
  if scorer_cfg.workdir:
    workdir = os.path.abspath(scorer_cfg.workdir)
    scorer = load_scorer(workdir, mesh, config.logical_axis_rules, tokenizer=scorer_cfg.tokenizer, **shape)
    weights = glob.glob(os.path.join(workdir, "hf", "*.safetensors"))  # a retrained run gets a new store
    stamp = _fingerprint(workdir, scorer_cfg.tokenizer, shape, sorted((w, os.path.getmtime(w)) for w in weights))
    store = ScoreStore(os.path.join(out_dir, "scores", f"run-{stamp}"))
    scores = rationale_difficulty(scorer, examples, cands, store=store, chunk=int(scorer_cfg.chunk))
    return scores, {"kind": "run", "workdir": workdir}
  folds = fold_of(dataset.splits["train"], int(scorer_cfg.folds))
  scores, info = {}, {"kind": "warm-up readers", "folds": int(scorer_cfg.folds), "steps": int(scorer_cfg.steps),
                      "preset": scorer_cfg.preset, "reader_target": scorer_cfg.reader_target, "readers": []}
  for fold in range(int(scorer_cfg.folds)):
    workdir, stamp = train_reader(config, dataset, cands, fold, folds, out_dir)
    # A reader saves its tokenizer with its model, except the byte tokenizer, which has no files.
    tokenizer = "byte" if config.model.tokenizer == "byte" else "auto"
    scorer = load_scorer(workdir, mesh, config.logical_axis_rules, tokenizer=tokenizer, **shape)
    store = ScoreStore(os.path.join(out_dir, "scores", f"fold-{fold}-{stamp}"))
    part = {i: rs for i, rs in cands.items() if folds[i] == fold}
    scores.update(rationale_difficulty(scorer, examples, part, store=store, chunk=int(scorer_cfg.chunk)))
    with open(os.path.join(workdir, "metrics.json")) as f:
      info["readers"].append({"workdir": workdir, "dev_accuracy": json.load(f).get("dev_accuracy")})
  return scores, info


# --------------------------------------------------------------------------- outputs

def _cache_row(r: Rationale, scores: Mapping[str, float] | None) -> dict:
  row = {"example_id": r.example_id, "teacher": r.teacher, "prompt_id": r.prompt_id,
         "sample_index": int(r.sample_index), "rationale": r.rationale, "teacher_answer": r.teacher_answer,
         "teacher_correct": bool(r.teacher_correct), "raw": r.raw}
  for col in SCORE_COLUMNS:
    row[col] = None if scores is None else float(scores[col])
  return row


def write_cache(out_dir: str, dataset: sources.Dataset, kept: Candidates,
                scores: Mapping[Key, Mapping[str, float]], source: Mapping[str, Any]) -> RationaleCache:
  """A new cache at out_dir: all examples, kept train rationales with scores, dev/test rationales
  as they were. Built beside it and swapped in (the manifest last), so the directory never holds
  a mix of two selections; scorer runs and score stores in out_dir are left alone."""
  for stale in glob.glob(os.path.join(out_dir, ".selection-*")):  # left by a killed write (one writer: chief)
    shutil.rmtree(stale, ignore_errors=True)
  tmp = os.path.join(out_dir, f".selection-{os.getpid()}-{uuid.uuid4().hex[:6]}")
  cache = RationaleCache.create(tmp, source=source)
  cache.write_examples([ex for split in ("train", "dev", "test") for ex in dataset.splits.get(split, [])])
  rows = [_cache_row(r, scores.get(key_of(r))) for rs in kept.values() for r in rs]
  for split in ("dev", "test"):
    rows += [_cache_row(r, None) for ex in dataset.splits.get(split, []) for r in dataset.rationales.get(ex.id, ())]
  cache.write_rationales(rows)
  manifest = os.path.join(out_dir, "manifest.json")
  if os.path.exists(manifest):
    os.remove(manifest)  # from here on out_dir is no cache until the new manifest lands
  for kind in ("examples", "rationales"):
    target = os.path.join(out_dir, kind)
    if os.path.exists(target):
      shutil.rmtree(target)
    os.replace(os.path.join(tmp, kind), target)
  os.replace(os.path.join(tmp, "manifest.json"), manifest)
  shutil.rmtree(tmp, ignore_errors=True)
  return RationaleCache.open(out_dir)


def rd_summary(cands: Mapping[str, Sequence[Rationale]], scores: Mapping[Key, Mapping[str, float]]) -> dict:
  """How RD relates to correctness: mean log RD of correct vs wrong candidates, and in examples
  with both kinds, how often the lowest-RD candidate is a correct one."""
  logs = {True: [], False: []}
  both = lowest_correct = 0
  for rs in cands.values():
    scored = [r for r in rs if key_of(r) in scores]
    for r in scored:
      logs[bool(r.teacher_correct)].append(math.log(scores[key_of(r)]["rd"]))
    if {bool(r.teacher_correct) for r in scored} == {True, False}:
      both += 1
      best = min(scored, key=lambda r: scores[key_of(r)]["rd"])
      lowest_correct += bool(best.teacher_correct)
  mean = lambda xs: float(np.mean(xs)) if xs else None
  return {"scored": len(logs[True]) + len(logs[False]),
          "mean_log_rd_correct": mean(logs[True]), "mean_log_rd_wrong": mean(logs[False]),
          "median_rd": float(np.exp(np.median(logs[True] + logs[False]))) if logs[True] + logs[False] else None,
          "examples_with_correct_and_wrong": both,
          "lowest_rd_is_correct": lowest_correct / both if both else None}


def rd_histogram(cands: Mapping[str, Sequence[Rationale]], scores: Mapping[Key, Mapping[str, float]],
                 path: str, title: str) -> None:
  """log10 RD of the scored candidates, correct and wrong teacher answers stacked."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  values = {True: [], False: []}
  for rs in cands.values():
    for r in rs:
      if key_of(r) in scores:
        values[bool(r.teacher_correct)].append(math.log10(max(scores[key_of(r)]["rd"], 1e-30)))
  fig, ax = plt.subplots(figsize=(5.5, 3.4))
  data = [values[True], values[False]]
  if any(data):
    ax.hist(data, bins=40, stacked=True, label=["teacher correct", "teacher wrong"])
    ax.legend(fontsize=8)
  ax.axvline(0.0, color="k", lw=0.8, ls="--")
  ax.set_xlabel("log10 RD  (< 0: the rationale makes the gold answer easier)")
  ax.set_ylabel("rationales")
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path + ".tmp.png", dpi=120)
  plt.close(fig)
  os.replace(path + ".tmp.png", path)


def write_report(out_dir: str, summary: dict, kept_correct: float | None) -> str:
  """selection.json (everything), selection_report.md (the counts table, RD figures, histogram)."""
  files.atomic_write_text(os.path.join(out_dir, REPORT_JSON), json.dumps(summary, indent=2, sort_keys=True) + "\n")
  c, rd, sel = summary["counts"], summary["rd"], summary["select"]
  lines = [f"# MoRSD selection: {summary['data']['task']} ({summary['data']['source']})", "",
           "| stage | rationales | examples with >= 1 |", "|---|---|---|"]
  for stage, label in (("candidates", "candidates (train)"), ("after_accuracy", "after accuracy"),
                       ("after_diversity", "after diversity"), ("kept", f"kept ({sel['strategy']}, k={sel['k']})")):
    lines.append(f"| {label} | {c[stage]} | {c['examples_' + stage]} |")
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  lines += ["", f"train examples: {c['train_examples']}; accuracy filter: {sel['accuracy']}; diversity: "
            f"{sel['diversity']} (threshold {sel['threshold']}); include_human: {sel['include_human']}", "",
            f"RD over {rd['scored']} scored rationales: median {fmt(rd['median_rd'])}, mean log RD correct "
            f"{fmt(rd['mean_log_rd_correct'])} vs wrong {fmt(rd['mean_log_rd_wrong'])}; lowest-RD rationale "
            f"correct in {fmt(rd['lowest_rd_is_correct'])} of {rd['examples_with_correct_and_wrong']} examples "
            f"with both kinds. Kept rationales teacher-correct: {fmt(kept_correct)}.", "",
            f"Scorer: {json.dumps(summary['scorer'])}", "", f"![RD histogram]({RD_HIST})", ""]
  text = "\n".join(lines)
  files.atomic_write_text(os.path.join(out_dir, REPORT_MD), text)
  return text


# --------------------------------------------------------------------------- the job

@dataclasses.dataclass
class Selection:
  summary: dict
  scores: dict[Key, dict[str, float]]
  kept: Candidates


def _examples_with(cands: Mapping[str, Sequence[Rationale]]) -> int:
  return sum(1 for rs in cands.values() if rs)


def load_pool(config: ml_collections.ConfigDict) -> sources.Dataset:
  """The data source with its own rationales (or select.input_cache's), never the selection's."""
  data = config.copy_and_resolve_references().data
  data.cache_dir = config.select.input_cache or ""
  return sources.load_dataset(data)


def run(config: ml_collections.ConfigDict, scores: Mapping[Key, Mapping[str, float]] | None = None) -> Selection:
  """Selects and writes the new cache and reports; `scores` (from an earlier run on the same pool)
  skips scoring, e.g. when the comparison re-selects with another strategy."""
  sel = config.select
  check_config(sel)
  out_dir = os.path.abspath(sel.out_dir)
  os.makedirs(out_dir, exist_ok=True)
  dataset = load_pool(config)
  cands = candidates(dataset, bool(sel.include_human))
  accurate = accuracy_filter(cands) if sel.accuracy else {i: list(rs) for i, rs in cands.items()}
  embed = None
  if sel.diversity == "embedding":
    from jaxdistill.embed import Embedder  # pylint: disable=g-import-not-at-top
    embed = Embedder(sel.embedding_encoder).embed
  diverse = diversity_filter(accurate, sel.diversity, float(sel.threshold), ngram_n=int(sel.ngram_n), embed=embed)
  if scores is None:
    scores, scorer_info = score_candidates(config, dataset, diverse, out_dir)
  else:
    scores, scorer_info = dict(scores), {"kind": "reused scores"}
  kept = keep_k(diverse, scores, sel.strategy, int(sel.k), int(sel.seed))

  counts = {"train_examples": len(dataset.splits["train"])}
  for stage, c in (("candidates", cands), ("after_accuracy", accurate), ("after_diversity", diverse), ("kept", kept)):
    counts[stage], counts["examples_" + stage] = count(c), _examples_with(c)
  flat_kept = [r for rs in kept.values() for r in rs]
  kept_correct = float(np.mean([r.teacher_correct for r in flat_kept])) if flat_kept else None
  resolved = config.copy_and_resolve_references()
  summary = {"counts": counts, "rd": rd_summary(diverse, scores), "kept_teacher_correct": kept_correct,
             "kept_mean_rd": float(np.mean([scores[key_of(r)]["rd"] for r in flat_kept if key_of(r) in scores]))
             if flat_kept else None,
             "select": resolved.select.to_dict(), "scorer": scorer_info,
             "data": {"source": resolved.data.source, "task": dataset.task, "path": resolved.data.path,
                      **{f"{k}_examples": len(v) for k, v in dataset.splits.items()}}}
  if jax.process_index() == 0:
    write_cache(out_dir, dataset, kept, scores,
                {"kind": "morsd-selection", "created_by": "jaxdistill.select", "select": summary["select"],
                 "data": summary["data"], "counts": counts, "scorer": scorer_info})
    rd_histogram(diverse, scores, os.path.join(out_dir, RD_HIST),
                 f"Rationale Difficulty, {dataset.task} ({counts['after_diversity']} candidates)")
    write_report(out_dir, summary, kept_correct)
  print("selection: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f" -> {out_dir}", flush=True)
  return Selection(summary, dict(scores), kept)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.prepare_process()
  with runtime.refusals_as_exit():
    run(_CONFIG.value)


if __name__ == "__main__":
  # Defined here, not at import: scripts that import this module define their own --config.
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/morsd.py", "MoRSD config file (config.select).")
  app.run(main)
