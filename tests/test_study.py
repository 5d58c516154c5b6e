"""`python -m jaxdistill.study`: a tiny grid run end to end, killed once and resumed, its report checked
against the runs it reports on; and the report's numbers on fixed prediction files."""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from jaxdistill import config as config_lib
from jaxdistill import train
from jaxdistill.study import grid, report, stats
from tests import train_utils as tu


def _study_command(workdir: str, *extra: str) -> list[str]:
  return [sys.executable, "-m", "jaxdistill.study", "--config=tests/fixtures/tiny_study.py", f"--workdir={workdir}",
          *extra]


def _metrics(path: str) -> dict:
  with open(os.path.join(path, "metrics.json"), encoding="utf-8") as f:
    return json.load(f)


@pytest.mark.slow  # four tiny trainings in subprocesses, one killed: about 2.5 minutes
def test_a_killed_study_resumes_and_reports_on_exactly_its_runs(tmp_path):
  workdir = str(tmp_path / "study")
  proc = subprocess.Popen(_study_command(workdir), cwd=tu.REPO, env=tu.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  first = os.path.join(workdir, "baseline", "seed-0", "metrics.json")
  deadline = time.time() + 400
  while not os.path.exists(first) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.5)
  time.sleep(5)  # into the second run
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert os.path.exists(first) and not os.path.exists(os.path.join(workdir, report.REPORT_JSON))

  done = subprocess.run(_study_command(workdir), cwd=tu.REPO, env=tu.env(), capture_output=True, text=True,
                        timeout=900)
  assert done.returncode == 0, done.stderr[-4000:]
  assert "4 runs (2 variants, seeds [0, 1]), 1 finished, 3 to run" in done.stdout
  with open(os.path.join(workdir, report.REPORT_JSON), encoding="utf-8") as f:
    rep = json.load(f)
  assert os.path.getsize(os.path.join(workdir, report.REPORT_PNG)) > 1000
  assert "| cot |" in open(os.path.join(workdir, report.REPORT_MD), encoding="utf-8").read()

  runs = {(v, s): os.path.join(workdir, v, f"seed-{s}") for v in ("baseline", "cot") for s in (0, 1)}
  for (variant, seed), path in runs.items():
    m = _metrics(path)
    assert m["setting"] == f"tiny/{variant}" and m["steps"] == 8
    k = (0, 1).index(seed)
    assert rep["splits"]["test"]["accuracy"][variant]["per_seed"][k] == pytest.approx(m["test_accuracy"])
    # The best model's dev predictions reproduce the dev accuracy it was selected on.
    assert rep["splits"]["dev"]["accuracy"][variant]["per_seed"][k] == pytest.approx(m["dev_accuracy"])
  # The seeds differ in initialisation and data order, not in the data.
  preds = {key: report.read_predictions(grid.Run(key[0], key[1], path, ml_collections.ConfigDict()))
           for key, path in runs.items()}
  assert len({tuple(r["id"] for r in p["test"]) for p in preds.values()}) == 1
  assert _metrics(runs["baseline", 0])["best_step"] >= 0

  test = rep["splits"]["test"]
  base = np.array([[r["correct"] for r in preds["baseline", s]["test"]] for s in (0, 1)])
  cot = np.array([[r["correct"] for r in preds["cot", s]["test"]] for s in (0, 1)])
  assert test["vs_reference"]["cot"]["difference"]["mean"] == pytest.approx(cot.mean() - base.mean())
  for t, s in zip(test["vs_reference"]["cot"]["mcnemar"], (0, 1)):
    assert t["reference_wrong_variant_right"] == int((~base[s] & cot[s]).sum())
    assert t["reference_right_variant_wrong"] == int((base[s] & ~cot[s]).sum())
  # The demo is NLI, but its pairs fall in one bucket of each family, so there is nothing to break down.
  families = report._nli_subsets(preds["baseline", 0]["test"], None)  # pylint: disable=protected-access
  assert set(families) == {"lexical overlap", "negation in hypothesis", "length"}
  assert all(len(set(buckets.values())) == 1 for buckets in families.values()) and test["subsets"] == {}

  again = subprocess.run(_study_command(workdir, "--report_only"), cwd=tu.REPO, env=tu.env(), capture_output=True,
                         text=True, timeout=300)
  assert again.returncode == 0 and "0 to run" in again.stdout, again.stderr[-2000:]


# --------------------------------------------------------------------------- the report on fixed predictions

