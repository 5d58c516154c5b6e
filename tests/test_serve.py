"""jaxdistill.serve: the OpenAI-compatible server over the local teacher, driven with the `openai`
client (and raw HTTP for malformed requests) against an in-process server on 127.0.0.1, plus the
command line (`python -m jaxdistill.serve`) started and stopped with SIGTERM."""

import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import openai
import pytest

from jaxdistill import serve
from jaxdistill.teachers import local
from jaxdistill.teachers.base import Budget, Request, Sampling
from tests.test_local_teacher import tiny_checkpoint  # noqa: F401 (the shared checkpoint fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def teacher(tiny_checkpoint):  # noqa: F811
  return local.LocalTeacher(tiny_checkpoint, batch_size=8, name="tiny")


@pytest.fixture(scope="module")
def server(teacher):
  # A generous wait: the 8 concurrent requests of the batching test must meet in one window even
  # on a loaded machine (the default, 10 ms, is for production).
  url, stop = serve.start(teacher, max_batch=8, batch_wait_ms=150)
  yield url
  stop()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=server, api_key="unused", max_retries=0, timeout=120)


def post(url: str, path: str, body) -> tuple[int, dict]:
  data = body if isinstance(body, bytes) else json.dumps(body).encode()
  req = urllib.request.Request(url.removesuffix("/v1") + path, data=data,
                               headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(req, timeout=120) as r:
      return r.status, json.loads(r.read())
  except urllib.error.HTTPError as e:
    return e.code, json.loads(e.read())


def get(url: str, path: str) -> dict:
  with urllib.request.urlopen(url.removesuffix("/v1") + path, timeout=60) as r:
    return json.loads(r.read())


def teacher_texts(teacher, prompt, seed, n, **sampling) -> list[str]:
  [r] = teacher.generate([Request("x", prompt, tuple(range(n)), seed)],
                         Sampling(max_tokens=MAX_TOKENS, **sampling), Budget())
  return [c.text for c in r.completions]


def test_models(client):
  [model] = client.models.list().data
  assert (model.id, model.object, model.owned_by) == ("tiny", "model", "jaxdistill")


def test_completions_n_seed_and_usage(client, teacher):
  kw = dict(model="tiny", prompt="the black cat", max_tokens=MAX_TOKENS, n=3, temperature=1.0)
  out = client.completions.create(seed=5, **kw)
  assert out.object == "text_completion" and out.model == "tiny" and out.id.startswith("cmpl-")
  assert [c.index for c in out.choices] == [0, 1, 2]
  got = [c.text for c in out.choices]
  assert len(set(got)) == 3 and all(c.logprobs is None for c in out.choices)
  # Choice i is sample i of the seed: what the teacher writes for (seed 5, sample i).
  assert got == teacher_texts(teacher, "the black cat", 5, 3, temperature=1.0)
  assert [c.text for c in client.completions.create(seed=5, **kw).choices] == got
  assert [c.text for c in client.completions.create(**kw).choices] != got  # no seed: one is drawn
  usage = out.usage
  assert usage.prompt_tokens == len(teacher.encode_prompt("the black cat"))
  full = sum(c.finish_reason == "length" for c in out.choices)
  assert full * MAX_TOKENS <= usage.completion_tokens <= 3 * MAX_TOKENS
  assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
  # Several prompts: choices are prompt-major.
  two = client.completions.create(model="tiny", prompt=["the black cat", "number 7"], n=2, seed=5,
                                  max_tokens=MAX_TOKENS, temperature=1.0)
  assert [c.index for c in two.choices] == [0, 1, 2, 3] and [c.text for c in two.choices[:2]] == got[:2]


def test_completion_logprobs_and_stop(client, teacher):
  out = client.completions.create(model="tiny", prompt="number 7", max_tokens=MAX_TOKENS,
                                  temperature=0, logprobs=2)
  [choice] = out.choices
  lp = choice.logprobs
  assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
  assert "".join(lp.tokens).startswith(choice.text) and lp.text_offset[0] == 0
  assert all(1 <= len(top) <= 2 and max(top.values()) >= chosen - 1e-6  # greedy: chosen is the top
             for top, chosen in zip(lp.top_logprobs, lp.token_logprobs))
  stop = choice.text[3:5]
  cut = client.completions.create(model="tiny", prompt="number 7", max_tokens=MAX_TOKENS,
                                  temperature=0, stop=[stop]).choices[0]
  assert (cut.text, cut.finish_reason) == (choice.text[:choice.text.find(stop)], "stop")


def test_chat_completions(client, teacher):
  messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "the cat"}]
  out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX_TOKENS, n=2,
                                       seed=3, temperature=1.0, logprobs=True, top_logprobs=3)
  assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
  assert [c.index for c in out.choices] == [0, 1]
  assert [c.message.role for c in out.choices] == ["assistant"] * 2
  assert [c.message.content for c in out.choices] == teacher_texts(
      teacher, tuple(messages), 3, 2, temperature=1.0)
  assert out.usage.prompt_tokens == len(teacher.encode_prompt(tuple(messages)))
  for c in out.choices:
    content = c.logprobs.content
    assert content and all(len(t.top_logprobs) == 3 for t in content)
    assert all(t.bytes == list(t.token.encode()) for t in content)
    assert all(t.logprob <= 0 and t.top_logprobs[0].logprob >= t.top_logprobs[2].logprob for t in content)
  plain = client.chat.completions.create(model="tiny", messages=messages, max_tokens=MAX_TOKENS)
  assert plain.choices[0].logprobs is None and plain.usage.completion_tokens <= MAX_TOKENS


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    (b"[1, 2]", 400, None),
    ({"model": "tiny"}, 400, "prompt"),
    ({"model": "tiny", "prompt": [1, 2]}, 400, "prompt"),
    ({"model": "tiny", "prompt": "hi", "n": 0}, 400, "n"),
    ({"model": "tiny", "prompt": "hi", "n": True}, 400, "n"),
    ({"model": "tiny", "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"model": "tiny", "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "stop": 3}, 400, "stop"),
    ({"model": "tiny", "prompt": "hi", "logprobs": 21}, 400, "logprobs"),
    ({"model": "tiny", "prompt": "hi", "stream": True}, 400, "stream"),
    ({"model": "tiny", "prompt": ""}, 400, "prompt"),
    ({"model": "tiny", "prompt": "the cat " * 200}, 400, "prompt"),
    ({"prompt": "hi"}, 400, "model"),
    ({"model": "gpt-4", "prompt": "hi"}, 404, "model"),
])
def test_completion_errors(server, body, status, param):
  code, out = post(server, "/v1/completions", body)
  assert code == status and out["error"]["param"] == param, out
  assert out["error"]["message"] and out["error"]["type"] == "invalid_request_error"


