"""`python -m jaxdistill.teach --config=configs/teach.py`: fill a rationale cache from a teacher.

The data keys are training's (`config.data.*`), and the cache is `config.data.cache_dir`, the key the
trainer reads, so `teach` then `main` with the same data flags trains on what the teacher wrote.

    data -> examples of `teacher.splits` -> prompts (teachers/prompts.py) -> teacher (API or local JAX)
         -> parsed rationale + answer (teachers/parsers.py) -> cache rows (v1 contract + provenance)

Resumable at row granularity: a row is keyed by (example_id, teacher, prompt_id, sample_index); a run
asks the teacher only for the samples missing from the cache, so after `kill -9` at any moment the
same command fills the gaps, and two processes on one cache never duplicate a row (the cache writes
only new keys, under its lock). Rows are written in shards of `teacher.flush_rows` (and at least every
`teacher.flush_seconds`). A request that fails after its retries is listed in `failed.jsonl` in the
cache and asked for again by the next run. Before the first request the run estimates tokens and cost
and refuses above `teacher.max_cost_usd`; during the run the cap stops sending and keeps every row.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from typing import Any, Callable, Sequence

import ml_collections
from absl import app, logging
from etils import epath
from ml_collections import config_flags

from jaxdistill import config as config_lib
from jaxdistill import files, runtime
from jaxdistill.data import sources
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.data.examples import Example
from jaxdistill.errors import ConfigError
from jaxdistill.teachers import base, parsers, prompts

FAILED = "failed.jsonl"
KINDS = ("api", "local")
ENDPOINTS = ("chat", "completions")


# --------------------------------------------------------------------------- config

def sampling_of(teacher: ml_collections.ConfigDict) -> base.Sampling:
  return base.Sampling(temperature=float(teacher.temperature), top_p=float(teacher.top_p), top_k=int(teacher.top_k),
                       max_tokens=int(teacher.max_tokens), top_logprobs=int(teacher.top_logprobs),
                       stop=tuple(teacher.stop))


def validate(config: ml_collections.ConfigDict) -> None:
  config_lib.validate(config)  # the data keys, as training checks them
  t = config.teacher
  if t.kind not in KINDS:
    raise ConfigError(f"config.teacher.kind={t.kind!r}: expected one of {', '.join(KINDS)}")
  if t.kind == "api" and not (t.base_url and t.model):
    raise ConfigError("config.teacher.kind='api' needs config.teacher.base_url and config.teacher.model")
  if t.kind == "api" and t.endpoint not in ENDPOINTS:
    raise ConfigError(f"config.teacher.endpoint={t.endpoint!r}: expected one of {', '.join(ENDPOINTS)}")
  if t.kind == "local" and not t.checkpoint:
    raise ConfigError("config.teacher.kind='local' needs config.teacher.checkpoint (a Hugging Face directory)")
  if not config.data.cache_dir:
    raise ConfigError("config.data.cache_dir is empty: it names the cache the teacher writes (and training reads)")
  for key in ("samples", "max_tokens", "flush_rows"):
    if int(t[key]) < 1:
      raise ConfigError(f"config.teacher.{key}={t[key]!r}: must be >= 1")
  if float(t.temperature) < 0 or not 0 < float(t.top_p) <= 1 or int(t.top_logprobs) < 0:
    raise ConfigError("config.teacher: temperature >= 0, 0 < top_p <= 1 and top_logprobs >= 0 are required")
  unknown = set(splits_of(t)) - {"train", "dev", "test"}
  if unknown:
    raise ConfigError(f"config.teacher.splits={t.splits!r}: unknown split(s) {sorted(unknown)} (train, dev, test)")


def splits_of(teacher: ml_collections.ConfigDict) -> list[str]:
  return [s.strip() for s in str(teacher.splits).split(",") if s.strip()]


def make_teacher(teacher: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> base.Teacher:
  if teacher.kind == "api":
    from jaxdistill.teachers import api  # pylint: disable=g-import-not-at-top
    return api.ApiTeacher(
        base_url=teacher.base_url, model=teacher.model, endpoint=teacher.endpoint, api_key_env=teacher.api_key_env,
        max_concurrency=int(teacher.max_concurrency), requests_per_minute=int(teacher.requests_per_minute),
        tokens_per_minute=int(teacher.tokens_per_minute), timeout_s=float(teacher.timeout_s),
        max_retries=int(teacher.max_retries), name=teacher.name or None)
  from jaxdistill import partitioning  # pylint: disable=g-import-not-at-top
  from jaxdistill.teachers import local  # pylint: disable=g-import-not-at-top
  return local.LocalTeacher(teacher.checkpoint, mesh=partitioning.make_mesh(config.mesh),
                            rules=config.logical_axis_rules, batch_size=int(teacher.batch_size),
                            name=teacher.name or None)


# --------------------------------------------------------------------------- requests

def load_examples(config: ml_collections.ConfigDict) -> tuple[sources.Dataset, list[Example]]:
  """The dataset as training loads it from the source (never from the cache being written), and the
  examples of the splits to teach."""
  data = config.copy_and_resolve_references().data
  data.cache_dir = ""
  dataset = sources.load_dataset(data)
  wanted = splits_of(config.teacher)
  missing = [s for s in wanted if not dataset.splits.get(s)]
  if missing:
    raise ConfigError(f"config.teacher.splits: the data has no {', '.join(missing)} examples")
  return dataset, [ex for s in wanted for ex in dataset.splits[s]]


def token_counter(config: ml_collections.ConfigDict, teacher: base.Teacher) -> tuple[Callable[[Any], int], str]:
  """(prompt -> token count, what counts): the teacher's own tokenizer when it has one, else
  config.teacher.tokenizer, else 4 characters a token (said in the estimate)."""
  count = getattr(teacher, "count_tokens", None)
  if count is not None:
    return count, "the teacher's tokenizer"
  if config.teacher.tokenizer:
    from jaxdistill.data import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
    tok = tokenizer_lib.load_tokenizer(config.teacher.tokenizer)
    return lambda prompt: len(tok._encode(_prompt_text(prompt))), config.teacher.tokenizer  # pylint: disable=protected-access
  return lambda prompt: math.ceil(len(_prompt_text(prompt)) / 4), "4 characters a token (set teacher.tokenizer)"


def _prompt_text(prompt) -> str:
  return prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)


def build_requests(examples: Sequence[Example], template: prompts.Template, chat: bool, samples: int,
                   have: set[tuple], teacher_name: str, prompt_id: str, seed: int,
                   count_tokens: Callable[[Any], int]) -> list[base.Request]:
  """One request per example that misses samples in the cache (`have`: its rationale keys)."""
  requests = []
  for ex in examples:
    missing = tuple(k for k in range(samples) if (ex.id, teacher_name, prompt_id, k) not in have)
    if missing:
      prompt = template.messages(ex) if chat else template.render(ex)
      requests.append(base.Request(ex.id, prompt, missing, base.example_seed(ex.id, seed), count_tokens(prompt)))
  return requests


@dataclasses.dataclass
class Estimate:
  requests: int
  samples: int
  prompt_tokens: int
  completion_tokens: int
  cost_usd: float

  def line(self, counted_by: str) -> str:
    return (f"estimate: {self.requests} requests, {self.samples} samples, {self.prompt_tokens} prompt tokens "
            f"(counted by {counted_by}) + at most {self.completion_tokens} completion tokens = at most "
            f"${self.cost_usd:.4f}")


def estimate(requests: Sequence[base.Request], sampling: base.Sampling, budget: base.Budget) -> Estimate:
  """Worst case: every sample runs to max_tokens; each request's prompt is billed once per sample (a
  server that does not take `n` gets one request per sample)."""
  samples = sum(len(r.sample_indices) for r in requests)
  prompt_tokens = sum(r.prompt_tokens * len(r.sample_indices) for r in requests)
  completion_tokens = samples * sampling.max_tokens
  return Estimate(len(requests), samples, prompt_tokens, completion_tokens, budget.cost(prompt_tokens, completion_tokens))


# --------------------------------------------------------------------------- rows

def cache_rows(response: base.Response, example: Example, task: str, teacher_name: str, prompt_id: str,
               sampling: base.Sampling, model: str, labels: Sequence[str] | None = None) -> list[dict]:
  """Cache rows of one response: the v1 columns plus provenance and, when kept, token logprobs.
  Usage and cost are the request's, split evenly over its samples."""
  n = max(len(response.completions), 1)
  created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  rows = []
  for c in response.completions:
    parsed = parsers.parse(task, c.text, example, reasoning=c.reasoning, labels=labels)
    row = {"example_id": example.id, "teacher": teacher_name, "prompt_id": prompt_id,
           "sample_index": int(c.sample_index), "rationale": parsed.rationale,
           "teacher_answer": parsed.teacher_answer, "teacher_correct": parsed.teacher_correct, "raw": c.text,
           "reasoning": c.reasoning, "finish_reason": c.finish_reason, "model": model,
           "sampling": json.dumps(sampling.as_dict(), sort_keys=True), "seed": float(response.request.seed),
           "prompt_tokens": float(response.prompt_tokens), "completion_tokens": response.completion_tokens / n,
           "cost_usd": response.cost_usd / n, "created": created}
    if sampling.top_logprobs:
      row.update(token_ids=c.token_ids, tokens=c.tokens, logprobs=c.logprobs, top_ids=c.top_ids,
                 top_tokens=c.top_tokens, top_logprobs=c.top_logprobs)
    rows.append(row)
  return rows