def _write_run(root, variant, seed, correct, hyp_texts=None):
  path = root / variant / f"seed-{seed}"
  path.mkdir(parents=True)
  rows = []
  for split in ("dev", "test"):
    for i, ok in enumerate(correct):
      hyp = (hyp_texts or {}).get(i, "a dog runs")
      rows.append({"split": split, "id": f"e{i}", "gold": "entailment", "predicted": "entailment" if ok else "neutral",
                   "correct": bool(ok), "inputs": {"premise": "a dog runs in the park", "hypothesis": hyp}})
  (path / train.PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in rows))
  (path / "metrics.json").write_text(json.dumps({"test_accuracy": float(np.mean(correct))}))
  return grid.Run(variant, seed, str(path), ml_collections.ConfigDict())


def test_the_report_numbers_on_fixed_predictions(tmp_path):
  ref = [[1, 1, 0, 0, 1, 0, 1, 0], [1, 0, 0, 1, 1, 0, 1, 0]]
  var = [[1, 1, 1, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]]
  hyp = [[0, 0, 1, 1, 1, 1, 1, 1], [0, 1, 0, 1, 1, 1, 1, 1]]  # majority wrong on e0 only; e1, e2 tie (not hard)
  negated = {3: "a dog does not run", 4: "nobody runs"}
  runs = ([_write_run(tmp_path, "ref", s, ref[s], negated) for s in (0, 1)]
          + [_write_run(tmp_path, "var", s, var[s], negated) for s in (0, 1)]
          + [_write_run(tmp_path, grid.HYPOTHESIS_ONLY, s, hyp[s], negated) for s in (0, 1)])
  study = ml_collections.ConfigDict({"name": "fixed", "reference": "ref", "seeds": (0, 1), "bootstrap_resamples": 1000})
  rep = report.build(study, runs)
  test = rep["splits"]["test"]
  acc = test["accuracy"]["var"]
  assert acc["per_seed"] == [7 / 8, 7 / 8]
  assert acc["seeds"]["mean"] == 7 / 8 and acc["seeds"]["low"] == acc["seeds"]["high"] == 7 / 8  # no seed spread
  ref_acc = test["accuracy"]["ref"]
  mean, low, high = stats.t_interval([4 / 8, 4 / 8])
  assert ref_acc["seeds"]["mean"] == mean == 0.5
  assert (ref_acc["examples"]["low"], ref_acc["examples"]["high"]) == pytest.approx(
      stats.bootstrap_ci(np.array(ref, bool), resamples=1000)[1:])
  vs = test["vs_reference"]["var"]
  assert vs["difference"]["mean"] == pytest.approx(7 / 8 - 1 / 2)
  # McNemar seed 0: ref wrong & var right on e2, e3, e7 (3), ref right & var wrong on none.
  assert [(t["reference_wrong_variant_right"], t["reference_right_variant_wrong"]) for t in vs["mcnemar"]] == [
      (3, 0), (3, 0)]
  assert vs["mcnemar"][0]["p"] == pytest.approx(2 * 0.5 ** 3)
  # Holm over the McNemar family {var/0, var/1, hypothesis-only/0, hypothesis-only/1}.
  family = {f"{v}/{t['seed']}": t["p"] for v, blk in test["vs_reference"].items() for t in blk["mcnemar"]}
  adjusted, _ = stats.holm(family)
  assert vs["mcnemar"][0]["p_holm"] == pytest.approx(adjusted["var/0"])
  subsets = test["subsets"]
  assert subsets["hypothesis-only"]["hard"]["count"] == 1  # e0: wrong in both hypothesis-only seeds
  assert grid.HYPOTHESIS_ONLY not in subsets["hypothesis-only"]["hard"]
  assert subsets["hypothesis-only"]["hard"]["ref"]["mean"] == 1.0  # ref got e0 right in both seeds
  assert subsets["negation in hypothesis"]["negation"]["count"] == 2
  assert subsets["negation in hypothesis"]["negation"]["var"]["mean"] == 1.0
  md = report.markdown(rep)
  assert md.count("| var | 0.875 [0.875, 0.875] |") == 2  # dev and test rows
  # A bootstrap p of 0 (no resample on the far side of 0) is printed as the resolution bound 2/resamples.
  vs.update(p=0.0, p_holm=0.0)
  assert report.markdown(rep).count(" | <0.002 (<0.002) | ") == 1


