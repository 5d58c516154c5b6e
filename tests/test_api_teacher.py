"""ApiTeacher against the fault-injecting OpenAI-compatible server in tests/openai_fake.py (127.0.0.1)."""

import email.utils
import gc
import json
import logging
import pickle
import threading
import time
import urllib.request
import warnings

import openai
import pytest

from jaxdistill.errors import ConfigError
from jaxdistill.teachers import api
from jaxdistill.teachers.api import ApiTeacher, sample_seed
from jaxdistill.teachers.base import Budget, Request, Sampling, example_seed
from tests.openai_fake import FakeOpenAI

FAKE_KEY = "sk-fake-LEAKCHECK-7f3a9c"
FAULT_REASONS = {"429": "rate_limit", "500": "http_500", "503": "http_503", "stall": "timeout",
                 "truncated": "malformed", "drop": "connection", "no_choices": "malformed"}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
  monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)


def make_requests(count, samples=(0, 1, 2), chat=True, prompt_tokens=10):
  """Example i's prompt contains the marker <ex-i>, which fault rules match."""
  def prompt(i):
    if not chat:
      return f"Explain the label of <ex-{i}>."
    return ({"role": "system", "content": "You explain labels."}, {"role": "user", "content": f"Explain <ex-{i}>."})
  return [Request(example_id=f"ex-{i}", prompt=prompt(i), sample_indices=tuple(samples),
                  seed=example_seed(f"ex-{i}"), prompt_tokens=prompt_tokens) for i in range(count)]


def make_teacher(server, **kwargs):
  kwargs = {"model": "fake-model", "backoff_base_s": 0.01, "timeout_s": 5.0, **kwargs}
  return ApiTeacher(base_url=server.base_url, **kwargs)


def run(teacher, requests, sampling=Sampling(max_tokens=32), budget=None):
  """Every Response by example id (and checks none comes twice)."""
  out = {}
  for response in teacher.generate(requests, sampling, budget or Budget()):
    assert response.request.example_id not in out
    out[response.request.example_id] = response
  return out


def assert_complete(response, samples=(0, 1, 2)):
  assert not response.error, response.error
  assert [c.sample_index for c in response.completions] == list(samples)
  assert all(c.text.endswith("Answer: neutral") and c.finish_reason == "stop" for c in response.completions)


# --------------------------------------------------------------------------- clean runs

@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_clean_run_gives_one_completion_per_sample_with_usage_and_cost(endpoint):
  budget = Budget(max_usd=0, price_in_per_mtok=2.0, price_out_per_mtok=8.0)
  requests = make_requests(5, chat=endpoint == "chat")
  # A resumed example asking for samples 2-3; a text prompt (the chat endpoint sends it as the user turn).
  requests.append(Request("resumed", "Explain <resumed>.", sample_indices=(2, 3), seed=7, prompt_tokens=3))
  sampling = Sampling(temperature=0.5, top_p=0.9, top_k=5, max_tokens=32, stop=("\n\n",))
  with FakeOpenAI() as server:
    teacher = make_teacher(server, endpoint=endpoint)
    responses = run(teacher, requests, sampling, budget)
    posts = server.posts()
  assert sorted(responses) == sorted(r.example_id for r in requests)
  for request in requests:
    response = responses[request.example_id]
    assert_complete(response, request.sample_indices)
    assert len({c.text for c in response.completions}) == len(request.sample_indices)
    assert response.prompt_tokens > 0 and response.completion_tokens > 0 and response.retries == 0
    assert response.cost_usd == pytest.approx(budget.cost(response.prompt_tokens, response.completion_tokens))
    assert response.completions[0].tokens is None  # no logprobs asked for
  assert budget.spent == pytest.approx(sum(r.cost_usd for r in responses.values()))
  assert budget.reserved == pytest.approx(0.0)
  # One request per example, with `n` and the sampling parameters.
  assert len(posts) == len(requests)
  assert {p.path for p in posts} == {"/v1/chat/completions" if endpoint == "chat" else "/v1/completions"}
  body = next(p.body for p in posts if "<ex-0>" in json.dumps(p.body))
  assert body["n"] == 3 and body["seed"] == sample_seed(requests[0].seed, 0)
  assert (body["temperature"], body["top_p"], body["max_tokens"], body["stop"], body["top_k"]) == (
      0.5, 0.9, 32, ["\n\n"], 5)
  assert "logprobs" not in body and body["model"] == "fake-model"
  resumed = next(p.body for p in posts if "<resumed>" in json.dumps(p.body))
  assert resumed["n"] == 2 and resumed["seed"] == sample_seed(7, 2)  # not a replay of samples 0-1
  stats = teacher.stats
  assert (stats["requests_sent"], stats["responses_ok"], stats["responses_failed"], stats["retries"]) == (6, 6, 0, 0)
  assert stats["completions"] == 17 and stats["cost_usd"] == pytest.approx(budget.spent)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_top_logprobs_are_parsed(endpoint):
  with FakeOpenAI() as server:
    responses = run(make_teacher(server, endpoint=endpoint), make_requests(2, chat=endpoint == "chat"),
                    Sampling(max_tokens=32, top_logprobs=3))
    body = server.posts()[0].body
  if endpoint == "chat":
    assert body["logprobs"] is True and body["top_logprobs"] == 3
  else:
    assert body["logprobs"] == 3
  for response in responses.values():
    assert_complete(response)
    for c in response.completions:
      assert "".join(c.tokens) == c.text
      assert len(c.logprobs) == len(c.top_tokens) == len(c.top_logprobs) == len(c.tokens)
      assert all(len(top) == 3 for top in c.top_tokens) and all(len(top) == 3 for top in c.top_logprobs)
      assert [top[0] for top in c.top_tokens] == c.tokens  # best first
      assert all(top == sorted(top, reverse=True) for top in c.top_logprobs)


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_chat_reasoning_field_goes_to_reasoning(field):
  with FakeOpenAI(reasoning_field=field) as server:
    response = run(make_teacher(server), make_requests(1))["ex-0"]
  assert_complete(response)
  assert [c.reasoning for c in response.completions] == [f"thinking about choice {i}" for i in range(3)]