class FailedLog:
  """`failed.jsonl` in the cache: requests that still failed after their retries. Appended as they
  fail; rewritten at the end of a run without those whose rows now exist."""

  def __init__(self, cache_path: str):
    self.path = os.path.join(cache_path, FAILED)

  def read(self) -> list[dict]:
    if not epath.Path(self.path).exists():
      return []
    lines = epath.Path(self.path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]

  def add(self, response: base.Response, teacher_name: str, prompt_id: str) -> None:
    entry = {"example_id": response.request.example_id, "teacher": teacher_name, "prompt_id": prompt_id,
             "sample_indices": list(response.request.sample_indices), "error": response.error,
             "retries": response.retries, "time": datetime.datetime.now(datetime.timezone.utc).isoformat()}
    if files.is_remote(self.path):  # objects cannot be appended to: rewritten whole (failures are few)
      files.atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in self.read() + [entry]))
      return
    with open(self.path, "a", encoding="utf-8") as f:  # one short O_APPEND write per entry
      f.write(json.dumps(entry) + "\n")

  def prune(self, have: set[tuple]) -> int:
    """Drops the entries whose samples are all in the cache now; returns how many remain."""
    keep = [e for e in self.read() if any((e["example_id"], e["teacher"], e["prompt_id"], k) not in have
                                          for k in e["sample_indices"])]
    if keep or epath.Path(self.path).exists():
      files.atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in keep))
    return len(keep)