def test_a_run_with_other_examples_is_refused(tmp_path):
  runs = [_write_run(tmp_path, "ref", 0, [1, 0, 1]), _write_run(tmp_path, "var", 0, [1, 0])]
  study = ml_collections.ConfigDict({"name": "bad", "reference": "ref", "seeds": (0,)})
  with pytest.raises(ValueError, match="other examples"):
    report.build(study, runs)


@pytest.mark.parametrize("name", sorted(p.stem for p in (pathlib.Path(tu.REPO) / "configs" / "studies").glob("*.py")
                                        if p.stem != "__init__"))
def test_every_shipped_study_plans_runs_with_known_keys(name, tmp_path):
  sys.path.insert(0, tu.REPO)
  study = importlib.import_module(f"configs.studies.{name}").get_config()
  runs = grid.plan(study, str(tmp_path))
  assert len(runs) == sum(len(grid.seeds_of(study, v)) for v in grid.variants(study))
  for run in runs:
    assert config_lib.unknown_keys(run.config) == [], run.variant
    config_lib.validate(run.config)
  assert len({(r.config.seed, r.config.data.shuffle_seed) for r in runs}) == len(study.seeds)
  if "select" in study.base:  # MoRSD: each run trains on the selection it writes into its own workdir
    assert all(r.config.data.cache_dir == r.config.select.out_dir == os.path.join(r.workdir, "selection")
               for r in runs)


def test_a_variant_overriding_a_key_the_base_lacks_is_refused(tmp_path):
  study = importlib.import_module("tests.fixtures.tiny_study").get_config()
  study.variants.cot.objective.alhpa = 0.3
  with pytest.raises(ValueError, match="config.variants.cot.objective.alhpa: the base config has no such key"):
    grid.plan(study, str(tmp_path))


def test_input_fields_keeps_only_the_named_inputs():
  from jaxdistill.data import sources  # pylint: disable=g-import-not-at-top
  d = sources.load_dataset({"source": "demo", "demo": {"num_train": 8, "num_dev": 4, "num_test": 4},
                            "input_fields": "hypothesis"})
  assert all(list(ex.inputs) == ["hypothesis"] for split in d.splits.values() for ex in split)
  with pytest.raises(ValueError, match=r"input_fields: \['question'\] not among the demo inputs"):
    sources.load_dataset({"source": "demo", "input_fields": "question"})


def test_the_report_scores_faithfulness_of_variants_that_write_rationales(tmp_path):
  runs = []
  for variant, says in (("ref", None), ("cot", "so the answer is")):
    for seed in (0, 1):
      run = _write_run(tmp_path, variant, seed, [k % 3 != 0 for k in range(40)])
      if says:  # rewrite the rows with a rationale naming the predicted label
        path = os.path.join(run.workdir, train.PREDICTIONS)
        rows = [json.loads(line) for line in open(path)]
        for r in rows:
          r["rationale"] = f"{says} {r['predicted']}"
        open(path, "w").write("".join(json.dumps(r) + "\n" for r in rows))
      runs.append(run)
  rep = report.build(ml_collections.ConfigDict({"name": "f", "reference": "ref", "seeds": (0, 1)}), runs)
  assert list(rep["faithfulness"]) == ["cot"]  # ref wrote no rationales: not scored
  block = rep["faithfulness"]["cot"]
  assert [s["seed"] for s in block["per_seed"]] == [0, 1]
  assert block["consistency"]["mean"] == 1.0
  assert "## rationale faithfulness" in report.markdown(rep)


