"""`ApiTeacher`: completions from any OpenAI-compatible server (OpenAI, vLLM, SGLang, llama.cpp, ...).

    teacher = ApiTeacher(base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen3-8B", endpoint="chat")
    for response in teacher.generate(requests, sampling, budget):  # in completion order
      ...
    teacher.stats  # counters for the run's summary

`generate` runs an asyncio loop in a background thread (the official `openai.AsyncOpenAI` client with
its own retries off) and hands Responses over a queue, so the caller stays plain synchronous code.
Each request is paced by `max_concurrency`, `requests_per_minute` and `tokens_per_minute`, and retried
with exponential backoff and jitter (at least the server's `Retry-After`) on 429, 5xx, timeouts,
dropped connections and malformed bodies; one that still fails comes back as a Response with `error`.

Samples: with `n_per_request="auto"` the samples of an example go out as one request with `n`; a
server that rejects `n` or returns fewer choices gets single requests (one per missing sample) from
then on. Sample k is drawn with the seed `sample_seed(request.seed, k)`; a request with `n` uses the
seed of its first sample (so a resumed run asking for samples 2-3 does not replay samples 0-1).

The API key is read from the environment variable `api_key_env` and kept in a `_Secret`: it is sent
in the Authorization header and appears in no log line, error, repr or result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import hashlib
import ipaddress
import logging
import math
import os
import queue
import random
import threading
import time
import urllib.parse
from typing import Any, Iterator, Sequence

import aiolimiter
import openai

from jaxdistill.errors import ConfigError
from jaxdistill.teachers.base import Budget, Completion, Request, Response, Sampling

log = logging.getLogger(__name__)

ENDPOINTS = ("chat", "completions")
PLACEHOLDER_KEY = "EMPTY"  # what local servers without auth (vLLM, SGLang) accept
MAX_RETRY_AFTER_S = 600.0  # a longer Retry-After is waited for this long only
RETRYABLE_STATUS = (408, 409, 429)  # and every 5xx
N_REJECTED_STATUS = (400, 422)  # how servers refuse an unsupported `n`
DETAIL_CHARS = 160


# --------------------------------------------------------------------------- small pieces

class _Secret:
  """The API key; neither its repr nor its str shows it."""

  __slots__ = ("_value",)

  def __init__(self, value: str):
    self._value = value

  def reveal(self) -> str:
    return self._value

  def __repr__(self) -> str:
    return "<secret>"

  __str__ = __repr__

  def __reduce__(self):  # pickling would write the key to disk
    raise TypeError("the API key cannot be pickled")


def sample_seed(seed: int, sample_index: int) -> int:
  """The 31-bit seed of sample `sample_index` of an example with seed `seed` (the same in every run)."""
  digest = hashlib.sha256(f"{seed}:{sample_index}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def is_local_url(base_url: str) -> bool:
  """True for a server on this machine or a private network (where servers often run without a key)."""
  host = urllib.parse.urlsplit(base_url).hostname or ""
  if host == "localhost" or host.endswith(".localhost"):
    return True
  try:
    ip = ipaddress.ip_address(host)
  except ValueError:
    return False
  return ip.is_loopback or ip.is_private or ip.is_link_local


def read_api_key(api_key_env: str, base_url: str) -> _Secret:
  key = os.environ.get(api_key_env, "")
  if key:
    return _Secret(key)
  if is_local_url(base_url):
    log.info("api teacher: $%s is not set; sending a placeholder key to the local server %s", api_key_env, base_url)
    return _Secret(PLACEHOLDER_KEY)
  raise ConfigError(f"api teacher: the environment variable {api_key_env} (api_key_env) holds no API key "
                    f"for {base_url}; set it, or name another variable with api_key_env")


def retry_after_seconds(headers: Any) -> float | None:
  """The wait a response asks for: `retry-after-ms`, or `Retry-After` in seconds or as an HTTP date."""
  if headers is None:
    return None
  millis = headers.get("retry-after-ms")
  if millis is not None:
    try:
      return max(0.0, float(millis) / 1000)
    except ValueError:
      pass
  value = headers.get("retry-after")
  if value is None:
    return None
  try:
    seconds = float(value)
    return max(0.0, seconds) if math.isfinite(seconds) else MAX_RETRY_AFTER_S
  except ValueError:
    pass
  try:
    when = email.utils.parsedate_to_datetime(value)
  except (TypeError, ValueError, IndexError):
    return None
  return max(0.0, when.timestamp() - time.time())


def per_minute_limiter(per_minute: int, largest: float) -> aiolimiter.AsyncLimiter | None:
  """A leaky bucket passing `per_minute` units a minute, at most one second's worth (and at least the
  largest single acquisition) at once: providers enforce their limits over windows shorter than a
  minute, so a whole minute's burst at the start would only earn 429s."""
  if per_minute <= 0:
    return None
  capacity = max(per_minute / 60.0, float(largest), 1.0)
  return aiolimiter.AsyncLimiter(capacity, capacity * 60.0 / per_minute)


