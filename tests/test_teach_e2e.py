"""`jaxdistill.teach` end to end: the API teacher against `jaxdistill.serve` (a tiny llama on 127.0.0.1)
killed mid-run and run twice at once on one cache, the API teacher against a fault-injecting server,
and the local JAX teacher's cached top-k logprobs against a fresh forward pass."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from jaxdistill import serve, teach
from jaxdistill.data.rationale_cache import RationaleCache
from tests import openai_fake
from tests import train_utils as tu
from tests.test_local_teacher import tiny_checkpoint  # pylint: disable=unused-import  (session fixture)
from tests.test_teach import _config

SECRET = "sk-test-DO-NOT-LEAK-7f3a9c"
EXAMPLES, SAMPLES = 24, 3


@pytest.fixture(scope="module")
def server(tiny_checkpoint):  # pylint: disable=redefined-outer-name
  # Each decode batch waits 150 ms for company, so a run of 24 requests, 2 at a time, lasts seconds
  # and a kill lands in its middle.
  url, stop = serve.start(tiny_checkpoint, max_batch=16, batch_wait_ms=150, name="tiny")
  yield url
  stop()


def _teach_command(cache: str, url: str) -> list[str]:
  overrides = {"teacher.kind": "api", "teacher.base_url": url, "teacher.model": "tiny",
               "teacher.endpoint": "completions", "teacher.prompt": "student", "teacher.samples": SAMPLES,
               "teacher.max_tokens": 12, "teacher.temperature": 1.0, "teacher.flush_rows": 3,
               "teacher.flush_seconds": 0.5, "teacher.max_concurrency": 2, "data.demo.num_train": EXAMPLES,
               "data.demo.num_dev": 4, "data.demo.num_test": 4, "data.cache_dir": cache}
  return ([sys.executable, "-m", "jaxdistill.teach", "--config=configs/teach.py"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def _env() -> dict:
  return tu.env(OPENAI_API_KEY=SECRET)


def _shard_keys(cache: str) -> list[tuple]:
  """Every rationale row on disk, duplicates included (readers would hide them)."""
  keys = []
  for path in glob.glob(os.path.join(cache, "rationales", "part-*.parquet")):
    t = pq.read_table(path, columns=["example_id", "teacher", "prompt_id", "sample_index"])
    keys += list(zip(*(t.column(c).to_pylist() for c in t.column_names)))
  return keys


def _assert_complete(cache: str) -> None:
  keys = _shard_keys(cache)
  assert len(keys) == len(set(keys)) == EXAMPLES * SAMPLES, (len(keys), len(set(keys)))
  assert {k[3] for k in keys} == set(range(SAMPLES))
  assert len({k[0] for k in keys}) == EXAMPLES


def _assert_no_secret(cache: str, *texts: str) -> None:
  for text in texts:
    assert SECRET not in text
  for path in glob.glob(os.path.join(cache, "**", "*"), recursive=True) + glob.glob(os.path.join(cache, ".*")):
    if os.path.isfile(path):
      assert SECRET.encode() not in open(path, "rb").read(), path


def test_killed_teach_rerun_fills_exactly_the_gaps(server, tmp_path):
  cache = str(tmp_path / "cache")
  command = _teach_command(cache, server)
  proc = subprocess.Popen(command, cwd=tu.REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not _shard_keys(cache) and time.time() < deadline:  # rows are being written: kill in the middle
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.05)
  proc.kill()
  out, err = proc.communicate()
  written = len(_shard_keys(cache))
  assert 0 < written < EXAMPLES * SAMPLES, written
  again = subprocess.run(command, cwd=tu.REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  _assert_complete(cache)
  assert f"{EXAMPLES * SAMPLES - written} new rows" in again.stdout
  assert "teacher accuracy:" in again.stdout
  _assert_no_secret(cache, out, err, again.stdout, again.stderr)


def test_two_teach_processes_on_one_cache_never_duplicate_or_lose_a_row(server, tmp_path):
  cache = str(tmp_path / "cache")
  procs = [subprocess.Popen(_teach_command(cache, server), cwd=tu.REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for _ in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  _assert_complete(cache)
  assert RationaleCache.open(cache).verify() == []


def test_faults_still_give_the_complete_cache_with_retries_counted(tmp_path, monkeypatch, caplog, capsys):
  monkeypatch.setenv("OPENAI_API_KEY", SECRET)
  caplog.set_level("DEBUG")
  with openai_fake.FakeOpenAI(retry_after="0.2", stall_s=3.0) as fake:
    fake.add_faults("", "429", "500", "stall", "truncated", "drop")  # the first five requests fail once each
    config = _config(tmp_path / "cache", base_url=fake.base_url, samples=2, timeout_s=1.0, max_concurrency=2)
    lines = []
    summary = teach.run(config, echo=lines.append)
    assert all(s.authorization == f"Bearer {SECRET}" for s in fake.posts())
  assert summary["retries"] >= 5 and summary["failures"] == 0 and summary["rows_written"] == 12 * 2
  assert any(f"{summary['retries']} retries" in line for line in lines)
  captured = capsys.readouterr()
  _assert_no_secret(str(tmp_path / "cache"), caplog.text, captured.out, captured.err, "\n".join(lines))


def test_local_teacher_rows_keep_top_logprobs_equal_to_a_fresh_forward_pass(tiny_checkpoint, tmp_path):  # pylint: disable=redefined-outer-name
  """What the cache holds (not only what the teacher returned) matches a fresh forward pass (1e-4)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxdistill.teachers import local  # pylint: disable=g-import-not-at-top
  config = _config(tmp_path / "cache", kind="local", checkpoint=tiny_checkpoint, prompt="student", samples=2,
                   max_tokens=10, temperature=1.0, top_logprobs=3)
  teacher = local.LocalTeacher(tiny_checkpoint, batch_size=8, name="tiny")
  teach.run(config, echo=lambda _: None, teacher=teacher)
  rows = RationaleCache.open(str(tmp_path / "cache")).rows()
  assert len(rows) == 12 * 2
  forward = nnx.jit(lambda m, x: jax.nn.log_softmax(m.forward(x)[0], axis=-1))
  for row in rows[:6]:
    prompt = teacher.encode_prompt(teach_prompt(row["example_id"], config))
    generated = list(row["token_ids"])
    t = len(generated)
    assert t and len(row["logprobs"]) == len(row["top_ids"]) == len(row["top_logprobs"]) == t
    steps = np.asarray(forward(teacher.model, jnp.asarray([prompt + generated])))[0][len(prompt) - 1:len(prompt) - 1 + t]
    np.testing.assert_allclose(row["logprobs"], steps[np.arange(t), generated], atol=1e-4, rtol=0)
    np.testing.assert_allclose(row["top_logprobs"], -np.sort(-steps, axis=-1)[:, :3], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.take_along_axis(steps, np.asarray(row["top_ids"]), -1), row["top_logprobs"],
                               atol=1e-4, rtol=0)


def teach_prompt(example_id: str, config) -> str:
  from jaxdistill.teachers import prompts  # pylint: disable=g-import-not-at-top
  dataset, _ = teach.load_examples(config)
  example = next(ex for exs in dataset.splits.values() for ex in exs if ex.id == example_id)
  return prompts.get_template(dataset.task, "student").render(example)
