"""The selection's report beside its cache: selection.json, selection_report.md and rd_hist.png.

`rd_summary` says how RD relates to the teachers' correctness (does the lowest-RD rationale tend to
be a correct one?), `rd_histogram` plots log RD of correct and wrong candidates, `write_report`
writes the counts of every stage and those figures.
"""

from __future__ import annotations

import json
import math
import os
from typing import Mapping, Sequence

import numpy as np

from jaxdistill import files
from jaxdistill.data.examples import Rationale
from jaxdistill.select.stages import Key, key_of

REPORT_JSON, REPORT_MD, RD_HIST = "selection.json", "selection_report.md", "rd_hist.png"


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
  with files.atomic_open(path) as f:
    fig.savefig(f, format="png", dpi=120)
  plt.close(fig)


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
