"""A study's report from its runs' predictions: report.json (everything), report.md (the tables) and
report.png (accuracy with intervals), in the study's workdir.

Per split (dev: the best model's dev predictions; test: its one test evaluation):
  accuracy      per variant: mean over seeds with a Student-t 95% interval over seeds, and the
                pooled accuracy with a bootstrap 95% interval over examples (stats.bootstrap_ci)
  vs reference  per variant: the paired difference (pooled over seeds, examples paired by id) with a
                paired-bootstrap interval and p-value, Holm-corrected over the variants; and exact
                McNemar per seed (variant seed k vs reference seed k), Holm-corrected over all of them
  subsets       NLI pairs: lexical-overlap buckets, negation in the hypothesis, length buckets and,
                with a hypothesis-only variant, the hard subset its seeds get wrong by majority
  traces        variants whose runs report a trace block: answer / trace / step accuracy,
                P(answer ok | trace ok / wrong) and phi per seed with t intervals, and the summed table
  run metrics   the study's `metrics` ((label, a metrics.json key such as "decode.speedup", or
                FILE:key for another JSON file of the run) pairs): mean over seeds with a t interval
  faithfulness  variants whose students generate rationales: LAS and consistency per seed from
                simulators trained on the run's dev predictions (simulators.py), mean with a t interval
Every run of a variant must have predicted the same examples (stats.align refuses otherwise), and a
split without examples is not reported.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from etils import epath

from jaxdistill import files, train
from jaxdistill.study import simulators, stats
from jaxdistill.study.grid import HYPOTHESIS_ONLY, Run

REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"
SPLITS = ("dev", "test")


def read_predictions(run: Run) -> dict[str, list[dict]]:
  """split -> the run's prediction rows."""
  path = os.path.join(run.workdir, train.PREDICTIONS)
  out: dict[str, list[dict]] = {}
  with epath.Path(path).open("r", encoding="utf-8") as f:
    for line_no, line in enumerate(f, 1):
      try:
        row = json.loads(line)
      except ValueError as e:
        raise ValueError(f"{path}:{line_no}: not a JSON row ({e})") from None
      out.setdefault(row["split"], []).append(row)
  return out


def _matrix(runs: Sequence[Run], predictions: Mapping[str, Mapping[str, list[dict]]], split: str
            ) -> tuple[list[str], np.ndarray, list[dict]]:
  """(ids, correct [seeds, n], the first run's rows in id order) of one variant's runs on `split`."""
  ids, aligned = stats.align({r.workdir: predictions[r.workdir][split] for r in runs})
  return ids, stats.correct_matrix(aligned, [r.workdir for r in runs]), aligned[runs[0].workdir]


def _interval(values) -> dict[str, float | None]:
  mean, low, high = values
  clean = lambda x: None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
  return {"mean": clean(mean), "low": clean(low), "high": clean(high)}


def _nli_subsets(rows: Sequence[Mapping[str, Any]], hard_ids: set[str] | None) -> dict[str, dict[str, str]]:
  """subset family -> {example id: bucket} for NLI rows (premise and hypothesis inputs)."""
  if not rows or not {"premise", "hypothesis"} <= set(rows[0].get("inputs", {})):
    return {}
  out = {"lexical overlap": {}, "negation in hypothesis": {}, "length": {}}
  for r in rows:
    p, h = r["inputs"]["premise"], r["inputs"]["hypothesis"]
    out["lexical overlap"][r["id"]] = stats.overlap_bucket(stats.lexical_overlap(p, h))
    out["negation in hypothesis"][r["id"]] = "negation" if stats.has_negation(h) else "no negation"
    out["length"][r["id"]] = stats.length_bucket(p, h)
  if hard_ids is not None:
    out["hypothesis-only"] = {r["id"]: "hard" if r["id"] in hard_ids else "easy" for r in rows}
  return out


