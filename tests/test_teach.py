"""`jaxdistill.teach` with a scripted in-process teacher: rows, resume, failures, cost estimate and cap.
The API teacher against `jaxdistill.serve` and the local JAX teacher run in tests/test_teach_e2e.py."""

from __future__ import annotations

import json
import os
import sys

import pytest

from jaxdistill import teach
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.errors import ConfigError
from jaxdistill.teachers import base

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(cache_dir, **teacher):
  sys.path.insert(0, REPO)
  from configs import teach as teach_config  # pylint: disable=g-import-not-at-top
  config = teach_config.get_config()
  config.data.cache_dir = str(cache_dir)
  config.data.demo.update(num_train=12, num_dev=4, num_test=4)
  # The scripted teacher stands in for an API teacher (never contacted: it is passed to teach.run).
  config.teacher.update(kind="api", base_url="http://127.0.0.1:9/v1", model="scripted", prompt="generic")
  config.teacher.update(**teacher)
  return config


class ScriptedTeacher:
  """Answers "<id> sample <k> reasons. Answer: <gold label>" (a wrong label for sample 1), fails the
  requests of `fail` ids, and reserves each request's worst case from the budget like a real teacher."""

  def __init__(self, labels: dict[str, str], fail: set[str] = frozenset(), name: str = "scripted",
               usage_factor: int = 1):
    self.labels, self.fail, self.name, self.usage_factor = labels, set(fail), name, usage_factor
    self.asked: list[tuple[str, tuple[int, ...]]] = []

  def generate(self, requests, sampling, budget):
    for r in requests:
      reserved = budget.reserve(r.prompt_tokens, len(r.sample_indices) * sampling.max_tokens)
      if reserved is None:
        return
      self.asked.append((r.example_id, r.sample_indices))
      if r.example_id in self.fail:
        budget.settle(reserved, 0, 0)
        yield base.Response(r, [], retries=2, error="http_500: server error")
        continue
      completions = []
      for k in r.sample_indices:
        label = self.labels[r.example_id]
        answer = label if k != 1 else ("neutral" if label != "neutral" else "entailment")
        completions.append(base.Completion(k, f"{r.example_id} sample {k} reasons. Answer: {answer}",
                                           finish_reason="stop"))
      prompt_tokens = self.usage_factor * r.prompt_tokens
      cost = budget.settle(reserved, prompt_tokens, 10 * len(completions))
      yield base.Response(r, completions, prompt_tokens=prompt_tokens, completion_tokens=10 * len(completions),
                          cost_usd=cost)


def _labels(config):
  dataset, _ = teach.load_examples(config)
  return {ex.id: ex.label for exs in dataset.splits.values() for ex in exs}


def _rows(cache_dir):
  return RationaleCache.open(str(cache_dir)).rows()


def test_teach_writes_one_parsed_row_per_example_and_sample(tmp_path):
  config = _config(tmp_path / "cache", samples=3)
  teacher = ScriptedTeacher(_labels(config))
  lines = []
  summary = teach.run(config, echo=lines.append, teacher=teacher)
  rows = _rows(tmp_path / "cache")
  keys = {(r["example_id"], r["sample_index"]) for r in rows}
  assert len(rows) == len(keys) == 12 * 3
  assert {r["teacher"] for r in rows} == {"scripted"} and len({r["prompt_id"] for r in rows}) == 1
  for r in rows:
    assert r["teacher_correct"] == (r["sample_index"] != 1)
    assert r["rationale"] == f"{r['example_id']} sample {r['sample_index']} reasons."
    assert json.loads(r["sampling"])["max_tokens"] == config.teacher.max_tokens
  assert summary["splits"]["train"]["teacher_accuracy"] == pytest.approx(2 / 3)
  assert "teacher accuracy: 0.6667 (24/36)" in lines
  assert summary["rows_written"] == 36 and summary["failures"] == 0
  # Training reads the examples and the teacher's rationales from the cache.
  from jaxdistill.data import sources  # pylint: disable=g-import-not-at-top
  dataset = sources.load_dataset(config.data)
  assert all(len(dataset.rationales[ex.id]) == 3 for ex in dataset.splits["train"])