# --------------------------------------------------------------------------- the run

@dataclasses.dataclass
class Tally:
  responses: int = 0
  samples: int = 0
  rows_written: int = 0
  failures: int = 0
  retries: int = 0
  prompt_tokens: int = 0
  completion_tokens: int = 0
  errors: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class Progress:
  """One status line on stderr: done/total samples, rate, ETA, tokens, spend (every ~2 s)."""

  def __init__(self, total: int, budget: base.Budget, stream=sys.stderr):
    self.total, self.budget, self.stream = total, budget, stream
    self.start = self.last = time.perf_counter()

  def show(self, tally: Tally, final: bool = False) -> None:
    now = time.perf_counter()
    if not final and now - self.last < 2.0:
      return
    self.last = now
    rate = tally.samples / max(now - self.start, 1e-9)
    eta = (self.total - tally.samples) / rate if rate > 0 else math.inf
    cap = f" of ${self.budget.max_usd:.2f}" if self.budget.max_usd > 0 else ""
    # On a terminal the line is redrawn in place; in a log file each update is a line of its own.
    ending = "\n" if final or not self.stream.isatty() else ""
    print(f"{'' if ending else chr(13)}[teach] {tally.samples}/{self.total} samples, {rate:.2f}/s, ETA "
          f"{'-' if math.isinf(eta) else f'{eta:.0f}s'}, tokens {tally.prompt_tokens}+{tally.completion_tokens}, "
          f"${self.budget.spent:.4f}{cap}, failed {tally.failures}", end=ending, file=self.stream,
          flush=True)


