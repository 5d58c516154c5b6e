"""Runs a study's grid (grid.py) and writes its report (report.py), resumably."""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Callable, Iterable

from jaxdistill import files, select, train
from jaxdistill.study import grid, report


def selection_scores(study, workdir: str):
  """The Rationale Difficulty of every candidate under the base config's scorer, computed (and kept,
  so a killed study does not score again) in WORKDIR/selection by `jaxdistill.select`."""
  config = copy.deepcopy(study.base)
  config.select.out_dir = os.path.join(workdir, "selection")
  return select.run(config).scores


def add_missing_rationales(r: grid.Run, echo: Callable[[str], None]) -> None:
  """A run whose config asks for rationales (eval.write_rationales) but whose predictions have none
  (made before it asked) gets them from its best model, once."""
  if not r.config.eval.write_rationales:
    return
  rows = [row for split_rows in report.read_predictions(r).values() for row in split_rows]
  if all("rationale" in row for row in rows):
    return
  echo(f"[study] generating {r.variant} seed {r.seed}'s rationales with its best model")
  model, evaluator = train.restore_best(r.config, r.workdir)
  evaluator.add_rationales(model, rows)
  files.atomic_write_text(os.path.join(r.workdir, train.PREDICTIONS),
                          "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows))


def run(study, workdir: str, *, only: Iterable[str] = (), report_only: bool = False,
        echo: Callable[[str], None] = print) -> dict | None:
  """Trains every unfinished run of the study (or of the `only` variants), then reports over every
  finished run of the whole grid (None while some variant has no finished run)."""
  runs = grid.plan(study, workdir, only)
  unfinished = [r for r in runs if not r.finished]
  todo = [] if report_only else unfinished
  done = len(runs) - len(unfinished)
  echo(f"study {study.name}: {len(runs)} runs ({len(grid.variants(study))} variants, seeds {list(study.seeds)}"
       f"{', only ' + ','.join(only) if only else ''}), {done} finished, {len(todo)} to run in {workdir}")
  started, seconds = time.time(), []
  scores = None  # MoRSD studies: every run selects from the same scores (one scoring per study)
  for k, r in enumerate(todo):
    eta = "" if not seconds else f", ETA {sum(seconds) / len(seconds) * (len(todo) - k) / 60:.0f} min"
    echo(f"[study] {done + k}/{len(runs)} runs done{eta}: training {r.variant} seed {r.seed} in {r.workdir}")
    t0 = time.time()
    if "select" in r.config:
      scores = scores if scores is not None else selection_scores(study, workdir)
      select.run(r.config, scores=scores)  # cheap with the scores given; rewritten the same way on a rerun
    result = train.run(r.config, r.workdir)
    if result.get("preempted"):
      echo(f"[study] stopped on SIGTERM during {r.variant} seed {r.seed}; run the same command to resume")
      return None
    seconds.append(time.time() - t0)
  if todo:
    echo(f"[study] {len(runs)}/{len(runs)} runs done in {(time.time() - started) / 60:.1f} min")
  grid_runs = grid.plan(study, workdir)  # the whole grid: the report covers every finished run
  finished = [r for r in grid_runs if r.finished]
  for r in finished:
    add_missing_rationales(r, echo)
  missing = sorted({r.variant for r in grid_runs} - {r.variant for r in finished})
  if missing:
    echo(f"[study] no report yet: no finished run of {', '.join(missing)}")
    return None
  out = report.write(study, finished, workdir)
  echo(f"[study] report: {workdir}/{report.REPORT_MD} (+ .json, .png) over {len(finished)} runs")
  return out