def test_think_block_stays_in_the_text():
  choice = openai.types.chat.chat_completion.Choice.model_validate(
      {"index": 0, "finish_reason": "length", "message": {"role": "assistant", "content": "<think>hm</think> yes"}})
  completion = api.chat_completion(choice, 4)
  assert (completion.sample_index, completion.text, completion.reasoning, completion.finish_reason) == (
      4, "<think>hm</think> yes", "", "length")


# --------------------------------------------------------------------------- n per request

@pytest.mark.parametrize("n_mode, posts_expected", [("reject", 1 + 3 * 4), ("ignore", 1 + 2 + 3 * 3)])
def test_falls_back_to_single_requests_when_the_server_does_not_honour_n(n_mode, posts_expected):
  requests = make_requests(4)
  with FakeOpenAI(n_mode=n_mode) as server:
    teacher = make_teacher(server, max_concurrency=1)  # one at a time: the first teaches the rest
    responses = run(teacher, requests)
    posts = server.posts()
  for response in responses.values():
    assert_complete(response)
  assert len(posts) == posts_expected
  assert posts[0].body["n"] == 3 and all("n" not in p.body for p in posts[1:])
  singles = [p.body["seed"] for p in posts[1:] if "<ex-3>" in json.dumps(p.body)]
  assert singles == [sample_seed(requests[3].seed, k) for k in range(3)]
  assert teacher.stats["n_fallbacks"] == 1 and teacher.stats["retries"] == 0


def test_n_per_request_false_sends_single_requests():
  with FakeOpenAI() as server:
    responses = run(make_teacher(server, n_per_request=False), make_requests(2))
    posts = server.posts()
  assert all(not r.error for r in responses.values())
  assert len(posts) == 6 and all("n" not in p.body for p in posts)


def test_n_per_request_true_fails_when_the_server_rejects_n():
  with FakeOpenAI(n_mode="reject") as server:
    response = run(make_teacher(server, n_per_request=True), make_requests(1))["ex-0"]
  assert response.error.startswith("http_400:") and response.completions == []


# --------------------------------------------------------------------------- faults and retries

@pytest.mark.parametrize("fault", sorted(FAULT_REASONS))
def test_each_fault_is_retried_and_counted(fault):
  with FakeOpenAI(retry_after="0", stall_s=3.0) as server:
    server.add_faults("<ex-1>", fault)
    teacher = make_teacher(server, timeout_s=1.0)  # the stall outlasts it; a loaded machine does not
    responses = run(teacher, make_requests(3))
    posts = server.posts()
  for response in responses.values():
    assert_complete(response)
  assert responses["ex-1"].retries == 1 and responses["ex-0"].retries == 0
  assert len(posts) == 4 and [p.fault for p in posts].count(fault) == 1
  stats = teacher.stats
  assert stats["retries"] == 1 and stats["retries_by_reason"] == {FAULT_REASONS[fault]: 1}
  assert stats["requests_sent"] == 4 and stats["responses_failed"] == 0