def test_a_rerun_asks_only_for_missing_samples(tmp_path):
  config = _config(tmp_path / "cache", samples=2)
  labels = _labels(config)
  teach.run(config, echo=lambda _: None, teacher=ScriptedTeacher(labels))
  cache = RationaleCache.open(str(tmp_path / "cache"))
  assert len(cache.rows()) == 24
  config.teacher.samples = 3  # one more sample each: only sample 2 is asked for
  again = ScriptedTeacher(labels)
  teach.run(config, echo=lambda _: None, teacher=again)
  assert {s for _, s in again.asked} == {(2,)}
  assert len(_rows(tmp_path / "cache")) == 36
  nothing = ScriptedTeacher(labels)
  teach.run(config, echo=lambda _: None, teacher=nothing)
  assert nothing.asked == []


def test_failed_requests_are_listed_and_retried_by_the_next_run(tmp_path):
  config = _config(tmp_path / "cache", samples=2)
  labels = _labels(config)
  broken = [i for i in sorted(labels) if i.startswith("demo-train")][:2]
  lines = []
  summary = teach.run(config, echo=lines.append, teacher=ScriptedTeacher(labels, fail=set(broken)))
  assert summary["failures"] == 2 and summary["missing_samples"] == 4 and summary["failed_requests"] == 2
  assert any("2 failed (http_500=2)" in line for line in lines)
  failed = [json.loads(line) for line in open(tmp_path / "cache" / teach.FAILED)]
  assert sorted(e["example_id"] for e in failed) == broken and failed[0]["retries"] == 2
  healed = ScriptedTeacher(labels)
  lines = []
  teach.run(config, echo=lines.append, teacher=healed)
  assert lines[0].startswith("retrying 2 request(s)")
  assert sorted(i for i, _ in healed.asked) == broken
  assert len(_rows(tmp_path / "cache")) == 24
  assert open(tmp_path / "cache" / teach.FAILED).read() == ""


def test_the_estimate_refuses_a_run_above_the_cap(tmp_path):
  config = _config(tmp_path / "cache", samples=2, max_tokens=100, max_cost_usd=0.01, price_out_per_mtok=10.0)
  with pytest.raises(ConfigError, match=r"estimated cost \$0.0240 is above config.teacher.max_cost_usd=0.01"):
    teach.run(config, echo=lambda _: None, teacher=ScriptedTeacher(_labels(config)))


def test_the_cap_stops_a_running_job_and_keeps_every_finished_row(tmp_path):
  """The server bills 10x the prompt tokens the estimate counted (a chat template, another tokenizer):
  the estimate passes a cap of twice itself, the real spend reaches it mid-run."""
  config = _config(tmp_path / "cache", samples=2, price_in_per_mtok=1000.0, dry_run=True)
  planned = teach.run(config, echo=lambda _: None, teacher=ScriptedTeacher({}))["estimate"]
  config.teacher.update(dry_run=False, max_cost_usd=2 * planned["cost_usd"])
  labels = _labels(config)
  lines = []
  summary = teach.run(config, echo=lines.append, teacher=ScriptedTeacher(labels, usage_factor=10))
  assert summary["cap_reached"] and 0 < summary["rows_written"] < 24
  rows = _rows(tmp_path / "cache")
  assert len(rows) == summary["rows_written"] == 2 * summary["requests"]
  assert any(line.startswith("cost cap reached") for line in lines)
  config.teacher.max_cost_usd = 0.0  # no cap: the rerun fills exactly the rest
  teach.run(config, echo=lambda _: None, teacher=ScriptedTeacher(labels))
  assert len({(r["example_id"], r["sample_index"]) for r in _rows(tmp_path / "cache")}) == 24


def test_config_errors_name_the_key(tmp_path):
  with pytest.raises(ConfigError, match="config.teacher.kind='gpu'"):
    teach.validate(_config(tmp_path / "c", kind="gpu"))
  with pytest.raises(ConfigError, match="needs config.teacher.base_url"):
    teach.validate(_config(tmp_path / "c", kind="api", base_url=""))
  with pytest.raises(ConfigError, match="config.teacher.splits"):
    teach.validate(_config(tmp_path / "c", splits="train,valid"))
  with pytest.raises(ConfigError, match="needs config.teacher.checkpoint"):
    teach.validate(_config(tmp_path / "c", kind="local"))