def split_report(study, runs_by_variant: Mapping[str, list[Run]], predictions, split: str) -> dict[str, Any]:
  resamples, reference = int(study.get("bootstrap_resamples", stats.DEFAULT_RESAMPLES)), study.reference
  matrices, ids_of, rows_of = {}, {}, {}
  for variant, runs in runs_by_variant.items():
    ids_of[variant], matrices[variant], rows_of[variant] = _matrix(runs, predictions, split)
  first = next(iter(ids_of.values()))
  for variant, ids in ids_of.items():  # every variant on the same examples, in the same order
    if sorted(ids) != sorted(first):
      raise ValueError(f"{split}: variant {variant!r} predicted other examples than {next(iter(ids_of))!r}")
    order = {i: k for k, i in enumerate(ids)}
    matrices[variant] = matrices[variant][:, [order[i] for i in first]]
  accuracy = {}
  for variant, m in matrices.items():
    per_seed = m.mean(axis=1)
    accuracy[variant] = {"per_seed": per_seed.tolist(), "seeds": _interval(stats.t_interval(per_seed)),
                         "examples": _interval(stats.bootstrap_ci(m, resamples=resamples)), "n_examples": m.shape[1]}
  paired, mcnemar_p = {}, {}
  ref_runs = {r.seed: k for k, r in enumerate(runs_by_variant[reference])}
  for variant, m in matrices.items():
    if variant == reference:
      continue
    result = stats.paired_bootstrap(matrices[reference], m, resamples=resamples)
    tests = []
    for k, run in enumerate(runs_by_variant[variant]):
      if run.seed in ref_runs:
        b01, b10, p = stats.mcnemar_exact(matrices[reference][ref_runs[run.seed]], m[k])
        tests.append({"seed": run.seed, "reference_wrong_variant_right": b01, "reference_right_variant_wrong": b10,
                      "p": p})
        mcnemar_p[f"{variant}/{run.seed}"] = p
    paired[variant] = {"difference": _interval((result.diff, result.low, result.high)), "p": result.p_value,
                       "mcnemar": tests}
  if paired:
    adjusted, significant = stats.holm({v: paired[v]["p"] for v in paired})
    for v in paired:
      paired[v].update(p_holm=adjusted[v], significant=bool(significant[v]))
  if mcnemar_p:
    adjusted, significant = stats.holm(mcnemar_p)
    for v in paired:
      for t in paired[v]["mcnemar"]:
        key = f"{v}/{t['seed']}"
        t.update(p_holm=adjusted[key], significant=bool(significant[key]))
  hard = None
  if HYPOTHESIS_ONLY in matrices:
    hyp = matrices[HYPOTHESIS_ONLY]
    hard = {i for i, wrong in zip(first, (~hyp).sum(axis=0) * 2 > hyp.shape[0]) if wrong}
  rows = {r["id"]: r for r in rows_of[next(iter(rows_of))]}
  subsets = {}
  for family, bucket_of in _nli_subsets([rows[i] for i in first], hard).items():
    if len(set(bucket_of.values())) < 2:
      continue  # every example in one bucket: the table would repeat the overall accuracy
    table = {}
    for bucket in sorted(set(bucket_of.values())):
      cols = np.asarray([bucket_of[i] == bucket for i in first])
      table[bucket] = {"count": int(cols.sum()), **{
          v: _interval(stats.bootstrap_ci(m[:, cols], resamples=resamples))
          for v, m in matrices.items() if not (family == "hypothesis-only" and v == HYPOTHESIS_ONLY)}}
    subsets[family] = table
  return {"accuracy": accuracy, "vs_reference": paired, "subsets": subsets}


def _over_seeds(values: Sequence[Any]) -> dict[str, Any]:
  """Per-seed values (None or a non-number where a seed leaves one undefined) with the mean and t
  interval of the numbers among them, and how many there are."""
  numbers = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
  return {"per_seed": list(values), "defined_seeds": len(numbers),
          **_interval(stats.t_interval(numbers) if numbers else (None, None, None))}


TRACE_RATES = ("answer_accuracy", "trace_accuracy", "p_answer_given_trace_ok", "p_answer_given_trace_wrong", "phi")


def traces_report(runs_by_variant: Mapping[str, list[Run]]) -> dict[str, Any]:
  """variant -> for runs that report a trace block (their test evaluation): answer and trace accuracy,
  P(answer ok | trace ok / wrong), phi and every step's accuracy per seed with t intervals over
  seeds, and the trace x answer table summed over seeds. A rate a seed leaves undefined (phi with an
  empty margin, P(. | trace wrong) when every trace is right) is left out of that rate's interval,
  and the count of seeds behind it is kept."""
  out = {}
  for variant, runs in runs_by_variant.items():
    blocks = []
    for run in runs:
      block = json.loads((epath.Path(run.workdir) / "metrics.json").read_text(encoding="utf-8")).get("traces")
      if block:
        blocks.append(block)
    if not blocks:
      continue
    entry: dict[str, Any] = {"seeds": len(blocks)}
    rates = {**{k: [b.get(k) for b in blocks] for k in TRACE_RATES},
             **{f"step {name}": [b["step_accuracy"].get(name) for b in blocks] for name in blocks[0]["step_accuracy"]}}
    for key, values in rates.items():
      entry[key] = _over_seeds(values)
    entry["contingency"] = {k: sum(int(b["contingency"][k]) for b in blocks) for k in blocks[0]["contingency"]}
    out[variant] = entry
  return out