def test_the_report_gives_trace_rates_with_intervals_over_seeds(tmp_path):
  from jaxdistill import traces  # pylint: disable=g-import-not-at-top
  # (trace ok, answer ok) per example for two seeds; seed 1 has every trace right (phi undefined).
  seeds = [[(1, 1), (1, 1), (0, 0), (0, 1)], [(1, 1), (1, 0), (1, 1), (1, 1)]]
  runs = []
  for seed, pairs in enumerate(seeds):
    run = _write_run(tmp_path, "gold", seed, [a for _, a in pairs])
    block = {**traces.correlation_block([bool(t) for t, _ in pairs], [bool(a) for _, a in pairs]),
             "answer_accuracy": np.mean([a for _, a in pairs]), "trace_accuracy": np.mean([t for t, _ in pairs]),
             "step_accuracy": {"retrieval": np.mean([t for t, _ in pairs]), "answer": np.mean([a for _, a in pairs])}}
    metrics = json.loads(open(os.path.join(run.workdir, "metrics.json")).read())
    open(os.path.join(run.workdir, "metrics.json"), "w").write(json.dumps({**metrics, "traces": block}))
    runs.append(run)
  rep = report.build(ml_collections.ConfigDict({"name": "t", "reference": "gold", "seeds": (0, 1)}), runs)
  gold = rep["traces"]["gold"]
  assert gold["trace_accuracy"]["per_seed"] == [0.5, 1.0]
  mean, low, high = stats.t_interval([0.5, 1.0])
  assert (gold["trace_accuracy"]["mean"], gold["trace_accuracy"]["low"], gold["trace_accuracy"]["high"]) == (
      mean, low, high)
  assert gold["step retrieval"]["mean"] == 0.75 and gold["step answer"]["mean"] == 0.75
  # phi: seed 0's table is a=2, b=0, c=1, d=1 -> (2*1 - 0) / sqrt(2*2*3*1); seed 1 leaves it undefined.
  assert gold["phi"]["per_seed"][0] == pytest.approx(2 / np.sqrt(12)) and gold["phi"]["per_seed"][1] is None
  assert gold["phi"]["defined_seeds"] == 1 and gold["phi"]["low"] is None  # one seed: no interval claimed
  assert gold["p_answer_given_trace_wrong"]["defined_seeds"] == 1
  assert gold["contingency"] == {"trace_ok_answer_ok": 5, "trace_ok_answer_wrong": 1, "trace_wrong_answer_ok": 1,
                                 "trace_wrong_answer_wrong": 1}
  md = report.markdown(rep)
  assert "| gold | 0.750 [" in md and "(n=1)" in md and "5, 1, 1, 1 |" in md


def test_the_report_gives_the_studys_run_metrics_over_seeds(tmp_path):
  runs = []
  for seed, (speedup, kept) in enumerate([(2.0, 10), (4.0, None)]):
    run = _write_run(tmp_path, "answer_first", seed, [1, 0, 1])
    metrics = json.loads(open(os.path.join(run.workdir, "metrics.json")).read())
    open(os.path.join(run.workdir, "metrics.json"), "w").write(json.dumps({**metrics, "decode": {"speedup": speedup}}))
    os.makedirs(os.path.join(run.workdir, "selection"))
    open(os.path.join(run.workdir, "selection", "selection.json"), "w").write(json.dumps({"counts": {"kept": kept}}))
    runs.append(run)
  study = ml_collections.ConfigDict({"name": "m", "reference": "answer_first", "seeds": (0, 1),
                                     "metrics": (("speed-up", "decode.speedup"),
                                                 ("kept", "selection/selection.json:counts.kept"))})
  rep = report.build(study, runs)
  block = rep["run_metrics"]["answer_first"]
  mean, low, high = stats.t_interval([2.0, 4.0])
  assert (block["speed-up"]["mean"], block["speed-up"]["low"], block["speed-up"]["high"]) == (mean, low, high)
  assert block["kept"]["per_seed"] == [10, None] and block["kept"]["defined_seeds"] == 1
  assert block["kept"]["mean"] == 10 and block["kept"]["low"] is None
  assert f"| answer_first | {mean:.4g} [{low:.4g}, {high:.4g}] | 10 (n=1) |" in report.markdown(rep)


def test_a_finished_run_gets_the_rationales_a_study_asks_for_afterwards(tmp_path):
  from jaxdistill.study import run as study_run  # pylint: disable=g-import-not-at-top
  config = tu.tiny_config(**{"objective.name": "cot", "train.steps": 4, "eval.every": 4, "data.demo.num_train": 32,
                             "data.demo.num_dev": 8, "data.demo.num_test": 8})
  train.run(config, str(tmp_path))
  run = grid.Run("cot", 0, str(tmp_path), config)
  assert not any("rationale" in r for rows in report.read_predictions(run).values() for r in rows)
  before = (tmp_path / train.PREDICTIONS).read_text()
  config.eval.write_rationales = True  # a free key: the run's fingerprint does not change
  lines = []
  study_run.add_missing_rationales(run, lines.append)
  rows = [r for rows in report.read_predictions(run).values() for r in rows]
  assert len(rows) == 16 and all(isinstance(r["rationale"], str) for r in rows) and len(lines) == 1
  assert [{k: v for k, v in r.items() if k != "rationale"} for r in rows] == [json.loads(l) for l in before.splitlines()]
  study_run.add_missing_rationales(run, lines.append)  # once
  assert len(lines) == 1