def test_many_faults_in_a_row_on_the_completions_endpoint():
  faults = ["429", "500", "truncated", "drop", "no_choices", "503"]
  with FakeOpenAI(retry_after="0") as server:
    server.add_faults("<ex-0>", *faults)
    teacher = make_teacher(server, endpoint="completions", max_retries=len(faults))
    response = run(teacher, make_requests(1, chat=False))["ex-0"]
  assert_complete(response)
  assert response.retries == len(faults) == teacher.stats["retries"]


def test_a_request_that_keeps_failing_yields_an_error_response():
  with FakeOpenAI() as server:
    server.fail_always("<ex-1>", "503")
    teacher = make_teacher(server, max_retries=2)
    responses = run(teacher, make_requests(3))
    failed_posts = [p for p in server.posts() if "<ex-1>" in json.dumps(p.body)]
  failed = responses["ex-1"]
  assert failed.error.startswith("http_503:") and "3 attempts" in failed.error
  assert failed.completions == [] and failed.retries == 2 and failed.cost_usd == 0
  assert len(failed_posts) == 3
  assert_complete(responses["ex-0"]) and assert_complete(responses["ex-2"])
  stats = teacher.stats
  assert (stats["responses_ok"], stats["responses_failed"], stats["failures_by_reason"]) == (2, 1, {"http_503": 1})


def test_a_client_error_is_not_retried():
  with FakeOpenAI() as server:
    server.fail_always("<ex-0>", "400")
    response = run(make_teacher(server), make_requests(1, samples=(0,)))["ex-0"]
    assert len(server.posts()) == 1
  assert response.error.startswith("http_400: injected 400") and response.retries == 0


def test_retry_after_is_honoured():
  with FakeOpenAI(retry_after="0.5") as server:
    server.add_faults("<ex-0>", "429")
    response = run(make_teacher(server, backoff_base_s=0.001), make_requests(1))["ex-0"]
    first, second = server.posts()
  assert_complete(response)
  assert second.arrived - first.arrived >= 0.5


def test_retry_after_header_forms():
  assert api.retry_after_seconds({"retry-after": "0.5"}) == 0.5
  assert api.retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
  in_30s = email.utils.formatdate(time.time() + 30, usegmt=True)
  assert 28 <= api.retry_after_seconds({"retry-after": in_30s}) <= 31
  assert api.retry_after_seconds({"retry-after": "soon"}) is None
  assert api.retry_after_seconds({}) is None


# --------------------------------------------------------------------------- pacing

def test_max_concurrency_is_respected():
  with FakeOpenAI(latency_s=0.1) as server:
    responses = run(make_teacher(server, max_concurrency=3), make_requests(12, samples=(0,)))
    most = server.max_in_flight
  assert len(responses) == 12
  assert 2 <= most <= 3


@pytest.mark.parametrize("limit", [{"requests_per_minute": 300}, {"tokens_per_minute": 12000}], ids=["rpm", "tpm"])
def test_rate_limits_spread_the_requests(limit):
  # 300 rpm: 5 at once, then 5 a second -> the 10th request leaves >= 1 s after the first.
  # 12000 tpm: 200 tokens a second, 50 per request (10 prompt + 40 max) -> the same for the 8th.
  # Timed around the whole run (a lower bound only): server arrival times jitter under load.
  count = 10 if "requests_per_minute" in limit else 8
  with FakeOpenAI() as server:
    started = time.monotonic()
    responses = run(make_teacher(server, **limit), make_requests(count, samples=(0,)), Sampling(max_tokens=40))
    elapsed = time.monotonic() - started
    assert len(server.posts()) == count
  assert len(responses) == count and all(not r.error for r in responses.values())
  assert elapsed >= 0.95


# --------------------------------------------------------------------------- budget and early close

def test_the_budget_cap_stops_launching_but_yields_what_is_in_flight():
  # $1 per completion token; max_tokens=10 reserves $10 a request; an answer costs its ~8 tokens.
  budget = Budget(max_usd=35, price_in_per_mtok=0, price_out_per_mtok=1e6)
  with FakeOpenAI(latency_s=0.2) as server:
    teacher = make_teacher(server, max_concurrency=2)
    responses = run(teacher, make_requests(10, samples=(0,)), Sampling(max_tokens=10), budget)
    sent = len(server.posts())
  assert budget.exhausted and 0 < len(responses) < 10
  assert len(responses) == sent  # every request sent was yielded, in-flight ones included
  assert all(not r.error for r in responses.values())
  assert budget.spent <= 35 and budget.reserved == pytest.approx(0.0)
  assert teacher.stats["not_sent_budget"] == 10 - sent