def _json_value(run: Run, path: str) -> Any:
  """`path` is a dotted key into the run's metrics.json, or FILE:dotted.key into a JSON file of its workdir."""
  file, _, key = path.rpartition(":")
  value = json.loads((epath.Path(run.workdir) / (file or "metrics.json")).read_text(encoding="utf-8"))
  for part in key.split("."):
    value = value.get(part) if isinstance(value, dict) else None
  return value


def run_metrics_report(study, runs_by_variant: Mapping[str, list[Run]]) -> dict[str, Any]:
  """variant -> {label: per-seed values of the study's `metrics` ((label, path) pairs, see _json_value)
  and their mean with a t interval over the seeds where the value is a number}."""
  wanted = dict(study.get("metrics", ()) or ())
  out = {}
  for variant, runs in runs_by_variant.items():
    entry = {}
    for label, path in wanted.items():
      entry[label] = _over_seeds([_json_value(run, path) for run in runs])
    out[variant] = entry
  return out if wanted else {}


def faithfulness_report(runs_by_variant: Mapping[str, list[Run]], predictions) -> dict[str, Any]:
  """variant -> LAS and consistency per seed and their t intervals, for variants whose runs wrote a
  rationale for most dev and test examples (a student that generates none is not scored)."""
  out = {}
  for variant, runs in runs_by_variant.items():
    per_seed = []
    for run in runs:
      dev, test = predictions[run.workdir].get("dev", []), predictions[run.workdir].get("test", [])
      with_rationale = [r for r in dev + test if r.get("rationale")]
      if not dev or not test or len(with_rationale) * 2 < len(dev) + len(test):
        break
      per_seed.append(dict(simulators.faithfulness(dev, test), seed=run.seed))
    else:
      if per_seed:
        out[variant] = {"per_seed": per_seed,
                        "las": _interval(stats.t_interval([s["las"] for s in per_seed])),
                        "consistency": _interval(stats.t_interval([s["consistency"] for s in per_seed]))}
  return out


def build(study, runs: Sequence[Run]) -> dict[str, Any]:
  runs_by_variant: dict[str, list[Run]] = {}
  for run in runs:
    runs_by_variant.setdefault(run.variant, []).append(run)
  predictions = {r.workdir: read_predictions(r) for r in runs}
  splits = [s for s in SPLITS if all(predictions[r.workdir].get(s) for r in runs)]
  report = {"study": study.name, "reference": study.reference, "seeds": [int(s) for s in study.seeds],
            "bootstrap_resamples": int(study.get("bootstrap_resamples", stats.DEFAULT_RESAMPLES)),
            "variants": list(runs_by_variant), "splits": {s: split_report(study, runs_by_variant, predictions, s)
                                                          for s in splits}}
  run_metrics = run_metrics_report(study, runs_by_variant)
  if run_metrics:
    report["run_metrics"] = run_metrics
  traces = traces_report(runs_by_variant)
  if traces:
    report["traces"] = traces
  faithful = faithfulness_report(runs_by_variant, predictions)
  if faithful:
    report["faithfulness"] = faithful
  return report


# --------------------------------------------------------------------------- writing

def _pct(x: Mapping[str, float | None], spec: str = ".3f") -> str:
  if x["low"] is None:
    return f"{x['mean']:{spec}}"
  return f"{x['mean']:{spec}} [{x['low']:{spec}}, {x['high']:{spec}}]"


def _bootstrap_p(p: float, resamples: int) -> str:
  # No resample on the far side of 0 bounds p by the resolution 2/resamples, not by 0.
  return f"<{2 / resamples:.2g}" if p == 0 else f"{p:.3g}"


