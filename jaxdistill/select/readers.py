"""Warm-up readers: students trained, cross-fitted over folds, to score RD when no run is given.

Fold f's reader is trained on the other folds' train examples, each plain and with each of its
candidate rationales as input (`reader_rows`; labelled with the gold label or the answer the rationale
argues for, select.scorer.reader_target), and scores fold f's candidates. Readers are ordinary
label-only runs under OUT_DIR/scorer-F (`reader_config`), reused once finished and refused when
built from another pool (`train_reader`).
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import jax
import ml_collections
from absl import logging
from etils import epath

from jaxdistill import files
from jaxdistill.data import sources
from jaxdistill.data.examples import Example, Rationale
from jaxdistill.select.scoring import fingerprint, with_rationale
from jaxdistill.select.stages import Candidates

READER_TARGETS = ("gold", "teacher")


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
  epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
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
  stamp = fingerprint(train_rows, dev_rows, c.model.to_dict(), c.train.to_dict(), c.data.max_source_len)
  stamp_path = os.path.join(workdir, "fingerprint.txt")
  if epath.Path(stamp_path).exists():
    if epath.Path(stamp_path).read_text().strip() != stamp:
      raise ValueError(f"{workdir} holds a reader trained on another pool or config; delete it or use "
                       "another config.select.out_dir")
  if (epath.Path(workdir) / "metrics.json").exists():
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