class _AttemptFailed(Exception):
  """One HTTP attempt failed; `reason` is a short tag (rate_limit, http_503, timeout, ...)."""

  def __init__(self, reason: str, detail: str, *, retryable: bool, status: int = 0,
               retry_after: float | None = None):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail, self.retryable = reason, detail, retryable
    self.status, self.retry_after = status, retry_after


class _Failed(Exception):
  """A call failed for good (after its retries, or at once when not retryable)."""

  def __init__(self, attempt: _AttemptFailed, attempts: int):
    super().__init__(f"{attempt.reason}: {attempt.detail} (after {attempts} attempt{'s' * (attempts > 1)})")
    self.reason, self.status = attempt.reason, attempt.status


def short(text: str) -> str:
  """One line of at most DETAIL_CHARS characters (server messages can be whole HTML pages)."""
  line = " ".join(str(text).split())
  return line if len(line) <= DETAIL_CHARS else line[:DETAIL_CHARS - 3] + "..."


def status_detail(err: openai.APIStatusError) -> str:
  body = err.body
  if isinstance(body, dict) and isinstance(body.get("message"), str):
    return short(body["message"])
  return short(err.message)


def classify(err: Exception) -> _AttemptFailed:
  """Sorts the client's exceptions into retryable or not; unknown ones are re-raised (a bug)."""
  if isinstance(err, openai.APITimeoutError):
    return _AttemptFailed("timeout", "no answer within timeout_s", retryable=True)
  if isinstance(err, openai.APIConnectionError):
    cause = type(err.__cause__).__name__ if err.__cause__ else "connection error"
    return _AttemptFailed("connection", cause, retryable=True)
  if isinstance(err, openai.APIStatusError):
    status = err.status_code
    return _AttemptFailed("rate_limit" if status == 429 else f"http_{status}", status_detail(err),
                          retryable=status in RETRYABLE_STATUS or status >= 500, status=status,
                          retry_after=retry_after_seconds(err.response.headers))
  if isinstance(err, (openai.APIResponseValidationError, ValueError)):  # JSONDecodeError, pydantic
    return _AttemptFailed("malformed", f"unreadable body ({type(err).__name__})", retryable=True)
  raise err


# --------------------------------------------------------------------------- parsing choices

def _floats(values: Sequence[Any]) -> list[float]:
  return [float("nan") if v is None else float(v) for v in values]


def chat_completion(choice: Any, sample_index: int) -> Completion:
  message = choice.message
  reasoning = getattr(message, "reasoning_content", None) or getattr(message, "reasoning", None) or ""
  completion = Completion(sample_index=sample_index, text=message.content or "", reasoning=str(reasoning),
                          finish_reason=choice.finish_reason or "")
  content = getattr(getattr(choice, "logprobs", None), "content", None)
  if content:
    completion.tokens = [t.token for t in content]
    completion.logprobs = _floats([t.logprob for t in content])
    completion.top_tokens = [[a.token for a in t.top_logprobs or ()] for t in content]
    completion.top_logprobs = [_floats([a.logprob for a in t.top_logprobs or ()]) for t in content]
  return completion