def run(config: ml_collections.ConfigDict, echo: Callable[[str], None] = print,
        teacher: base.Teacher | None = None) -> dict:
  """Fills config.data.cache_dir; returns the closing summary. `teacher` replaces the configured one
  (tests)."""
  validate(config)
  t = config.teacher
  dataset, examples = load_examples(config)
  sampling = sampling_of(t)
  template = prompts.get_template(dataset.task, t.prompt, labels=dataset.labels)
  teacher = teacher or make_teacher(t, config)
  # Chat messages for chat endpoints and for a local teacher (its chat template, if any); the student
  # template is the raw text a jaxdistill student continues.
  chat = (t.kind == "api" and t.endpoint == "chat") or (t.kind == "local" and t.prompt != "student")
  endpoint = "chat" if chat else "completions"
  prompt_id = prompts.prompt_id(template, sampling, endpoint)
  cache = RationaleCache.create(config.data.cache_dir, source={"kind": "teacher", "task": dataset.task})
  cache.write_examples([ex for exs in dataset.splits.values() for ex in exs])  # training reads them here
  cache.update_source({"teachers": {f"{teacher.name}/{prompt_id}": {
      "kind": t.kind, "model": t.model if t.kind == "api" else t.checkpoint, "prompt": t.prompt,
      "template": template.name, "endpoint": endpoint, "sampling": sampling.as_dict(),
      "samples": int(t.samples), "splits": splits_of(t),
      # Cached token ids mean something only under this vocabulary (methods/kd.py checks it).
      **({"tokenizer": teacher.tokenizer.fingerprint()} if hasattr(teacher, "tokenizer") else {})}}})
  failed = FailedLog(cache.path)
  have = cache.keys()
  before = failed.prune(have)
  if before:
    echo(f"retrying {before} request(s) that failed in an earlier run (see {failed.path})")
  count_tokens, counted_by = token_counter(config, teacher)
  requests = build_requests(examples, template, chat, int(t.samples), have, teacher.name, prompt_id,
                            int(t.seed), count_tokens)
  budget = base.Budget(float(t.max_cost_usd), float(t.price_in_per_mtok), float(t.price_out_per_mtok))
  est = estimate(requests, sampling, budget)
  echo(est.line(counted_by))
  if budget.max_usd > 0 and est.cost_usd > budget.max_usd:
    raise ConfigError(f"the estimated cost ${est.cost_usd:.4f} is above config.teacher.max_cost_usd="
                      f"{budget.max_usd}; raise it, or teach fewer examples / samples / max_tokens")
  if t.dry_run:
    return {"estimate": dataclasses.asdict(est), "prompt_id": prompt_id, "cache": cache.path}
  tally = _generate(teacher, requests, sampling, budget, cache, failed, dataset, prompt_id,
                    t.model if t.kind == "api" else t.checkpoint, int(t.flush_rows), float(t.flush_seconds))
  have = cache.keys()
  still_failed = failed.prune(have)
  missing = sum(len(r.sample_indices) for r in requests) - tally.rows_written
  summary = summarize(cache, dataset, examples, teacher, prompt_id, tally, budget, stats=getattr(teacher, "stats", None))
  summary.update(missing_samples=missing, failed_requests=still_failed, cap_reached=budget.exhausted,
                 prompt_id=prompt_id, cache=cache.path)
  for line in summary_lines(summary):
    echo(line)
  if budget.exhausted:
    echo(f"cost cap reached (${budget.spent:.4f} of ${budget.max_usd:.2f}): {missing} samples not generated, "
         "every finished row is kept; rerun with a higher config.teacher.max_cost_usd to fill them")
  elif missing:
    echo(f"{missing} samples missing ({still_failed} failed requests in {failed.path}); rerun the same command "
         "to retry them")
  return summary


