"""A MoRSD selection run: pool -> filters -> RD -> keep k -> the new cache and its report.

`run(config)` is what `python -m jaxdistill.select` calls; `score_candidates` picks the scorer
(a finished run's export, or warm-up readers) from config.select.scorer, `write_cache` writes the
selected cache through the rationale cache library and swaps it in at select.out_dir.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from jaxdistill import files, partitioning
from jaxdistill.data import sources
from jaxdistill.data.examples import Rationale
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.select import readers, report, scoring, stages
from jaxdistill.select.stages import Candidates, Key, key_of


def check_config(sel: ml_collections.ConfigDict) -> None:
  """Fails early, naming the config field, on values the stages cannot use."""
  def bad(field: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"config.select.{field}={value!r}: {expected}")

  if not str(sel.out_dir or ""):
    raise bad("out_dir", sel.out_dir, "must name the directory of the selected cache")
  if sel.strategy not in stages.STRATEGIES:
    raise bad("strategy", sel.strategy, f"expected one of {stages.STRATEGIES}")
  if sel.diversity not in stages.DIVERSITY:
    raise bad("diversity", sel.diversity, f"expected one of {stages.DIVERSITY}")
  if not 0.0 < float(sel.threshold) <= 1.0:
    raise bad("threshold", sel.threshold, "must be in (0, 1] (Jaccard or cosine similarity)")
  if int(sel.ngram_n) < 1:
    raise bad("ngram_n", sel.ngram_n, "must be >= 1")
  if int(sel.k) < 1:
    raise bad("k", sel.k, "must be >= 1 (strategy='all' keeps every candidate)")
  scorer = sel.scorer
  if not scorer.workdir and int(scorer.folds) < 2:
    raise bad("scorer.folds", scorer.folds, "must be >= 2 (a warm-up reader scores the folds it did not see)")
  if scorer.reader_target not in readers.READER_TARGETS:
    raise bad("scorer.reader_target", scorer.reader_target, f"expected one of {readers.READER_TARGETS}")
  for field in ("steps", "batch_size", "score_batch_size", "max_source_len", "chunk"):
    if int(scorer[field]) < 1:
      raise bad(f"scorer.{field}", scorer[field], "must be >= 1")
  if sel.input_cache and files.absolute(sel.input_cache) == files.absolute(sel.out_dir):
    raise bad("input_cache", sel.input_cache, "is the output directory; the pool must come from elsewhere")


def _mtime(path: str) -> float:
  """A file's modification time (a local one's as float seconds, as score store stamps were made with)."""
  return os.path.getmtime(path) if not files.is_remote(path) else epath.Path(path).stat().mtime


def score_candidates(config, dataset: sources.Dataset, cands: Candidates, out_dir: str
                     ) -> tuple[dict[Key, dict[str, float]], dict[str, Any]]:
  """RD of every candidate with the configured scorer; (scores, scorer description for the report)."""
  scorer_cfg = config.select.scorer
  mesh = partitioning.make_mesh(config.mesh)
  examples = {ex.id: ex for ex in dataset.splits["train"]}
  shape = dict(batch_size=int(scorer_cfg.score_batch_size), max_source_len=int(scorer_cfg.max_source_len),
               max_target_len=int(config.data.max_target_len))
  if scorer_cfg.workdir:
    workdir = files.absolute(scorer_cfg.workdir)
    scorer = scoring.load_scorer(workdir, mesh, config.logical_axis_rules, tokenizer=scorer_cfg.tokenizer, **shape)
    # A retrained run gets a new store.
    weights = [os.fspath(w) for w in (epath.Path(workdir) / "hf").glob("*.safetensors")]
    stamp = scoring.fingerprint(workdir, scorer_cfg.tokenizer, shape, sorted((w, _mtime(w)) for w in weights))
    store = scoring.ScoreStore(os.path.join(out_dir, "scores", f"run-{stamp}"))
    scores = scoring.rationale_difficulty(scorer, examples, cands, store=store, chunk=int(scorer_cfg.chunk))
    return scores, {"kind": "run", "workdir": workdir}
  folds = readers.fold_of(dataset.splits["train"], int(scorer_cfg.folds))
  scores, info = {}, {"kind": "warm-up readers", "folds": int(scorer_cfg.folds), "steps": int(scorer_cfg.steps),
                      "preset": scorer_cfg.preset, "reader_target": scorer_cfg.reader_target, "readers": []}
  for fold in range(int(scorer_cfg.folds)):
    workdir, stamp = readers.train_reader(config, dataset, cands, fold, folds, out_dir)
    # A reader saves its tokenizer with its model, except the byte tokenizer, which has no files.
    tokenizer = "byte" if config.model.tokenizer == "byte" else "auto"
    scorer = scoring.load_scorer(workdir, mesh, config.logical_axis_rules, tokenizer=tokenizer, **shape)
    store = scoring.ScoreStore(os.path.join(out_dir, "scores", f"fold-{fold}-{stamp}"))
    part = {i: rs for i, rs in cands.items() if folds[i] == fold}
    scores.update(scoring.rationale_difficulty(scorer, examples, part, store=store, chunk=int(scorer_cfg.chunk)))
    metrics = json.loads((epath.Path(workdir) / "metrics.json").read_text())
    info["readers"].append({"workdir": workdir, "dev_accuracy": metrics.get("dev_accuracy")})
  return scores, info


def _cache_row(r: Rationale, scores: Mapping[str, float] | None) -> dict:
  row = {"example_id": r.example_id, "teacher": r.teacher, "prompt_id": r.prompt_id,
         "sample_index": int(r.sample_index), "rationale": r.rationale, "teacher_answer": r.teacher_answer,
         "teacher_correct": bool(r.teacher_correct), "raw": r.raw}
  for col in scoring.SCORE_COLUMNS:
    row[col] = None if scores is None else float(scores[col])
  return row


def write_cache(out_dir: str, dataset: sources.Dataset, kept: Candidates,
                scores: Mapping[Key, Mapping[str, float]], source: Mapping[str, Any]) -> RationaleCache:
  """A new cache at out_dir: all examples, kept train rationales with scores, dev/test rationales
  as they were. Built beside it and swapped in (`RationaleCache.replace_with`: the manifest last),
  so the directory never holds a mix of two selections; scorer runs and score stores in out_dir
  are left alone."""
  for stale in epath.Path(out_dir).glob(".selection-*"):  # left by a killed write (one writer: chief)
    files.remove_tree(stale)
  cache = RationaleCache.create(os.path.join(out_dir, f".selection-{os.getpid()}-{uuid.uuid4().hex[:6]}"),
                                source=source)
  cache.write_examples([ex for split in ("train", "dev", "test") for ex in dataset.splits.get(split, [])])
  rows = [_cache_row(r, scores.get(key_of(r))) for rs in kept.values() for r in rs]
  for split in ("dev", "test"):
    rows += [_cache_row(r, None) for ex in dataset.splits.get(split, []) for r in dataset.rationales.get(ex.id, ())]
  cache.write_rationales(rows)
  return RationaleCache(out_dir).replace_with(cache)


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
  out_dir = files.absolute(sel.out_dir)
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  dataset = load_pool(config)
  cands = stages.candidates(dataset, bool(sel.include_human))
  accurate = stages.accuracy_filter(cands) if sel.accuracy else {i: list(rs) for i, rs in cands.items()}
  embed = None
  if sel.diversity == "embedding":
    from jaxdistill.embed import Embedder  # pylint: disable=g-import-not-at-top
    embed = Embedder(sel.embedding_encoder).embed
  diverse = stages.diversity_filter(accurate, sel.diversity, float(sel.threshold), ngram_n=int(sel.ngram_n),
                                    embed=embed)
  if scores is None:
    scores, scorer_info = score_candidates(config, dataset, diverse, out_dir)
  else:
    scores, scorer_info = dict(scores), {"kind": "reused scores"}
  kept = stages.keep_k(diverse, scores, sel.strategy, int(sel.k), int(sel.seed))

  counts = {"train_examples": len(dataset.splits["train"])}
  for stage, c in (("candidates", cands), ("after_accuracy", accurate), ("after_diversity", diverse), ("kept", kept)):
    counts[stage], counts["examples_" + stage] = stages.count(c), _examples_with(c)
  flat_kept = [r for rs in kept.values() for r in rs]
  kept_correct = float(np.mean([r.teacher_correct for r in flat_kept])) if flat_kept else None
  resolved = config.copy_and_resolve_references()
  summary = {"counts": counts, "rd": report.rd_summary(diverse, scores), "kept_teacher_correct": kept_correct,
             "kept_mean_rd": float(np.mean([scores[key_of(r)]["rd"] for r in flat_kept if key_of(r) in scores]))
             if flat_kept else None,
             "select": resolved.select.to_dict(), "scorer": scorer_info,
             "data": {"source": resolved.data.source, "task": dataset.task, "path": resolved.data.path,
                      **{f"{k}_examples": len(v) for k, v in dataset.splits.items()}}}
  if jax.process_index() == 0:
    write_cache(out_dir, dataset, kept, scores,
                {"kind": "morsd-selection", "created_by": "jaxdistill.select", "select": summary["select"],
                 "data": summary["data"], "counts": counts, "scorer": scorer_info})
    report.rd_histogram(diverse, scores, os.path.join(out_dir, report.RD_HIST),
                        f"Rationale Difficulty, {dataset.task} ({counts['after_diversity']} candidates)")
    report.write_report(out_dir, summary, kept_correct)
  print("selection: " + ", ".join(f"{k}={v}" for k, v in counts.items()) + f" -> {out_dir}", flush=True)
  return Selection(summary, dict(scores), kept)