def text_completion(choice: Any, sample_index: int) -> Completion:
  completion = Completion(sample_index=sample_index, text=choice.text or "", finish_reason=choice.finish_reason or "")
  logprobs = getattr(choice, "logprobs", None)
  if logprobs is not None and logprobs.tokens:
    completion.tokens = list(logprobs.tokens)
    completion.logprobs = _floats(logprobs.token_logprobs or [None] * len(logprobs.tokens))
    # The legacy object gives each position's alternatives as a {token: logprob} dict: best first.
    tops = [sorted((top or {}).items(), key=lambda kv: -kv[1]) for top in logprobs.top_logprobs or ()]
    completion.top_tokens = [[t for t, _ in top] for top in tops]
    completion.top_logprobs = [[float(lp) for _, lp in top] for top in tops]
  return completion


def parse_choices(result: Any, sample_indices: Sequence[int], chat: bool) -> list[Completion]:
  """One Completion per returned choice (choice i is sample `sample_indices[i]`); possibly fewer than
  asked for. No choices at all, or an unreadable one, is a malformed body."""
  choices = getattr(result, "choices", None)
  if not choices:
    raise _AttemptFailed("malformed", "no choices in the body", retryable=True)
  indices = [getattr(c, "index", None) for c in choices]
  if sorted(i for i in indices if isinstance(i, int)) != list(range(len(choices))):
    indices = list(range(len(choices)))  # servers that number choices oddly: take them in order
  parse = chat_completion if chat else text_completion
  try:
    return [parse(choice, sample_indices[i]) for i, choice in sorted(zip(indices, choices), key=lambda p: p[0])
            if i < len(sample_indices)]
  except (AttributeError, TypeError, ValueError) as e:
    raise _AttemptFailed("malformed", f"unreadable choice ({type(e).__name__})", retryable=True) from None


def estimated_tokens(completion: Completion) -> int:
  """Completion tokens when the server reports no usage: the logprob tokens, else ~4 characters a token."""
  if completion.tokens is not None:
    return len(completion.tokens)
  return max(1, math.ceil(len(completion.text + completion.reasoning) / 4))


@dataclasses.dataclass
class _Tally:
  """What one Request's calls cost and how often they were retried."""
  retries: int = 0
  prompt_tokens: int = 0
  completion_tokens: int = 0

  def add_usage(self, result: Any, request: Request, completions: list[Completion]) -> None:
    usage = getattr(result, "usage", None)
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    self.prompt_tokens += int(prompt) if prompt is not None else request.prompt_tokens
    self.completion_tokens += (int(completion) if completion is not None
                               else sum(estimated_tokens(c) for c in completions))


# --------------------------------------------------------------------------- the teacher

