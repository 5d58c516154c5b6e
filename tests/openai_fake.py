"""A small OpenAI-compatible HTTP server on 127.0.0.1 for the API teacher's tests, with injectable faults.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models. Answers are deterministic:
choice i of a request reads "Rationale for <prompt hash> seed <seed> choice <i>. Answer: neutral", with
`n`, `usage` and (when asked) logprobs. A fault plan makes matching requests fail:

  server.add_faults("ex-3", "429", "500")  # the next two requests whose prompt contains "ex-3" fail so
  server.fail_always("ex-4", "503")        # every request for "ex-4" fails

Fault kinds: "429" (with `Retry-After: retry_after`), "500", "503", "400", "stall" (answers after
`stall_s`, longer than the client's timeout), "truncated" (a 200 whose JSON body is cut short),
"drop" (the connection closes without an answer), "no_choices" (a 200 without `choices`).
`n_mode` sets how the server treats `n` > 1: "ok", "reject" (400) or "ignore" (one choice only).
The server records every request (path, body, Authorization header, arrival time) and the most
requests it had in flight at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import socket
import threading
import time
from typing import Any

FAULT_KINDS = ("429", "500", "503", "400", "stall", "truncated", "drop", "no_choices")


@dataclasses.dataclass
class Seen:
  path: str
  body: dict[str, Any]
  authorization: str
  arrived: float  # time.monotonic()
  fault: str = ""


def prompt_text(body: dict[str, Any]) -> str:
  """The text a fault rule matches: the completion prompt, or every chat message joined."""
  if "messages" in body:
    return "\n".join(str(m.get("content", "")) for m in body["messages"])
  return str(body.get("prompt", ""))


def answer_text(body: dict[str, Any], choice: int) -> str:
  digest = hashlib.sha256(prompt_text(body).encode()).hexdigest()[:8]
  return f"Rationale for {digest} seed {body.get('seed')} choice {choice}. Answer: neutral"


def fake_logprobs(text: str, k: int) -> list[tuple[str, float, list[tuple[str, float]]]]:
  """Per word-token: (token, logprob, top-k alternatives with the token itself first)."""
  tokens = [w if i == 0 else " " + w for i, w in enumerate(text.split(" "))]
  out = []
  for j, token in enumerate(tokens):
    chosen = -0.01 * (j + 1)
    top = [(token, chosen)] + [(f"alt{a}", chosen - a) for a in range(1, k)]
    out.append((token, chosen, top))
  return out


def chat_choice(body: dict[str, Any], i: int, reasoning_field: str) -> dict[str, Any]:
  text = answer_text(body, i)
  message: dict[str, Any] = {"role": "assistant", "content": text}
  if reasoning_field:
    message[reasoning_field] = f"thinking about choice {i}"
  choice: dict[str, Any] = {"index": i, "message": message, "finish_reason": "stop", "logprobs": None}
  if body.get("logprobs"):
    k = int(body.get("top_logprobs") or 0)
    choice["logprobs"] = {"content": [
        {"token": t, "logprob": lp, "bytes": None,
         "top_logprobs": [{"token": a, "logprob": alp, "bytes": None} for a, alp in top]}
        for t, lp, top in fake_logprobs(text, k)]}
  return choice


def completion_choice(body: dict[str, Any], i: int) -> dict[str, Any]:
  text = answer_text(body, i)
  choice: dict[str, Any] = {"index": i, "text": text, "finish_reason": "stop", "logprobs": None}
  k = int(body.get("logprobs") or 0)
  if k:
    entries = fake_logprobs(text, k)
    choice["logprobs"] = {"tokens": [t for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
                          "top_logprobs": [dict(top) for _, _, top in entries], "text_offset": None}
  return choice


class FakeOpenAI:
  """The server; use as a context manager (`with FakeOpenAI() as server: server.base_url`)."""

  def __init__(self, *, latency_s: float = 0.0, n_mode: str = "ok", retry_after: str = "0.5",
               stall_s: float = 2.0, usage: bool = True, reasoning_field: str = "", model: str = "fake-model"):
    self.latency_s = latency_s
    self.n_mode = n_mode
    self.retry_after = retry_after
    self.stall_s = stall_s
    self.usage = usage
    self.reasoning_field = reasoning_field  # "reasoning_content" / "reasoning": chat messages carry it
    self.model = model
    self.seen: list[Seen] = []
    self.in_flight = 0
    self.max_in_flight = 0
    self._faults: list[tuple[str, list[str]]] = []  # (prompt substring, kinds still to inject)
    self._always: list[tuple[str, str]] = []
    self._lock = threading.Lock()
    self.stopping = threading.Event()  # wakes stalled handlers at shutdown
    self._httpd: http.server.ThreadingHTTPServer | None = None

  # ------------------------------------------------------------------ fault plan

  def add_faults(self, match: str, *kinds: str) -> None:
    assert all(k in FAULT_KINDS for k in kinds), kinds
    with self._lock:
      self._faults.append((match, list(kinds)))

  def fail_always(self, match: str, kind: str) -> None:
    assert kind in FAULT_KINDS, kind
    with self._lock:
      self._always.append((match, kind))

  def next_fault(self, text: str) -> str:
    with self._lock:
      for match, kind in self._always:
        if match in text:
          return kind
      for match, kinds in self._faults:
        if match in text and kinds:
          return kinds.pop(0)
    return ""

  # ------------------------------------------------------------------ life cycle

  @property
  def base_url(self) -> str:
    assert self._httpd is not None
    return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

  def __enter__(self) -> "FakeOpenAI":
    handler = type("Handler", (_Handler,), {"fake": self})
    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    self._httpd.daemon_threads = True
    self._httpd.block_on_close = False  # stalled handlers must not hold up the test's end
    threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="openai-fake",
                     daemon=True).start()
    return self

  def __exit__(self, *exc) -> None:
    self.stopping.set()
    assert self._httpd is not None
    self._httpd.shutdown()
    self._httpd.server_close()

  # ------------------------------------------------------------------ bookkeeping

  def posts(self) -> list[Seen]:
    with self._lock:
      return [s for s in self.seen if s.path != "/v1/models"]

  def record(self, seen: Seen) -> None:
    with self._lock:
      self.seen.append(seen)
      self.in_flight += 1
      self.max_in_flight = max(self.max_in_flight, self.in_flight)

  def done(self) -> None:
    with self._lock:
      self.in_flight -= 1

  def answer(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
    n = int(body.get("n") or 1)
    if n > 1 and self.n_mode == "ignore":
      n = 1
    chat = path.endswith("/chat/completions")
    choices = [chat_choice(body, i, self.reasoning_field) if chat else completion_choice(body, i)
               for i in range(n)]
    out: dict[str, Any] = {"id": f"fake-{len(self.seen)}", "object": "chat.completion" if chat else "text_completion",
                           "created": 0, "model": body.get("model", self.model), "choices": choices}
    if self.usage:
      completion_tokens = sum(len(answer_text(body, i).split()) for i in range(n))
      prompt_tokens = len(prompt_text(body).split())
      out["usage"] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}
    return out


class _Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive, as real servers: a dropped connection then matters
  disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stalls
  fake: FakeOpenAI

  def log_message(self, *args) -> None:  # quiet: tests read the recorded requests instead
    pass

  def do_GET(self) -> None:
    if self.path.rstrip("/") != "/v1/models":
      return self._send_json(404, {"error": {"message": "not found"}})
    self.fake.record(Seen("/v1/models", {}, self.headers.get("Authorization", ""), time.monotonic()))
    self.fake.done()
    self._send_json(200, {"object": "list", "data": [
        {"id": self.fake.model, "object": "model", "created": 0, "owned_by": "fake"}]})

  def do_POST(self) -> None:
    length = int(self.headers.get("Content-Length") or 0)
    body = json.loads(self.rfile.read(length) or b"{}")
    path = self.path.rstrip("/")
    fault = self.fake.next_fault(prompt_text(body))
    self.fake.record(Seen(path, body, self.headers.get("Authorization", ""), time.monotonic(), fault))
    try:
      self._answer(path, body, fault)
    except (BrokenPipeError, ConnectionResetError):
      pass  # the client gave up (timeout) or was cancelled
    finally:
      self.fake.done()

  def _answer(self, path: str, body: dict[str, Any], fault: str) -> None:
    fake = self.fake
    if path not in ("/v1/chat/completions", "/v1/completions"):
      return self._send_json(404, {"error": {"message": f"no route {path}"}})
    if fake.latency_s:
      time.sleep(fake.latency_s)
    if fault == "stall":
      fake.stopping.wait(fake.stall_s)
    elif fault == "429":
      return self._send_json(429, {"error": {"message": "rate limited", "type": "rate_limit"}},
                             {"Retry-After": fake.retry_after})
    elif fault in ("500", "503", "400"):
      return self._send_json(int(fault), {"error": {"message": f"injected {fault}"}})
    elif fault == "drop":
      self.close_connection = True
      self.connection.shutdown(socket.SHUT_RDWR)
      return
    if int(body.get("n") or 1) > 1 and fake.n_mode == "reject":
      return self._send_json(400, {"error": {"message": "n > 1 is not supported", "param": "n"}})
    answer = fake.answer(path, body)
    if fault == "no_choices":
      del answer["choices"]
    data = json.dumps(answer).encode()
    if fault == "truncated":
      data = data[: len(data) // 2]
    self._send_bytes(200, data)

  def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
    self._send_bytes(status, json.dumps(obj).encode(), headers)

  def _send_bytes(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
      self.send_header(key, value)
    self.end_headers()
    self.wfile.write(data)