def markdown(report: Mapping[str, Any]) -> str:
  resamples = report.get("bootstrap_resamples", stats.DEFAULT_RESAMPLES)
  lines = [f"# Study {report['study']}", "",
           f"Seeds {report['seeds']}; reference variant `{report['reference']}`. Intervals are 95%: over seeds "
           "(Student t) and over examples (bootstrap, pooled over seeds). Differences are variant - reference, "
           "examples paired; * = significant at 0.05 after Holm.", ""]
  for split, block in report["splits"].items():
    lines += [f"## {split}", "", "| variant | mean over seeds [t CI] | pooled [bootstrap CI] | vs reference "
              "[paired bootstrap CI] | p (Holm) | McNemar per seed: p (Holm) |", "|---|---|---|---|---|---|"]
    for variant, acc in block["accuracy"].items():
      pair = block["vs_reference"].get(variant)
      vs = "reference" if pair is None else _pct(pair["difference"]) + (" *" if pair["significant"] else "")
      p = "" if pair is None else f"{_bootstrap_p(pair['p'], resamples)} ({_bootstrap_p(pair['p_holm'], resamples)})"
      mc = "" if pair is None else ", ".join(f"{t['p']:.3g} ({t['p_holm']:.3g}){' *' if t['significant'] else ''}"
                                             for t in pair["mcnemar"])
      lines.append(f"| {variant} | {_pct(acc['seeds'])} | {_pct(acc['examples'])} | {vs} | {p} | {mc} |")
    n = next(iter(block["accuracy"].values()))["n_examples"]
    lines += ["", f"{n} examples per run.", ""]
    for family, table in block["subsets"].items():
      variants = [v for v in next(iter(table.values())) if v != "count"]
      lines += [f"### {split}: {family}", "", "| bucket | examples | " + " | ".join(variants) + " |",
                "|---" * (len(variants) + 2) + "|"]
      for bucket, cells in table.items():
        lines.append(f"| {bucket} | {cells['count']} | " + " | ".join(_pct(cells[v]) for v in variants) + " |")
      lines.append("")
  if "run_metrics" in report:
    labels = list(next(iter(report["run_metrics"].values())))
    lines += ["## run metrics: mean over seeds [t CI] (n: seeds where the value exists)", "",
              "| variant | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for variant, entry in report["run_metrics"].items():
      seeds = len(entry[labels[0]]["per_seed"])
      cells = [("-" if entry[k]["mean"] is None else _pct(entry[k], ".4g"))
               + (f" (n={entry[k]['defined_seeds']})" if entry[k]["mean"] is not None and entry[k]["defined_seeds"] != seeds
                  else "") for k in labels]
      lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("")
  if "traces" in report:
    lines += ["## traces (test): answer and trace accuracy, P(answer ok | trace ok / wrong), phi of trace x answer "
              "correctness; mean over seeds [t CI] (n: seeds where the rate is defined)", ""]
    keys = list(next(iter(report["traces"].values())))
    keys = [k for k in keys if k not in ("seeds", "contingency")]
    lines += ["| variant | " + " | ".join(keys) + " | table summed over seeds (tok/aok, tok/awrong, twrong/aok, "
              "twrong/awrong) |", "|---" * (len(keys) + 2) + "|"]
    for variant, t in report["traces"].items():
      cells = [("n/a" if t[k]["mean"] is None else _pct(t[k])) + (f" (n={t[k]['defined_seeds']})"
               if t[k]["defined_seeds"] != t["seeds"] else "") for k in keys]
      table = ", ".join(str(v) for v in t["contingency"].values())
      lines.append(f"| {variant} | " + " | ".join(cells) + f" | {table} |")
    lines.append("")
  if "faithfulness" in report:
    lines += ["## rationale faithfulness (simulators fitted on each run's dev predictions, scored on its test "
              "predictions; jaxdistill/study/simulators.py)", "",
              "| variant | LAS [t CI] | consistency [t CI] | leaked / not leaked (per seed) |", "|---|---|---|---|"]
    for variant, f in report["faithfulness"].items():
      counts = ", ".join(f"{s['leaked']}/{s['not_leaked']}" for s in f["per_seed"])
      lines.append(f"| {variant} | {_pct(f['las'])} | {_pct(f['consistency'])} | {counts} |")
    lines.append("")
  return "\n".join(lines)


def plot(report: Mapping[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  splits = list(report["splits"])
  fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 3.5), squeeze=False)
  for ax, split in zip(axes[0], splits):
    acc = report["splits"][split]["accuracy"]
    names = list(acc)
    means = [acc[v]["seeds"]["mean"] for v in names]
    lows = [acc[v]["seeds"]["low"] if acc[v]["seeds"]["low"] is not None else acc[v]["seeds"]["mean"] for v in names]
    highs = [acc[v]["seeds"]["high"] if acc[v]["seeds"]["high"] is not None else acc[v]["seeds"]["mean"] for v in names]
    ax.bar(range(len(names)), means, yerr=[np.subtract(means, lows), np.subtract(highs, means)], capsize=4)
    for k, v in enumerate(names):
      ax.scatter([k] * len(acc[v]["per_seed"]), acc[v]["per_seed"], color="black", s=8, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_title(f"{report['study']}: {split} accuracy (95% t CI, seeds as dots)")
  fig.tight_layout()
  with files.atomic_open(path) as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def write(study, runs: Sequence[Run], workdir: str) -> dict[str, Any]:
  report = build(study, runs)
  files.atomic_write_text(os.path.join(workdir, REPORT_JSON), json.dumps(report, indent=2, sort_keys=False))
  files.atomic_write_text(os.path.join(workdir, REPORT_MD), markdown(report))
  plot(report, os.path.join(workdir, REPORT_PNG))
  return report
