"""An OpenAI-compatible HTTP server over the local JAX teacher.

    python -m jaxdistill.serve --checkpoint=DIR [--port=8000] [--host=127.0.0.1] [--max_batch=32]
                               [--batch_wait_ms=10] [--name=NAME] [--seed=0] [--dtype=bfloat16]

Endpoints (what `openai.OpenAI(base_url="http://HOST:PORT/v1")` calls, and `api.ApiTeacher`):
  GET  /v1/models             the one served model (its id: --name, default the directory's name, the run's for RUN/hf)
  POST /v1/completions        prompt (a string or a list of strings), n, temperature, top_p, top_k,
                              max_tokens (default 16, as OpenAI), stop, seed, logprobs (int k: the
                              chosen tokens' logprobs and the top k)
  POST /v1/chat/completions   messages, n, temperature, top_p, top_k, max_tokens /
                              max_completion_tokens (default --max_tokens), stop, seed, logprobs
                              (bool) + top_logprobs (k); a leading <think> block is returned as
                              message.reasoning_content
  GET  /stats                 decode batches, rows and requests served (not OpenAI)
Responses are OpenAI-shaped (id, object, created, model, choices, usage). Errors are 400 with an
OpenAI error body naming the field (`param`) for bad JSON, missing or ill-typed fields, n < 1, a
prompt that is empty or too long, `stream: true` (not supported); 404 for an unknown path or a
`model` other than the served one (rejected, so that rows are never labelled with a teacher that
did not write them).

Batching: handler threads (ThreadingHTTPServer) enqueue their rows (one per prompt x choice) and
wait; one worker thread takes the first waiting request, collects those arriving within
`batch_wait_ms` (up to `max_batch` rows; a request that does not fit starts the next batch) and
decodes them together in one `LocalTeacher.decode_rows` call (rows of different sampling
parameters share the batch: they are per row). Choice i of a request is sample i of its seed
(`seed` mod 2^32), so a request with a seed gets the same choices whatever else was batched with
it (see jaxdistill/teachers/local.py for the exact guarantee); without a seed, one is drawn per
request. The first request of each new shape compiles (seconds).

In-process (tests, benchmarks): `url, stop = start(teacher_or_checkpoint, port=0)`.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import queue
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags, logging

from jaxdistill.teachers import local

MAX_TOP_LOGPROBS = 20


class ApiError(Exception):
  """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

  def __init__(self, message: str, param: str | None = None, status: int = 400,
               code: str | None = None):
    super().__init__(message)
    self.status, self.param, self.code = status, param, code

  def body(self) -> dict[str, Any]:
    kind = "invalid_request_error" if self.status < 500 else "server_error"
    return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


# --------------------------------------------------------------------------- batching


@dataclasses.dataclass
class Job:
  rows: list[local.Row]
  done: threading.Event = dataclasses.field(default_factory=threading.Event)
  results: list[local.Decoded] | None = None
  error: str = ""


class Batcher:
  """One worker thread that decodes the rows of the requests arriving within `wait_s` together."""

  def __init__(self, teacher: local.LocalTeacher, max_batch: int, wait_s: float):
    self.teacher, self.max_batch, self.wait_s = teacher, max_batch, wait_s
    self.requests = 0
    self._queue: queue.Queue[Job | None] = queue.Queue()
    self._worker = threading.Thread(target=self._run, name="decode-batcher", daemon=True)
    self._worker.start()

  def submit(self, rows: list[local.Row]) -> list[local.Decoded]:
    job = Job(rows)
    self._queue.put(job)
    job.done.wait()
    if job.error:
      raise ApiError(f"decoding failed: {job.error}", status=500)
    return job.results

  def close(self) -> None:
    self._queue.put(None)
    self._worker.join()

  def _run(self) -> None:
    pending = None  # a request that did not fit in the last batch: it starts the next one
    while True:
      first = pending or self._queue.get()
      if first is None:
        return
      jobs, pending, stopping = self._collect(first)
      self._decode(jobs)
      if stopping:
        return

  def _collect(self, first: Job) -> tuple[list[Job], Job | None, bool]:
    jobs, rows = [first], len(first.rows)
    deadline = time.monotonic() + self.wait_s
    while rows < self.max_batch:
      try:
        job = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if job is None:
        return jobs, None, True
      if rows + len(job.rows) > self.max_batch:
        return jobs, job, False
      jobs.append(job)
      rows += len(job.rows)
    return jobs, None, False

  def _decode(self, jobs: list[Job]) -> None:
    self.requests += len(jobs)
    try:
      results = self.teacher.decode_rows([row for job in jobs for row in job.rows])
    except Exception as e:  # pylint: disable=broad-except
      logging.exception("decode failed")
      for job in jobs:
        job.error = f"{type(e).__name__}: {e}"
        job.done.set()
      return
    start = 0
    for job in jobs:
      job.results = results[start:start + len(job.rows)]
      start += len(job.rows)
      job.done.set()