class ApiTeacher:
  """A Teacher (`jaxdistill/teachers/base.py`) over an OpenAI-compatible HTTP API."""

  def __init__(self, *, base_url: str, model: str, endpoint: str = "chat", api_key_env: str = "OPENAI_API_KEY",
               max_concurrency: int = 8, requests_per_minute: int = 0, tokens_per_minute: int = 0,
               timeout_s: float = 60.0, max_retries: int = 6, n_per_request: bool | str = "auto",
               name: str | None = None, backoff_base_s: float = 1.0, backoff_max_s: float = 60.0):
    check_settings(base_url=base_url, model=model, endpoint=endpoint, max_concurrency=max_concurrency,
                   requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute,
                   timeout_s=timeout_s, max_retries=max_retries, n_per_request=n_per_request,
                   backoff_base_s=backoff_base_s, backoff_max_s=backoff_max_s)
    self.base_url, self.model, self.endpoint = base_url, model, endpoint
    self.api_key_env = api_key_env
    self._key = read_api_key(api_key_env, base_url)
    self.max_concurrency, self.timeout_s, self.max_retries = int(max_concurrency), float(timeout_s), int(max_retries)
    self.requests_per_minute, self.tokens_per_minute = int(requests_per_minute), int(tokens_per_minute)
    self.n_per_request = n_per_request
    self.backoff_base_s, self.backoff_max_s = float(backoff_base_s), float(backoff_max_s)
    self.name = name or model
    # "auto": None until a server shows whether it honours `n` (then True / False for the rest).
    self.n_supported: bool | None = None if n_per_request == "auto" else bool(n_per_request)
    self.counters = _Stats()

  def __repr__(self) -> str:
    return (f"ApiTeacher(name={self.name!r}, model={self.model!r}, base_url={self.base_url!r}, "
            f"endpoint={self.endpoint!r}, api_key_env={self.api_key_env!r})")

  @property
  def stats(self) -> dict[str, Any]:
    """Counters over every `generate` call so far (JSON-ready); see `_Stats`."""
    return self.counters.snapshot()

  def generate(self, requests: Sequence[Request], sampling: Sampling, budget: Budget) -> Iterator[Response]:
    """Yields one Response per Request as each finishes, until the budget refuses a reservation (the
    requests not sent then are not yielded). Closing the iterator early cancels what is in flight."""
    requests = list(requests)
    self._check_prompts(requests)
    return _stream(_Run(self, requests, sampling, budget))

  def _check_prompts(self, requests: list[Request]) -> None:
    if self.endpoint == "completions":
      chat = next((r for r in requests if not isinstance(r.prompt, str)), None)
      if chat is not None:
        raise ConfigError(f"api teacher: endpoint='completions' needs text prompts, but example {chat.example_id} "
                          "has chat messages; use endpoint='chat'")

  def scrub(self, text: str) -> str:
    """`text` without the key (should a server or proxy ever echo it back)."""
    key = self._key.reveal()
    return text.replace(key, "<secret>") if key != PLACEHOLDER_KEY else text

  def make_client(self) -> openai.AsyncOpenAI:
    # max_retries=0: retries are ours, to count them, pace them and honour Retry-After.
    return openai.AsyncOpenAI(api_key=self._key.reveal(), base_url=self.base_url, timeout=self.timeout_s,
                              max_retries=0)


def check_settings(*, base_url: str, model: str, endpoint: str, max_concurrency: int, requests_per_minute: int,
                   tokens_per_minute: int, timeout_s: float, max_retries: int, n_per_request: bool | str,
                   backoff_base_s: float, backoff_max_s: float) -> None:
  """Refuses settings that cannot work, naming the setting."""
  url = urllib.parse.urlsplit(base_url or "")
  if url.scheme not in ("http", "https") or not url.hostname:
    raise ConfigError(f"api teacher: base_url={base_url!r} must be an http(s) URL such as http://127.0.0.1:8000/v1")
  if not model:
    raise ConfigError(f"api teacher: model is empty; name the served model (GET {base_url}/models lists them)")
  if endpoint not in ENDPOINTS:
    raise ConfigError(f"api teacher: endpoint={endpoint!r}: expected one of {', '.join(ENDPOINTS)}")
  if max_concurrency < 1:
    raise ConfigError(f"api teacher: max_concurrency={max_concurrency} must be >= 1")
  for key, value in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute),
                     ("max_retries", max_retries), ("backoff_base_s", backoff_base_s),
                     ("backoff_max_s", backoff_max_s)):
    if value < 0:
      raise ConfigError(f"api teacher: {key}={value} must be >= 0 (requests/tokens_per_minute: 0 = no limit)")
  if not timeout_s > 0:
    raise ConfigError(f"api teacher: timeout_s={timeout_s} must be > 0")
  if n_per_request not in ("auto", True, False):
    raise ConfigError(f"api teacher: n_per_request={n_per_request!r}: expected 'auto', True or False")


