"""The MoRSD comparison: all rationales vs random k vs lowest-RD k vs highest-RD k.

  python scripts/morsd_comparison.py --config=configs/morsd.py --workdir=runs/morsd-comparison \
      [--strategies=all,random,lowest,highest] [--config.key=value ...]

Runs `jaxdistill.select` once (WORKDIR/selection: the warm-up readers and every RD score), then
per strategy writes that strategy's selection from the same candidates and the same scores
(nothing is re-scored) to WORKDIR/<strategy>/selection and trains configs/morsd.py on it in
WORKDIR/<strategy>. The report WORKDIR/morsd_report.{md,json,png} has one row per strategy, every
number read from the runs' metrics.json and selection.json. Resumable: a strategy whose run has a
metrics.json is read, not re-run; readers and scores are reused by select itself. "all" and
"random" keep the same rationales whatever the scorer, so their finished runs can be copied into
another root (e.g. one scored with --config.select.scorer.reader_target=teacher) and are reused there.

Every strategy sees the same filtered pool (select.accuracy / select.diversity as configured), so
the rows differ only in which k rationales per example are kept. To let RD find wrong rationales
on its own (the paper's setting), run with --config.select.accuracy=False.
"""

from __future__ import annotations

import copy
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)  # `configs` is importable when run as a script

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs/morsd.py"), "MoRSD config file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/morsd-comparison", "Root of the comparison's runs and report.")
_STRATEGIES = flags.DEFINE_list("strategies", ["all", "random", "lowest", "highest"],
                                "Selection strategies to compare (config.select.strategy values).")

# Strategies whose kept rationales do not depend on the scores: their selection is rewritten with
# the current scores even when the run is reused (the score columns and mean RD stay current).
SCORE_FREE = ("all", "random")
COLUMNS = [("strategy", "strategy"), ("kept", "rationales kept"), ("examples_kept", "examples with one"),
           ("kept_teacher_correct", "kept: teacher correct"), ("kept_mean_rd", "kept: mean RD"),
           ("dev_accuracy", "dev accuracy"), ("test_accuracy", "test accuracy"),
           ("test_rationale_perplexity", "test rationale ppl")]


def strategy_config(config, root: str, strategy: str):
  """A copy of `config` selecting with `strategy` into ROOT/<strategy>/selection (which is also
  the copy's data.cache_dir: the FieldReference survives deepcopy)."""
  c = copy.deepcopy(config)
  c.select.out_dir = os.path.join(root, strategy, "selection")
  c.select.strategy = strategy
  c.name = f"morsd-{strategy}"
  return c


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def run_strategy(config, root: str, strategy: str, scores) -> dict:
  """Selects (reusing `scores`) and trains unless the run finished; returns the report row."""
  from jaxdistill import report, select, train  # pylint: disable=g-import-not-at-top
  c = strategy_config(config, root, strategy)
  workdir = os.path.join(root, strategy)
  finished = os.path.exists(os.path.join(workdir, "metrics.json"))
  if not finished or strategy in SCORE_FREE:
    select.run(c, scores=scores)  # cheap: the scores are given
  if not finished:
    train.run(c, workdir)
  else:
    logging.info("%s: reusing the finished run in %s", strategy, workdir)
  metrics = report.run_metrics(workdir)
  sel = _read_json(os.path.join(c.select.out_dir, select.REPORT_JSON))
  return {"strategy": strategy, "kept": sel["counts"]["kept"], "examples_kept": sel["counts"]["examples_kept"],
          "kept_teacher_correct": sel["kept_teacher_correct"], "kept_mean_rd": sel["kept_mean_rd"],
          "dev_accuracy": metrics["dev_accuracy"], "test_accuracy": metrics["test_accuracy"],
          "dev_rationale_perplexity": metrics.get("dev_rationale_perplexity"),
          "test_rationale_perplexity": metrics.get("test_rationale_perplexity"),
          "dev_examples": metrics["data"].get("dev_examples"), "workdir": workdir}


def notes(summary: dict, config) -> str:
  c, rd, sel = summary["counts"], summary["rd"], summary["select"]
  fmt = lambda v: "-" if v is None else f"{v:.4f}"
  return "\n".join([
      f"Data: {summary['data']}.",
      f"Pool (train split): {c['candidates']} candidates, {c['after_accuracy']} after the accuracy filter "
      f"(on: {sel['accuracy']}), {c['after_diversity']} after diversity ({sel['diversity']}, threshold "
      f"{sel['threshold']}); k={sel['k']}, include_human={sel['include_human']}.",
      f"RD scorer: {json.dumps(summary['scorer'])}.",
      f"RD: mean log RD of teacher-correct candidates {fmt(rd['mean_log_rd_correct'])} vs wrong "
      f"{fmt(rd['mean_log_rd_wrong'])}; the lowest-RD candidate is correct in {fmt(rd['lowest_rd_is_correct'])} "
      f"of {rd['examples_with_correct_and_wrong']} examples with both kinds.",
      f"Student: {config.model.preset}, {config.train.steps} steps, objective {config.objective.name} "
      f"({config.objective.format}); dev/test capped at data.max_eval_examples={config.data.max_eval_examples}.",
  ])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from jaxdistill import report, runtime, select  # pylint: disable=g-import-not-at-top
  runtime.prepare_process()
  config, root = _CONFIG.value, os.path.abspath(_WORKDIR.value)
  for s in _STRATEGIES.value:
    if s not in select.STRATEGIES:
      raise app.UsageError(f"--strategies: unknown strategy {s!r} (expected {select.STRATEGIES})")
  scoring = copy.deepcopy(config)
  scoring.select.out_dir = os.path.join(root, "selection")
  first = select.run(scoring)
  rows = [run_strategy(config, root, s, first.scores) for s in _STRATEGIES.value]
  title = f"MoRSD strategies on {first.summary['data']['task']} ({first.summary['data']['source']})"
  text = report.write_report(rows, COLUMNS, root, "morsd_report", title,
                             plot=[("dev_accuracy", "dev"), ("test_accuracy", "test")],
                             notes=notes(first.summary, config))
  print(text, flush=True)


if __name__ == "__main__":
  app.run(main)