# --------------------------------------------------------------------------- request fields


def _get(body: dict, name: str, kinds: tuple[type, ...], default: Any, what: str) -> Any:
  value = body.get(name, default)
  if value is None:
    return default
  # bool is an int in Python; JSON true is never a number here.
  if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
    raise ApiError(f"'{name}' must be {what}, got {json.dumps(value)[:80]}", name)
  return value


def _number(body, name, default, low=None, high=None, low_open=False):
  value = _get(body, name, (int, float), default, "a number")
  if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
    bounds = f"{'(' if low_open else '['}{low}, {high}]"
    raise ApiError(f"'{name}' must be in {bounds}, got {value}", name)
  return float(value)


def _integer(body, name, default, low=None, high=None):
  value = _get(body, name, (int,), default, "an integer")
  if value is not None and ((low is not None and value < low) or (high is not None and value > high)):
    raise ApiError(f"'{name}' must be in [{low}, {high if high is not None else 'inf'}], got {value}", name)
  return value


def _stop(body) -> tuple[str, ...]:
  stop = body.get("stop")
  if stop is None:
    return ()
  if isinstance(stop, str):
    return (stop,)
  if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
    return tuple(stop)
  raise ApiError("'stop' must be a string or a list of strings", "stop")


def _prompts(body) -> list[str]:
  if "prompt" not in body:
    raise ApiError("'prompt' is required", "prompt")
  prompt = body["prompt"]
  if isinstance(prompt, str):
    return [prompt]
  if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
    return prompt
  raise ApiError("'prompt' must be a string or a non-empty list of strings (token ids are not "
                 "supported)", "prompt")