def test_closing_the_generator_early_cancels_in_flight_requests(caplog):
  budget = Budget(max_usd=1e9, price_in_per_mtok=1, price_out_per_mtok=1)
  with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.DEBUG, logger="asyncio"):
    warnings.simplefilter("always")
    with FakeOpenAI(latency_s=0.3) as server:
      responses = make_teacher(server, max_concurrency=4).generate(make_requests(20), Sampling(), budget)
      first = next(responses)
      responses.close()
      sent = len(server.posts())
    gc.collect()
  assert not first.error and sent < 20
  assert not [t for t in threading.enumerate() if t.name.startswith("api-teacher:")]
  assert budget.reserved == pytest.approx(0.0)
  assert not [w for w in caught if "never awaited" in str(w.message) or "pending" in str(w.message)]
  assert "destroyed but it is pending" not in caplog.text and "exception was never retrieved" not in caplog.text


# --------------------------------------------------------------------------- the key

def test_the_api_key_is_sent_but_never_logged_printed_or_returned(caplog, capfd):
  loggers = ["", "openai", "httpx2", "httpcore2", "httpx", "httpcore", "jaxdistill", "asyncio"]
  with FakeOpenAI(retry_after="0") as server:
    server.add_faults("<ex-0>", "429", "drop", "truncated")
    server.fail_always("<ex-1>", "500")
    server.fail_always("<ex-2>", "400")
    for name in loggers:
      logging.getLogger(name).setLevel(logging.DEBUG)
    try:
      with caplog.at_level(logging.DEBUG):
        teacher = make_teacher(server, max_retries=3)
        responses = run(teacher, make_requests(4))
        print(teacher, teacher.stats, list(responses.values()))
    finally:
      for name in loggers:
        logging.getLogger(name).setLevel(logging.NOTSET)
    posts = server.posts()
  out, err = capfd.readouterr()
  assert responses["ex-1"].error and responses["ex-2"].error and not responses["ex-0"].error
  assert posts and all(p.authorization == f"Bearer {FAKE_KEY}" for p in posts)
  assert "api.teachers" in caplog.text or "jaxdistill.teachers.api" in caplog.text  # the capture works
  seen = [caplog.text, out, err, repr(teacher), str(teacher), str(vars(teacher)), json.dumps(teacher.stats),
          repr(list(responses.values()))]
  assert not [s for s in seen if FAKE_KEY in s]
  with pytest.raises(TypeError):
    pickle.dumps(teacher)


def test_missing_key_is_refused_for_remote_servers_and_replaced_for_local_ones(monkeypatch):
  monkeypatch.delenv("MY_TEACHER_KEY", raising=False)
  with pytest.raises(ConfigError, match="MY_TEACHER_KEY"):
    ApiTeacher(base_url="https://api.example.com/v1", model="m", api_key_env="MY_TEACHER_KEY")
  with FakeOpenAI() as server:
    response = run(make_teacher(server, api_key_env="MY_TEACHER_KEY"), make_requests(1))["ex-0"]
    assert server.posts()[0].authorization == f"Bearer {api.PLACEHOLDER_KEY}"
  assert_complete(response)


# --------------------------------------------------------------------------- settings and the fake itself

@pytest.mark.parametrize("setting, value", [
    ("endpoint", "responses"), ("max_concurrency", 0), ("requests_per_minute", -1), ("timeout_s", 0),
    ("n_per_request", "yes"), ("base_url", "127.0.0.1:8000")])
def test_bad_settings_are_refused_naming_the_setting(setting, value):
  kwargs = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", setting: value}
  with pytest.raises(ConfigError, match=setting):
    ApiTeacher(**kwargs)


def test_chat_prompts_on_the_completions_endpoint_are_refused():
  teacher = ApiTeacher(base_url="http://127.0.0.1:8000/v1", model="m", endpoint="completions")
  with pytest.raises(ConfigError, match="endpoint='completions'.*ex-0"):
    teacher.generate(make_requests(1, chat=True), Sampling(), Budget())


def test_the_fake_server_lists_its_model():
  with FakeOpenAI(model="tiny") as server:
    with urllib.request.urlopen(f"{server.base_url}/models") as reply:
      assert [m["id"] for m in json.load(reply)["data"]] == ["tiny"]