class _Stats:
  """Thread-safe counters: `requests_sent` (HTTP requests, retries included), `retries` and
  `retries_by_reason`, `responses_ok` / `responses_failed` (one per example) with `failures_by_reason`,
  `completions`, `n_fallbacks` (examples whose `n` request was replaced by single requests),
  `not_sent_budget` (examples left unsent when the budget refused), tokens and `cost_usd`."""

  def __init__(self):
    self._lock = threading.Lock()
    self._counts: dict[str, Any] = {
        "requests_sent": 0, "retries": 0, "responses_ok": 0, "responses_failed": 0, "completions": 0,
        "n_fallbacks": 0, "not_sent_budget": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0,
        "retries_by_reason": {}, "failures_by_reason": {}}

  def add(self, key: str, amount: float = 1) -> None:
    with self._lock:
      self._counts[key] += amount

  def add_reason(self, key: str, reason: str) -> None:
    with self._lock:
      by_reason = self._counts[key]
      by_reason[reason] = by_reason.get(reason, 0) + 1

  def record(self, response: Response, failure_reason: str) -> None:
    with self._lock:
      c = self._counts
      c["responses_failed" if response.error else "responses_ok"] += 1
      c["completions"] += len(response.completions)
      c["prompt_tokens"] += response.prompt_tokens
      c["completion_tokens"] += response.completion_tokens
      c["cost_usd"] += response.cost_usd
      if response.error:
        c["failures_by_reason"][failure_reason] = c["failures_by_reason"].get(failure_reason, 0) + 1

  def snapshot(self) -> dict[str, Any]:
    with self._lock:
      return {k: dict(v) if isinstance(v, dict) else v for k, v in self._counts.items()}


# --------------------------------------------------------------------------- one generate call

_END = object()  # the loop thread's last item on the queue


@dataclasses.dataclass
class _Crash:
  error: BaseException


def _stream(run: "_Run") -> Iterator[Response]:
  """The caller's side: Responses off the queue; on close (or an error) the loop is cancelled."""
  run.start()
  try:
    while (item := run.results.get()) is not _END:
      if isinstance(item, _Crash):
        raise RuntimeError(f"api teacher {run.teacher.name}: the request loop failed") from item.error
      yield item
  finally:
    run.stop()


