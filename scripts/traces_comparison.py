"""The trace comparison: no trace vs correct vs incorrect vs mixed traces, as rows of one report
(WORKDIR/traces_report.{md,png,json}).

    python scripts/traces_comparison.py --workdir=runs/traces_comparison [--config=configs/traces.py]
        [--variants=none,correct,incorrect,mixed] [--config.traces.corrupt_step=classification ...]

Every variant trains the same config (data, student, steps, seed) with only `traces.variant` and
the objective it implies changed (traces.configure), in WORKDIR/<variant>; a variant whose
metrics.json exists is read, not run again, so a killed comparison resumes. Each row reports the
test split as metrics.json's "traces" block has it: answer accuracy, trace accuracy (every
non-answer step right), per-step accuracy, P(answer ok | trace ok), P(answer ok | trace wrong),
the phi coefficient of trace-correct x answer-correct and the 2x2 counts. The study's questions
read off the table: do incorrect traces cost answer accuracy, and does a right trace predict a
right answer (phi near 0: it does not)?
"""

from __future__ import annotations

import copy
import os
import sys
from typing import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)  # `configs` is importable when run as a script

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxdistill import report, runtime, train, traces  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxdistill.data import sources  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", os.path.join(REPO, "configs", "traces.py"),
                                          "Base config of every variant.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/traces_comparison", "Root directory of the variants' runs.")
_VARIANTS = flags.DEFINE_list("variants", None, f"Subset of {list(traces.VARIANTS)} (default: all).")

TABLE = "traces.contingency"
COLUMNS = [("variant", "variant"), ("training", "training traces"),
           ("test_accuracy", "answer acc."), ("traces.trace_accuracy", "trace acc."),
           ("step.classification", "step: class."), ("step.retrieval", "step: retrieval"),
           ("traces.p_answer_given_trace_ok", "P(ans ok \\| trace ok)"),
           ("traces.p_answer_given_trace_wrong", "P(ans ok \\| trace wrong)"), ("traces.phi", "phi"),
           (f"{TABLE}.trace_ok_answer_ok", "T+A+"), (f"{TABLE}.trace_ok_answer_wrong", "T+A-"),
           (f"{TABLE}.trace_wrong_answer_ok", "T-A+"), (f"{TABLE}.trace_wrong_answer_wrong", "T-A-"),
           ("dev_accuracy", "dev acc."), ("traces.malformed", "malformed")]
PLOT = [("test_accuracy", "answer acc."), ("traces.trace_accuracy", "trace acc."),
        ("traces.p_answer_given_trace_ok", "P(ans|trace ok)"),
        ("traces.p_answer_given_trace_wrong", "P(ans|trace wrong)"), ("traces.phi", "phi")]


def run_variant(base, name: str, workdir: str) -> dict:
  path = os.path.join(workdir, name)
  if not os.path.exists(os.path.join(path, "metrics.json")):
    config = copy.deepcopy(base)
    traces.configure(config, name)
    train.run(config, path)
  return row(name, report.run_metrics(path))


def row(name: str, metrics: dict) -> dict:
  """A report row: the run's metrics plus the per-step accuracy by step kind and a short
  description of what it trained on (every number from metrics.json)."""
  block = metrics.get("traces", {})
  trained = block.get("training", {})
  sources.source_module(metrics["data"]["source"])  # registers the task's decomposer (a run read from disk loaded no data)
  decomposer = traces.decomposer_for(metrics["data"]["task"])
  step = {kind: (block.get("step_accuracy") or {}).get(n) for n, kind in decomposer.specs}
  if name == "none":
    training = "none (answer only)"
  elif name == "correct":
    training = "gold"
  else:
    share = trained.get("corrupted", 0) / max(trained.get("train_examples", 1), 1)
    training = f"{trained.get('corrupt_step')} wrong in {share:.0%}" + (" (+ gold)" if name == "mixed" else "")
  return dict(metrics, variant=name, training=training, step=step)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  names = _VARIANTS.value or list(traces.VARIANTS)
  unknown = sorted(set(names) - set(traces.VARIANTS))
  if unknown:
    raise app.UsageError(f"--variants: unknown {unknown}; known: {list(traces.VARIANTS)}")
  runtime.prepare_process()
  base = _CONFIG.value
  rows = [run_variant(base, name, _WORKDIR.value) for name in names]
  first = rows[0]
  notes = (f"Data: {first['data']['source']}/{first['data']['task']}, {first['data']['train_examples']} train / "
           f"{first['data']['dev_examples']} dev / {first['data']['test_examples']} test examples; student "
           f"{first['model']['student']} ({first['model']['parameters']:,} parameters), {base.train.steps} steps, "
           f"batch {base.train.batch_size}, seed {base.seed}. Every figure is on the test split with the best-on-dev "
           "model. A trace is correct when every non-answer step verifies (classification: exact label; "
           "retrieval: the same set of fact numbers); T+A- counts traces right with answers wrong, and so on. "
           "P(ans ok | trace ok) and phi are undefined ('-') when no trace (or every trace) is right; the "
           "no-trace student writes no trace, so its trace accuracy is 0 by construction.\n\n"
           f"![plot](traces_report.png)")
  text = report.write_report(rows, COLUMNS, _WORKDIR.value, "traces_report",
                             "Trace-based distillation: no / correct / incorrect / mixed traces", notes=notes)
  report.bar_plot(rows, "variant", PLOT, os.path.join(_WORKDIR.value, "traces_report.png"),
                  "Answer vs trace correctness by training variant (test)", ylabel="rate / phi")
  print(text)


if __name__ == "__main__":
  app.run(main)