def test_chat_errors_and_routes(server, client):
  for body, param in [({"model": "tiny"}, "messages"),
                      ({"model": "tiny", "messages": [{"content": "x"}]}, "messages[0]"),
                      ({"model": "tiny", "messages": [{"role": "user", "content": 1}]}, "messages[0].content"),
                      ({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
                       "top_logprobs")]:
    code, out = post(server, "/v1/chat/completions", body)
    assert (code, out["error"]["param"]) == (400, param), out
  assert post(server, "/v1/nothing", {})[0] == 404
  with pytest.raises(openai.BadRequestError, match="'n' must be in"):
    client.completions.create(model="tiny", prompt="hi", n=0)


def test_concurrent_requests_are_batched(server, client):
  """8 concurrent clients are decoded in fewer batches than requests, each getting what it gets
  alone (its seed's sample 0)."""
  before = get(server, "/stats")
  barrier, results = threading.Barrier(8), {}

  def ask(i):
    barrier.wait()
    out = client.completions.create(model="tiny", prompt=f"number {i}", max_tokens=MAX_TOKENS,
                                    temperature=1.0, seed=100 + i)
    results[i] = out.choices[0].text

  threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  after = get(server, "/stats")
  assert after["requests"] - before["requests"] == 8 and after["rows"] - before["rows"] == 8
  assert after["batches"] - before["batches"] < 8
  alone = client.completions.create(model="tiny", prompt="number 3", max_tokens=MAX_TOKENS,
                                    temperature=1.0, seed=103)
  assert alone.choices[0].text == results[3]


def test_command_line_serves_and_stops_on_sigterm(tiny_checkpoint):  # noqa: F811
  proc = subprocess.Popen([sys.executable, "-m", "jaxdistill.serve", f"--checkpoint={tiny_checkpoint}",
                           "--port=0", "--name=cli"], cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    line = ""
    while "serving" not in line:
      line = proc.stdout.readline()
      assert line or proc.poll() is None, "serve exited before serving"
    url = line.split(" on ")[1].split()[0]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    assert get(url, "/v1/models")["data"][0]["id"] == "cli"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert "stopped" in proc.stdout.read()
  finally:
    if proc.poll() is None:
      proc.kill()