def _generate(teacher, requests, sampling, budget, cache, failed, dataset, prompt_id, model, flush_rows,
              flush_seconds) -> Tally:
  by_id = {ex.id: ex for exs in dataset.splits.values() for ex in exs}
  tally, pending, last_flush = Tally(), [], time.perf_counter()
  progress = Progress(sum(len(r.sample_indices) for r in requests), budget)

  def flush():
    nonlocal pending, last_flush
    if pending:
      tally.rows_written += cache.write_rationales(pending)
    pending, last_flush = [], time.perf_counter()

  for response in teacher.generate(requests, sampling, budget):
    tally.responses += 1
    tally.retries += response.retries
    tally.prompt_tokens += response.prompt_tokens
    tally.completion_tokens += response.completion_tokens
    if response.error:
      tally.failures += 1
      tally.errors[response.error.split(":")[0]] += 1
      failed.add(response, teacher.name, prompt_id)
    else:
      tally.samples += len(response.completions)
      pending += cache_rows(response, by_id[response.request.example_id], dataset.task, teacher.name, prompt_id,
                            sampling, model, dataset.labels)
    if len(pending) >= flush_rows or time.perf_counter() - last_flush >= flush_seconds:
      flush()
    progress.show(tally)
  flush()
  progress.show(tally, final=True)
  return tally


def summarize(cache: RationaleCache, dataset: sources.Dataset, examples: Sequence[Example], teacher, prompt_id: str,
              tally: Tally, budget: base.Budget, stats: dict | None = None) -> dict:
  """The import-dss summary per split (over every row of this teacher and prompt, not only this
  run's), plus this run's requests, retries, failures, tokens and cost."""
  ids = {ex.id for ex in examples}
  rows = [r for r in cache.rows(teacher=teacher.name, prompt_id=prompt_id) if r["example_id"] in ids]
  split_of = {ex.id: split for split, exs in dataset.splits.items() for ex in exs}
  splits = {}
  for split in sorted({split_of[i] for i in ids}):
    mine = [r for r in rows if split_of[r["example_id"]] == split]
    correct = sum(bool(r["teacher_correct"]) for r in mine)
    words = [len((r["rationale"] or "").split()) for r in mine]
    splits[split] = {"examples": sum(split_of[i] == split for i in ids), "rationales": len(mine),
                     "correct": correct, "unparsed": sum(not r["teacher_answer"] for r in mine),
                     "teacher_accuracy": correct / len(mine) if mine else None,
                     "mean_rationale_words": sum(words) / len(words) if words else None}
  return {"task": dataset.task, "teacher": teacher.name, "splits": splits, "requests": tally.responses,
          "rows_written": tally.rows_written, "retries": tally.retries, "failures": tally.failures,
          "errors": dict(tally.errors), "prompt_tokens": tally.prompt_tokens,
          "completion_tokens": tally.completion_tokens, "cost_usd": budget.spent, "teacher_stats": stats or {}}


def summary_lines(s: dict) -> list[str]:
  lines = []
  for split, v in s["splits"].items():
    lines.append(f"{s['task']}/{split}: examples {v['examples']}, rationales {v['rationales']}, "
                 f"unparsed {v['unparsed']}")
    if v["rationales"]:
      lines.append(f"mean rationale words: {v['mean_rationale_words']:.2f}")
      lines.append(f"teacher accuracy: {v['teacher_accuracy']:.4f} ({v['correct']}/{v['rationales']})")
  errors = ", ".join(f"{k}={v}" for k, v in sorted(s["errors"].items())) or "none"
  lines.append(f"this run: {s['requests']} requests, {s['rows_written']} new rows, {s['retries']} retries, "
               f"{s['failures']} failed ({errors}), tokens {s['prompt_tokens']} in + {s['completion_tokens']} out, "
               f"cost ${s['cost_usd']:.4f}")
  lines.append(f"cache {s['cache']}: teacher {s['teacher']}, prompt {s['prompt_id']}")
  return lines


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.prepare_process()
  logging.set_verbosity(logging.WARNING)
  with runtime.refusals_as_exit():
    run(_CONFIG.value)


if __name__ == "__main__":
  _CONFIG = config_flags.DEFINE_config_file("config", "configs/teach.py", "Teacher config file (config.teacher).")
  app.run(main)
