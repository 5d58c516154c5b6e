"""The PST comparison: rationale-first vs answer-first, token vs semantic vs both rationale losses,
as rows of one report (WORKDIR/pst_report.{md,png,json}).

    python scripts/pst_comparison.py --workdir=runs/pst_comparison [--config=configs/pst.py]
        [--config.data.demo.num_train=1000 --config.train.steps=300 ...]

Every variant trains the same config (same data, student, steps, seed) with only
`objective.format` and `objective.rationale_loss` changed, in WORKDIR/<variant>; a variant whose
metrics.json exists is not run again, so a killed comparison resumes. Decoding is timed on each
run's test set (eval.measure_decode): for answer-first runs both the early stop after the answer
and the full answer + rationale decode, whose ratio is the speed-up; for rationale-first runs the
decode that must produce the rationale before the answer.
"""

from __future__ import annotations

import copy
import os
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from jaxdistill import report, runtime, train

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pst.py", "Base config of every variant.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/pst_comparison", "Root directory of the variants' runs.")
_VARIANTS = flags.DEFINE_list("variants", None, "Subset of variants to run (default: all).")
_RETIME = flags.DEFINE_bool("retime", False, "Re-measure every variant's decoding side by side in this one "
                            "process (best models restored; nothing is trained) and report those timings.")

FORMATS = {"rationale_first": "rationale_answer", "answer_first": "answer_rationale"}
LOSSES = ("token", "semantic", "both")
VARIANTS = {f"{order}-{loss}": (fmt, loss) for order, fmt in FORMATS.items() for loss in LOSSES}

COLUMNS = [("variant", "variant"), ("format", "target order"), ("rationale_loss", "rationale loss"),
           ("dev_accuracy", "dev acc."), ("test_accuracy", "test acc."),
           ("test_rationale_perplexity", "test rationale ppl"),
           ("decode.answer_seconds", "decode s (as evaluated)"), ("decode.full_seconds", "decode s (full)"),
           ("decode.speedup", "early-stop speed-up"), ("steps", "steps")]


def variant_config(base, name: str):
  fmt, loss = VARIANTS[name]
  config = copy.deepcopy(base)
  config.name = f"pst-{name}"
  config.objective.update(format=fmt, rationale_loss=loss)
  config.eval.measure_decode = True
  return config


def run_variant(base, name: str, workdir: str) -> dict:
  path = os.path.join(workdir, name)
  if not os.path.exists(os.path.join(path, "metrics.json")):
    train.run(variant_config(base, name), path)
  return dict(report.run_metrics(path), variant=name)


def retime(base, rows: list[dict], workdir: str) -> None:
  """Replaces each row's `decode` by a measurement taken here, all variants in one process, so
  their timings compare (the runs' own were taken while other jobs shared the machine)."""
  for row in rows:
    model, evaluator = train.restore_best(variant_config(base, row["variant"]), os.path.join(workdir, row["variant"]))
    row["decode"] = dict(evaluator.measure_decode(model, "test"), retimed=True)
    print(f"{row['variant']}: {row['decode']}", flush=True)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  names = _VARIANTS.value or list(VARIANTS)
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    raise app.UsageError(f"--variants: unknown {unknown}; known: {list(VARIANTS)}")
  runtime.prepare_process()
  base = _CONFIG.value
  rows = [run_variant(base, name, _WORKDIR.value) for name in names]
  if _RETIME.value:
    retime(base, rows, _WORKDIR.value)
  data = base.data
  notes = (f"Data: {data.source}/{data.task}, {rows[0]['data']['train_examples']} train / "
           f"{rows[0]['data']['dev_examples']} dev / {rows[0]['data']['test_examples']} test examples; student "
           f"{rows[0]['model']['student']} ({rows[0]['model']['parameters']:,} parameters), {base.train.steps} steps, "
           f"batch {base.train.batch_size}, seed {base.seed}. Decode seconds: greedy label prediction on the "
           "test split, warm (compile excluded), the fastest of 3 passes"
           f"{', all variants re-timed side by side in one process (--retime)' if _RETIME.value else ''}. "
           "Semantic targets: "
           f"{base.objective.semantic.encoder} ({base.objective.semantic.distance}).")
  text = report.write_report(rows, COLUMNS, _WORKDIR.value, "pst_report", "PST: answer order x rationale loss",
                             plot=[("dev_accuracy", "dev"), ("test_accuracy", "test")], notes=notes)
  print(text)


if __name__ == "__main__":
  app.run(main)