def _messages(body) -> tuple[dict[str, str], ...]:
  messages = body.get("messages")
  if not isinstance(messages, list) or not messages:
    raise ApiError("'messages' is required: a non-empty list of {role, content}", "messages")
  out = []
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or not isinstance(m.get("role"), str):
      raise ApiError(f"messages[{i}] must be an object with a string 'role'", f"messages[{i}]")
    content = m.get("content")
    if isinstance(content, list):  # content parts: the text ones, joined
      if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                 for p in content):
        raise ApiError(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
      content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
      raise ApiError(f"messages[{i}].content must be a string", f"messages[{i}].content")
    out.append({"role": m["role"], "content": content})
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class Params:
  """The sampling fields shared by both endpoints."""
  n: int
  seed: int
  temperature: float
  top_p: float
  top_k: int
  max_tokens: int
  stop: tuple[str, ...]
  top_logprobs: int | None


def _params(body, default_max_tokens: int, top_logprobs: int | None) -> Params:
  if body.get("stream"):
    raise ApiError("'stream' is not supported by this server", "stream")
  max_tokens = _integer(body, "max_tokens", None, 1)
  if max_tokens is None:
    max_tokens = _integer(body, "max_completion_tokens", default_max_tokens, 1)
  top_k = _integer(body, "top_k", 0, -1)
  seed = _integer(body, "seed", None)
  return Params(
      n=_integer(body, "n", 1, 1, 128), seed=secrets.randbits(31) if seed is None else seed % 2**32,
      temperature=_number(body, "temperature", 1.0, 0.0, 2.0), top_p=_number(body, "top_p", 1.0, 0.0, 1.0, True),
      top_k=max(top_k, 0), max_tokens=max_tokens, stop=_stop(body), top_logprobs=top_logprobs)


# --------------------------------------------------------------------------- the application


class Service:
  """The endpoints over a LocalTeacher and a Batcher; `handle` maps (method, path, body) to
  (status, JSON)."""

  def __init__(self, teacher: local.LocalTeacher, batcher: Batcher, default_max_tokens: int = 256):
    self.teacher, self.batcher, self.default_max_tokens = teacher, batcher, default_max_tokens
    self.created = int(time.time())

  def handle(self, method: str, path: str, raw: bytes) -> tuple[int, dict[str, Any]]:
    try:
      path = path.split("?", 1)[0].rstrip("/")
      if method == "GET" and path == "/v1/models":
        return 200, {"object": "list", "data": [self._model_card()]}
      if method == "GET" and path == "/stats":
        stats = self.teacher.stats
        return 200, {"batches": stats["batches"], "rows": stats["rows"],
                     "requests": self.batcher.requests}
      if method == "POST" and path in ("/v1/completions", "/v1/chat/completions"):
        body = _json_object(raw)
        self._check_model(body)
        return 200, (self.completions(body) if path == "/v1/completions" else self.chat(body))
      raise ApiError(f"no route {method} {path}", status=404, code="not_found")
    except ApiError as e:
      return e.status, e.body()

  def _model_card(self) -> dict[str, Any]:
    return {"id": self.teacher.name, "object": "model", "created": self.created,
            "owned_by": "jaxdistill"}

  def _check_model(self, body) -> None:
    model = _get(body, "model", (str,), None, "a string")
    if model is None:
      raise ApiError("'model' is required", "model")
    if model != self.teacher.name:
      raise ApiError(f"model {model!r} is not served here; this server serves {self.teacher.name!r}",
                     "model", status=404, code="model_not_found")

  def completions(self, body) -> dict[str, Any]:
    prompts = _prompts(body)
    k = _integer(body, "logprobs", None, 0, MAX_TOP_LOGPROBS)
    params = _params(body, 16, k)
    encoded = [self._encoded(p, params, "prompt") for p in prompts]
    results = self._decode(encoded, params)
    choices = []
    for i, d in enumerate(results):
      c = d.completion
      choices.append({"index": i, "text": c.text, "finish_reason": c.finish_reason,
                      "logprobs": None if k is None else _completion_logprobs(c)})
    return self._reply("cmpl", "text_completion", choices, encoded, results)

  def chat(self, body) -> dict[str, Any]:
    messages = _messages(body)
    want = _get(body, "logprobs", (bool,), False, "a boolean")
    k = _integer(body, "top_logprobs", None, 0, MAX_TOP_LOGPROBS)
    if k is not None and not want:
      raise ApiError("'top_logprobs' needs 'logprobs': true", "top_logprobs")
    params = _params(body, self.default_max_tokens, (k or 0) if want else None)
    encoded = [self._encoded(messages, params, "messages")]
    results = self._decode(encoded, params)
    choices = []
    for i, d in enumerate(results):
      c = d.completion
      answer, reasoning = local.split_reasoning(c.text)
      message = {"role": "assistant", "content": answer}
      if reasoning:
        message["reasoning_content"] = reasoning
      choices.append({"index": i, "message": message, "finish_reason": c.finish_reason,
                      "logprobs": _chat_logprobs(c) if want else None})
    return self._reply("chatcmpl", "chat.completion", choices, encoded, results)

  def _encoded(self, prompt, params: Params, field: str) -> list[int]:
    try:
      ids = self.teacher.encode_prompt(prompt)
      self.teacher.check_prompt(ids, params.max_tokens)
    except ValueError as e:
      raise ApiError(f"'{field}': {e}", field) from e
    return ids

  def _decode(self, encoded: Sequence[list[int]], p: Params) -> list[local.Decoded]:
    """Choice i (prompt-major: prompt j's sample s is choice j * n + s) is sample i of the seed."""
    rows = [local.Row(tuple(ids), p.seed, j * p.n + s, p.temperature, p.top_p, p.top_k,
                      p.max_tokens, p.top_logprobs, p.stop)
            for j, ids in enumerate(encoded) for s in range(p.n)]
    return self.batcher.submit(rows)

  def _reply(self, prefix, kind, choices, encoded, results) -> dict[str, Any]:
    prompt_tokens = sum(len(ids) for ids in encoded)
    completion_tokens = sum(d.completion_tokens for d in results)
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": self.teacher.name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def _json_object(raw: bytes) -> dict[str, Any]:
  try:
    body = json.loads(raw.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ApiError(f"invalid JSON body: {e}") from None
  if not isinstance(body, dict):
    raise ApiError("the JSON body must be an object")
  return body


def _completion_logprobs(c) -> dict[str, Any]:
  """The legacy completions shape: tokens, token_logprobs, top_logprobs [{token: logprob}],
  text_offset."""
  offsets, at = [], 0
  for token in c.tokens:
    offsets.append(at)
    at += len(token)
  return {"tokens": c.tokens, "token_logprobs": c.logprobs,
          "top_logprobs": [dict(zip(tokens, lps)) for tokens, lps in zip(c.top_tokens, c.top_logprobs)],
          "text_offset": offsets}


def _chat_logprobs(c) -> dict[str, Any]:
  def entry(token, logprob):
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

  content = [{**entry(t, lp), "top_logprobs": [entry(tt, tl) for tt, tl in zip(tops, top_lps)]}
             for t, lp, tops, top_lps in zip(c.tokens, c.logprobs, c.top_tokens, c.top_logprobs)]
  return {"content": content, "refusal": None}


# --------------------------------------------------------------------------- HTTP


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive: the openai client reuses connections
  # Headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK add
  # ~40 ms to every response on a kept-alive connection.
  disable_nagle_algorithm = True
  service: Service  # set on the subclass made per server

  def do_GET(self):  # noqa: N802 (http.server's naming)
    self._answer(*self.service.handle("GET", self.path, b""))

  def do_POST(self):  # noqa: N802
    length = int(self.headers.get("Content-Length") or 0)
    self._answer(*self.service.handle("POST", self.path, self.rfile.read(length)))

  def _answer(self, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.debug("%s " + format, self.address_string(), *args)


class Server:
  """The HTTP server and its batcher; `start()` serves in a thread, `stop()` ends both."""

  def __init__(self, teacher: local.LocalTeacher, *, host: str = "127.0.0.1", port: int = 8000,
               max_batch: int | None = None, batch_wait_ms: float = 10.0, default_max_tokens: int = 256):
    max_batch = max_batch or teacher.batch_size
    if max_batch < 1:
      raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    self.teacher = teacher
    self.batcher = Batcher(teacher, max_batch, batch_wait_ms / 1000.0)
    self.service = Service(teacher, self.batcher, default_max_tokens)
    handler = type("Handler", (_Handler,), {"service": self.service})
    self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
    self.httpd.daemon_threads = True
    self._thread = None

  @property
  def url(self) -> str:
    host, port = self.httpd.server_address[:2]
    return f"http://{host}:{port}/v1"

  def start(self) -> "Server":
    self._thread = threading.Thread(target=self.httpd.serve_forever, name="http", daemon=True)
    self._thread.start()
    return self

  def stop(self) -> None:
    self.httpd.shutdown()  # returns once serve_forever has exited
    self.httpd.server_close()
    self.batcher.close()


def start(teacher: local.LocalTeacher | str, *, host: str = "127.0.0.1", port: int = 0,
          max_batch: int | None = None, batch_wait_ms: float = 10.0,
          **teacher_kwargs) -> tuple[str, Callable[[], None]]:
  """Serves `teacher` (or a LocalTeacher of a checkpoint directory) in background threads on
  `port` (0: a free one). Returns (base URL ending in /v1, stop function)."""
  if isinstance(teacher, str):
    teacher = local.LocalTeacher(teacher, batch_size=max_batch or 32, **teacher_kwargs)
  server = Server(teacher, host=host, port=port, max_batch=max_batch, batch_wait_ms=batch_wait_ms).start()
  return server.url, server.stop


# --------------------------------------------------------------------------- command line

FLAGS = flags.FLAGS


def define_flags() -> None:
  """The command line's flags, defined only when serve runs as the program (importing this
  module from tests or other tools defines none)."""
  flags.DEFINE_string("checkpoint", None, "A Hugging Face decoder directory (llama / qwen2 / qwen3 / mistral).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind.")
  flags.DEFINE_integer("port", 8000, "Port to bind (0: a free one).")
  flags.DEFINE_integer("max_batch", 32, "Rows (prompts x n) decoded together at most.")
  flags.DEFINE_float("batch_wait_ms", 10.0, "How long a batch waits for more requests after the first.")
  flags.DEFINE_string("name", "", "The served model id (default: the checkpoint directory's name; the run's for RUN/hf).")
  flags.DEFINE_integer("seed", 0, "The teacher's base seed (rows draw with (seed, request seed, choice)).")
  flags.DEFINE_string("dtype", "", "Activation dtype override, e.g. bfloat16 (default: float32).")
  flags.DEFINE_integer("max_tokens", 256, "Chat max_tokens when a request gives none.")
  flags.mark_flag_as_required("checkpoint")


def main(argv: Sequence[str]) -> None:
  del argv
  teacher = local.LocalTeacher(FLAGS.checkpoint, batch_size=FLAGS.max_batch, name=FLAGS.name or None,
                               seed=FLAGS.seed, dtype=FLAGS.dtype or None)
  server = Server(teacher, host=FLAGS.host, port=FLAGS.port, max_batch=FLAGS.max_batch,
                  batch_wait_ms=FLAGS.batch_wait_ms, default_max_tokens=FLAGS.max_tokens).start()
  stopping = threading.Event()
  # Installed before the URL is printed (clients act on it); SIGINT too, as a process started
  # in the background inherits it ignored and would never see a KeyboardInterrupt.
  for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: stopping.set())
  print(f"serving {teacher.name} on {server.url} (OpenAI-compatible; Ctrl-C to stop)", flush=True)
  while not stopping.wait(0.5):
    pass
  server.stop()
  print("stopped", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