class _Run:
  """One `generate` call: an asyncio loop in a background thread sends the requests and puts each
  Response on `results` as it finishes, then `_END`."""

  def __init__(self, teacher: ApiTeacher, requests: list[Request], sampling: Sampling, budget: Budget):
    self.teacher, self.requests, self.sampling, self.budget = teacher, requests, sampling, budget
    self.chat = teacher.endpoint == "chat"
    self.results: queue.Queue = queue.Queue()
    self._rng = random.Random()
    # asyncio primitives bind to the loop on first use, so they can be made here, outside it.
    self.http_slots = asyncio.Semaphore(teacher.max_concurrency)
    largest = max((self._tokens(r, len(r.sample_indices)) for r in requests), default=1)
    self.rpm = per_minute_limiter(teacher.requests_per_minute, 1)
    self.tpm = per_minute_limiter(teacher.tokens_per_minute, largest)
    self._thread = threading.Thread(target=self._thread_main, name=f"api-teacher:{teacher.name}", daemon=True)
    self._lock = threading.Lock()  # guards the handles `stop` needs against a loop still starting
    self._loop: asyncio.AbstractEventLoop | None = None
    self._main_task: asyncio.Task | None = None
    self._stopping = False

  # ------------------------------------------------------------------ thread side

  def start(self) -> None:
    self._thread.start()

  def stop(self) -> None:
    """Cancels whatever is in flight and waits for the loop to wind down (a no-op once it has ended)."""
    with self._lock:
      self._stopping = True
      if self._loop is not None and self._main_task is not None:
        try:
          self._loop.call_soon_threadsafe(self._main_task.cancel)
        except RuntimeError:
          pass  # the loop has already ended
    self._thread.join()

  def _thread_main(self) -> None:
    try:
      with asyncio.Runner() as runner:
        runner.run(self._main())
    except asyncio.CancelledError:
      pass  # stopped by the caller
    except BaseException as e:  # pylint: disable=broad-except
      self.results.put(_Crash(e))
    finally:
      self.results.put(_END)

  # ------------------------------------------------------------------ the loop

  async def _main(self) -> None:
    with self._lock:
      if self._stopping:
        return
      self._loop, self._main_task = asyncio.get_running_loop(), asyncio.current_task()
    client = self.teacher.make_client()
    in_flight: set[asyncio.Task] = set()
    try:
      await self._launch(client, in_flight)
      while in_flight:
        await asyncio.wait(set(in_flight))
    finally:
      for task in in_flight:
        task.cancel()
      await asyncio.gather(*in_flight, return_exceptions=True)
      await client.close()

  async def _launch(self, client: openai.AsyncOpenAI, in_flight: set[asyncio.Task]) -> None:
    """Starts one task per Request, at most `max_concurrency` at once, each after its budget
    reservation; the first refusal stops launching (the tasks in flight still finish)."""
    request_slots = asyncio.Semaphore(self.teacher.max_concurrency)
    for i, request in enumerate(self.requests):
      await request_slots.acquire()
      worst = len(request.sample_indices) * self.sampling.max_tokens
      reserved = self.budget.reserve(request.prompt_tokens, worst) if request.sample_indices else 0.0
      if reserved is None:
        request_slots.release()
        left = len(self.requests) - i
        self.teacher.counters.add("not_sent_budget", left)
        log.info("api teacher %s: budget reached; %d request(s) not sent", self.teacher.name, left)
        return
      task = asyncio.create_task(self._answer(client, request, reserved))
      in_flight.add(task)
      task.add_done_callback(in_flight.discard)
      task.add_done_callback(lambda _: request_slots.release())

  async def _answer(self, client: openai.AsyncOpenAI, request: Request, reserved: float) -> None:
    """Gets one Request's samples and queues its Response; every failure becomes `error`."""
    started, tally = time.monotonic(), _Tally()
    completions, error, reason = [], "", ""
    try:
      completions = await self._samples(client, request, tally)
    except _Failed as e:
      error, reason = str(e), e.reason
    except asyncio.CancelledError:
      self.budget.settle(reserved, tally.prompt_tokens, tally.completion_tokens)  # the caller closed early
      raise
    except Exception as e:  # pylint: disable=broad-except
      log.exception("api teacher %s: unexpected failure on %s", self.teacher.name, request.example_id)
      error, reason = f"internal: {type(e).__name__}", "internal"
    if error:
      completions, error = [], self.teacher.scrub(error)
      log.warning("api teacher %s: %s failed: %s", self.teacher.name, request.example_id, error)
    cost = self.budget.settle(reserved, tally.prompt_tokens, tally.completion_tokens)
    response = Response(request=request, completions=completions, prompt_tokens=tally.prompt_tokens,
                        completion_tokens=tally.completion_tokens, cost_usd=cost, retries=tally.retries,
                        error=error, seconds=time.monotonic() - started)
    self.teacher.counters.record(response, reason)
    self.results.put(response)

  async def _samples(self, client: openai.AsyncOpenAI, request: Request, tally: _Tally) -> list[Completion]:
    """All samples of a Request: one call with `n` where the server allows it, single calls for the rest."""
    teacher = self.teacher
    wanted = tuple(request.sample_indices)
    if len(wanted) < 2 or teacher.n_supported is False:
      return await self._singles(client, request, wanted, tally)
    got = await self._with_n(client, request, wanted, tally)
    if len(got) == len(wanted):
      teacher.n_supported = True
      return got
    teacher.counters.add("n_fallbacks")
    have = {c.sample_index for c in got}
    singles = await self._singles(client, request, tuple(k for k in wanted if k not in have), tally)
    if teacher.n_per_request == "auto":
      teacher.n_supported = False  # it refused `n` or answered fewer choices, and singles work: singles from now on
    return sorted(got + singles, key=lambda c: c.sample_index)

  async def _with_n(self, client: openai.AsyncOpenAI, request: Request, wanted: tuple[int, ...],
                    tally: _Tally) -> list[Completion]:
    """The samples one call with `n` brings back: all, fewer, or none when the server refuses `n`."""
    try:
      got = await self._call(client, request, wanted, tally)
    except _Failed as e:
      if self.teacher.n_per_request is True or e.status not in N_REJECTED_STATUS:
        raise
      log.info("api teacher %s: the server refused n=%d (%s); sending single requests",
               self.teacher.name, len(wanted), e.reason)
      return []
    if len(got) < len(wanted):
      log.info("api teacher %s: the server answered %d of n=%d choices; sending single requests",
               self.teacher.name, len(got), len(wanted))
    return got

  async def _singles(self, client: openai.AsyncOpenAI, request: Request, indices: tuple[int, ...],
                     tally: _Tally) -> list[Completion]:
    """One call per sample, concurrently; the first failure fails them all (after all have ended)."""
    singles = await asyncio.gather(*(self._call(client, request, (k,), tally) for k in indices),
                                   return_exceptions=True)
    failure = next((s for s in singles if isinstance(s, BaseException)), None)
    if failure is not None:
      raise failure
    return [c for completions in singles for c in completions]

  async def _call(self, client: openai.AsyncOpenAI, request: Request, indices: tuple[int, ...],
                  tally: _Tally) -> list[Completion]:
    """One logical call (samples `indices`), retried with backoff; raises `_Failed` when it gives up."""
    params = self._params(request, indices)
    attempts = self.teacher.max_retries + 1
    for attempt in range(attempts):
      try:
        return await self._attempt(client, params, request, indices, tally)
      except _AttemptFailed as failed:
        if not failed.retryable or attempt + 1 == attempts:
          raise _Failed(failed, attempt + 1) from None
        delay = self._backoff(attempt, failed.retry_after)
        tally.retries += 1
        self.teacher.counters.add("retries")
        self.teacher.counters.add_reason("retries_by_reason", failed.reason)
        log.debug("api teacher %s: %s %s; retry %d of %d in %.2fs", self.teacher.name, request.example_id,
                  failed.reason, attempt + 1, attempts - 1, delay)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")

  async def _attempt(self, client: openai.AsyncOpenAI, params: dict[str, Any], request: Request,
                     indices: tuple[int, ...], tally: _Tally) -> list[Completion]:
    async with self.http_slots:
      if self.rpm is not None:
        await self.rpm.acquire(1)
      if self.tpm is not None:
        await self.tpm.acquire(min(self._tokens(request, len(indices)), self.tpm.max_rate))
      self.teacher.counters.add("requests_sent")
      try:
        if self.chat:
          result = await client.chat.completions.create(**params)
        else:
          result = await client.completions.create(**params)
      except Exception as e:  # pylint: disable=broad-except
        raise classify(e) from None  # from None: the client's exception chain stays out of logs
    completions = parse_choices(result, indices, self.chat)
    tally.add_usage(result, request, completions)
    return completions

  # ------------------------------------------------------------------ helpers

  def _tokens(self, request: Request, n: int) -> int:
    """What a call counts against tokens_per_minute: its prompt and the most it may generate."""
    return request.prompt_tokens + n * self.sampling.max_tokens

  def _backoff(self, retry: int, retry_after: float | None) -> float:
    """Exponential with jitter; never shorter than the server's Retry-After (jittered up a little so
    that requests told the same time do not all come back at once)."""
    teacher = self.teacher
    backoff = min(teacher.backoff_max_s, teacher.backoff_base_s * 2 ** retry) * self._rng.uniform(0.5, 1.0)
    if retry_after is None:
      return backoff
    return max(min(retry_after, MAX_RETRY_AFTER_S) * self._rng.uniform(1.0, 1.1), backoff)

  def _params(self, request: Request, indices: tuple[int, ...]) -> dict[str, Any]:
    s = self.sampling
    params: dict[str, Any] = {"model": self.teacher.model, "temperature": s.temperature, "top_p": s.top_p,
                              "max_tokens": s.max_tokens, "seed": sample_seed(request.seed, indices[0])}
    if len(indices) > 1:
      params["n"] = len(indices)
    if s.stop:
      params["stop"] = list(s.stop)
    if s.top_k > 0:
      params["extra_body"] = {"top_k": s.top_k}  # not an OpenAI parameter; vLLM / SGLang read it
    if self.chat:
      params["messages"] = chat_messages(request.prompt)
      if s.top_logprobs > 0:
        params.update(logprobs=True, top_logprobs=s.top_logprobs)
    else:
      params["prompt"] = request.prompt
      if s.top_logprobs > 0:
        params["logprobs"] = s.top_logprobs
    return params


def chat_messages(prompt: str | Sequence[dict[str, str]]) -> list[dict[str, str]]:
  if isinstance(prompt, str):
    return [{"role": "user", "content": prompt}]
  return [dict(m) for m in prompt]
