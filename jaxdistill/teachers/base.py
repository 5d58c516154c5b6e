"""The Teacher protocol: prompts in, `n` completions each out (text, optional top-k logprobs, usage).

A teacher is anything with a `name` (written as the cache rows' `teacher`) and
`generate(requests, sampling, budget) -> Iterator[Response]`, yielding one Response per Request in
any order as they finish, so the caller writes rows as they come (`jaxdistill/teach.py`). Two ship:
`api.ApiTeacher` (any OpenAI-compatible server) and `local.LocalTeacher` (a JAX decoder checkpoint).

A Request asks for some samples of one example: `sample_indices` are the samples still missing from
the cache (a resumed run asks only for those) and `seed` is derived from the example id, so sample k
of an example is drawn with the same randomness whenever and in whatever batch it is generated.

A `Budget` is shared by the caller and the teacher: a teacher reserves a request's worst-case cost
(prompt tokens + max_tokens) before sending it and settles the actual usage after, so spend never
passes `max_usd`; once a reservation is refused the teacher sends nothing more and finishes what
is in flight.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Any, Iterator, Protocol, Sequence

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": ...}


@dataclasses.dataclass(frozen=True)
class Sampling:
  """Sampling parameters of one teacher run (part of its prompt_id)."""
  temperature: float = 0.7
  top_p: float = 1.0
  top_k: int = 0  # 0: off (OpenAI-compatible servers may ignore it)
  max_tokens: int = 256
  top_logprobs: int = 0  # > 0: keep each generated token's top-k logprobs
  stop: tuple[str, ...] = ()

  def as_dict(self) -> dict[str, Any]:
    return {**dataclasses.asdict(self), "stop": list(self.stop)}


@dataclasses.dataclass(frozen=True)
class Request:
  example_id: str
  prompt: str | tuple[Message, ...]  # a completion prompt, or chat messages
  sample_indices: tuple[int, ...]  # the samples wanted (those missing from the cache)
  seed: int  # per example (see `example_seed`); sample k uses (seed, k)
  prompt_tokens: int = 0  # counted by the caller's tokenizer (for the budget and the estimate)


@dataclasses.dataclass
class Completion:
  sample_index: int
  text: str  # the completion as generated (the answer part for reasoning models)
  reasoning: str = ""  # a separate `reasoning_content` / <think> block, when the model gives one
  finish_reason: str = ""
  # With Sampling.top_logprobs > 0: per generated token its id (local teacher) or text (API), its
  # logprob, and the top-k alternatives (ids or texts) with their logprobs, [T] and [T][k].
  token_ids: list[int] | None = None
  tokens: list[str] | None = None
  logprobs: list[float] | None = None
  top_ids: list[list[int]] | None = None
  top_tokens: list[list[str]] | None = None
  top_logprobs: list[list[float]] | None = None


@dataclasses.dataclass
class Response:
  request: Request
  completions: list[Completion]  # one per requested sample; empty when `error`
  prompt_tokens: int = 0
  completion_tokens: int = 0
  cost_usd: float = 0.0
  retries: int = 0  # retried attempts (429, 5xx, timeouts, dropped connections, malformed bodies)
  error: str = ""  # set when the request still failed after its retries (the caller records it)
  seconds: float = 0.0


class Teacher(Protocol):
  name: str

  def generate(self, requests: Sequence[Request], sampling: Sampling, budget: "Budget"
               ) -> Iterator[Response]:
    ...


def example_seed(example_id: str, base_seed: int = 0) -> int:
  """A 31-bit seed of (example id, run seed): the same in every run and process."""
  digest = hashlib.sha256(f"{base_seed}:{example_id}".encode()).digest()
  return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


class Budget:
  """Spend in USD at the given prices, capped at `max_usd` (<= 0: no cap). Thread-safe."""

  def __init__(self, max_usd: float = 0.0, price_in_per_mtok: float = 0.0, price_out_per_mtok: float = 0.0):
    self.max_usd = float(max_usd)
    self.price_in = float(price_in_per_mtok) / 1e6
    self.price_out = float(price_out_per_mtok) / 1e6
    self.spent = 0.0
    self.reserved = 0.0
    self.exhausted = False  # a reservation was refused: send nothing more
    self._lock = threading.Lock()

  def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
    return prompt_tokens * self.price_in + completion_tokens * self.price_out

  def reserve(self, prompt_tokens: int, max_completion_tokens: int) -> float | None:
    """Reserves a request's worst-case cost; None (and `exhausted`) when it would pass the cap."""
    worst = self.cost(prompt_tokens, max_completion_tokens)
    with self._lock:
      if self.exhausted or (self.max_usd > 0 and self.spent + self.reserved + worst > self.max_usd):
        self.exhausted = True
        return None
      self.reserved += worst
      return worst

  def settle(self, reserved: float, prompt_tokens: int, completion_tokens: int) -> float:
    """Replaces a reservation by the actual cost; returns that cost."""
    actual = self.cost(prompt_tokens, completion_tokens)
    with self._lock:
      self.reserved -= reserved
      self.spent += actual
    return actual
