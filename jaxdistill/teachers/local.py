"""A local JAX teacher: a Hugging Face decoder checkpoint sampled with the project's KV-cache decoder.

    teacher = LocalTeacher("path/to/Qwen2.5-0.5B-Instruct", batch_size=32)
    for response in teacher.generate(requests, Sampling(temperature=0.7, top_logprobs=5), Budget()):
      ...

The checkpoint is any Llama-family directory (`llama.MODEL_TYPES`: llama / qwen2 / qwen3 / mistral),
loaded sharded over `mesh` (default: every device on the data axis) by `rules` (default:
configs/base.py's logical_axis_rules); the tokenizer comes from the same directory.

Prompts: chat messages go through the tokenizer's chat template (`chat_template="auto"`, via
`prompts.apply_chat_template`; a tokenizer without one, or "none": `prompts.plain_join`); a text
prompt is encoded as it is, without EOS and without special tokens, which is how jaxdistill
decoder students see their prompts in training (`pipeline.causal_lm_rows`).

Determinism. Each (request, sample) is one decoded row, and its randomness is a key derived from
(teacher seed, Request.seed, sample_index) only (`decode.row_keys`: fold_in twice; step i folds in
i), never from the row's place in a batch. So a resumed run, another batch size or another order
draws the same noise for sample k of an example. The logits it is added to are computed by XLA
kernels whose float rounding may depend on the batch's shape (rows, padded prompt length, decode
length): at the same shape a row is bit-identical wherever it sits in the batch; across shapes its
logits differ by float reassociation (~1e-6 measured on XLA:CPU), which changes a sampled or
greedy token only when two candidates tie to that precision. To keep shapes few and stable,
every batch is padded to buckets: prompt length and decode length to the next of 16, 24, 32, 48,
64, 96, ... (at most a third padding), rows to the next power of two (times the data-parallel
size) up to `batch_size`. Requests are batched in a fixed order (prompt length, then example id),
so a rerun of the same requests batches, and computes, identically.

Logprobs (Sampling.top_logprobs = k > 0): per generated token its id, logprob and the k most likely
(ids, logprobs) under log_softmax of the raw logits (temperature 1, before top-k / top-p
filtering), recorded inside the jitted loop (`decode.decode_loop`); the plain path records nothing.

Ends: EOS (the tokenizer's and the config's / generation_config's EOS ids) -> finish_reason
"stop", the EOS itself not part of the completion; a stop string -> the text cut before it,
"stop" (stop strings are matched on the host after decoding, so a batch runs to its EOS or
max_tokens); max_tokens -> "length". With logprobs, the token lists cover the returned text (with
a stop string, the last token may run into it). A `<think>...</think>` block at the start is
moved to Completion.reasoning. Usage: the prompt's tokens (once per request, as APIs count them)
and the completion tokens (kept tokens, plus the EOS when it ended the row); cost is what
`budget` prices them at (normally 0).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from jaxdistill import evaluate, files, partitioning
from jaxdistill.data import tokenizer as tokenizer_lib
from jaxdistill.models import decode, llama
from jaxdistill.models import hf as hf_io
from jaxdistill.teachers import prompts
from jaxdistill.teachers.base import Budget, Completion, Message, Request, Response, Sampling

FAMILIES = llama.MODEL_TYPES  # the HF model types it runs


# --------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class Row:
  """One sequence to decode: a prompt's token ids, one sample's randomness and its sampling."""
  prompt_ids: tuple[int, ...]
  seed: int
  sample_index: int
  temperature: float = 0.7
  top_p: float = 1.0
  top_k: int = 0
  max_tokens: int = 256
  top_logprobs: int | None = None  # None: no logprobs; 0: the chosen tokens'; k: and the top k
  stop: tuple[str, ...] = ()

  @classmethod
  def of(cls, prompt_ids: Sequence[int], seed: int, sample_index: int, sampling: Sampling) -> "Row":
    return cls(tuple(prompt_ids), seed, sample_index, sampling.temperature, sampling.top_p,
               sampling.top_k, sampling.max_tokens,
               sampling.top_logprobs if sampling.top_logprobs > 0 else None, tuple(sampling.stop))


@dataclasses.dataclass
class Decoded:
  completion: Completion  # text as generated (no reasoning split)
  completion_tokens: int


def check_sampling(s: Sampling | Row) -> None:
  """ValueError naming the bad field."""
  if not s.temperature >= 0:
    raise ValueError(f"temperature must be >= 0, got {s.temperature}")
  if not 0 < s.top_p <= 1:
    raise ValueError(f"top_p must be in (0, 1], got {s.top_p}")
  if s.top_k < 0:
    raise ValueError(f"top_k must be >= 0, got {s.top_k}")
  if s.max_tokens < 1:
    raise ValueError(f"max_tokens must be >= 1, got {s.max_tokens}")
  if s.top_logprobs is not None and s.top_logprobs < 0:
    raise ValueError(f"top_logprobs must be >= 0, got {s.top_logprobs}")


def length_bucket(n: int, smallest: int = 16) -> int:
  """The next of 16, 24, 32, 48, 64, 96, ... >= n: shapes stay few (compiles) and stable
  (determinism), with at most a third of padding."""
  b = smallest
  while b < n:
    b = b * 3 // 2 if b & (b - 1) == 0 else b * 4 // 3
  return b


def row_bucket(n: int, shards: int, batch_size: int) -> int:
  """Rows of a batch of n: shards x the next power of two, at most batch_size rounded to shards."""
  per_shard = -(-n // shards)
  return min(shards * (1 << (per_shard - 1).bit_length()), -(-batch_size // shards) * shards)


def plan_batches(sizes: Sequence[int], batch_size: int) -> list[list[tuple[int, int, int]]]:
  """Batches of (request index, first sample, end sample) for requests of `sizes` rows, in order.
  A request that fits in a batch is never split (its Response is complete after one batch); a
  larger one fills the current batch and continues in the next ones."""
  batches, current, room = [], [], batch_size
  for i, size in enumerate(sizes):
    if current and room < size <= batch_size:
      batches.append(current)
      current, room = [], batch_size
    start = 0
    while start < size:
      take = min(room, size - start)
      current.append((i, start, start + take))
      start, room = start + take, room - take
      if room == 0:
        batches.append(current)
        current, room = [], batch_size
  if current:
    batches.append(current)
  return batches


def split_reasoning(text: str) -> tuple[str, str]:
  """(answer, reasoning) of a completion with a leading `<think>...</think>` block (the opening
  tag may be in the prompt, as some chat templates put it there); else (text, "")."""
  head, sep, tail = text.partition("</think>")
  if not sep or "<think>" in tail:
    return text, ""
  return tail.lstrip(), head.strip().removeprefix("<think>").strip()


def _eos_ids(checkpoint: str, tokenizer, config) -> tuple[int, ...]:
  """Every id that ends a completion: the tokenizer's EOS, config.json's and generation_config's
  (chat models end a turn with their own token, e.g. Qwen's <|im_end|>)."""
  ids = {int(tokenizer.eos_id)}
  for value in (config.eos_token_id, _generation_eos(checkpoint)):
    if value is not None:
      ids.update(int(i) for i in (value if isinstance(value, (list, tuple)) else [value]))
  return tuple(sorted(ids))


def _generation_eos(checkpoint: str) -> Any:
  path = epath.Path(checkpoint) / "generation_config.json"
  if not path.is_file():
    return None
  try:
    return json.loads(path.read_text()).get("eos_token_id")
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: invalid JSON ({e})") from e


def default_rules():
  from configs import base  # pylint: disable=g-import-not-at-top
  return base.get_config().logical_axis_rules


# --------------------------------------------------------------------------- teacher


def checkpoint_name(checkpoint: str) -> str:
  """The directory's name, or its run's for a run's export (RUN/hf): the teacher's default name."""
  path = os.path.normpath(files.absolute(checkpoint))
  name = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) if name == "hf" else name


class LocalTeacher:
  """The Teacher protocol over a local Llama-family checkpoint (see the module docstring).

  `stats` counts decode batches and rows ("batches", "rows", "rows_per_batch" [list]);
  `eos_ids` are the ids that end a completion.
  """

  def __init__(self, checkpoint: str, *, mesh: jax.sharding.Mesh | None = None, rules=None,
               batch_size: int = 32, chat_template: str = "auto", name: str | None = None,
               seed: int = 0, dtype: str | None = None):
    hf_config = hf_io.read_config(checkpoint)
    if hf_config.get("model_type") not in FAMILIES:
      raise ValueError(f"{os.path.join(checkpoint, hf_io.CONFIG)}: model_type "
                       f"{hf_config.get('model_type')!r} is not a decoder the local teacher runs "
                       f"(supported: {', '.join(FAMILIES)})")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if chat_template not in ("auto", "none"):
      raise ValueError(f"chat_template must be 'auto' or 'none', got {chat_template!r}")
    self.tokenizer = tokenizer_lib.load_tokenizer(checkpoint)  # before the weights: fails fast
    self.mesh = mesh or partitioning.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    overrides = {"dtype": dtype} if dtype else {}
    self.model = hf_io.load(checkpoint, llama, mesh=self.mesh, rules=default_rules() if rules is None else rules,
                            **overrides)
    self.graphdef, self.state = nnx.split(self.model)
    self.config = self.model.config
    self.eos_ids = _eos_ids(checkpoint, self.tokenizer, self.config)
    self.name = name or checkpoint_name(checkpoint)
    self.batch_size = batch_size
    self.chat_template = chat_template
    self.seed = seed
    self.shards = int(np.prod([self.mesh.shape[a] for a in partitioning.BATCH_AXES]))
    self.stats = {"batches": 0, "rows": 0, "rows_per_batch": []}
    self._pieces: dict[int, str] = {}

  # ---- prompts

  def encode_prompt(self, prompt: str | Sequence[Message]) -> list[int]:
    """Token ids of a text prompt (as is: no EOS, no special tokens added) or of chat messages
    rendered by `prompts.apply_chat_template` ("auto": the tokenizer's chat template when it has
    one, else `prompts.plain_join`; "none": always `plain_join`)."""
    if isinstance(prompt, str):
      text = prompt
    elif self.chat_template == "none":
      text = prompts.plain_join(prompt)
    else:
      text = prompts.apply_chat_template(self.tokenizer.hf, prompt)
    return self.tokenizer._encode(text)  # pylint: disable=protected-access

  def check_prompt(self, ids: Sequence[int], max_tokens: int) -> None:
    """ValueError when a prompt cannot be decoded: empty, or past the model's positions."""
    if not ids:
      raise ValueError("prompt is empty (encodes to no tokens)")
    limit = self.config.max_position_embeddings
    if len(ids) + max_tokens > limit:
      raise ValueError(f"prompt of {len(ids)} tokens + max_tokens {max_tokens} exceeds the model's "
                       f"max_position_embeddings {limit}")

  # ---- the protocol

  def generate(self, requests: Sequence[Request], sampling: Sampling, budget: Budget
               ) -> Iterator[Response]:
    """Yields one Response per request after the decode batch that finishes it (see the module
    docstring for batching order, seeding and budget)."""
    check_sampling(sampling)
    ready = []
    for req in requests:
      try:
        ids = self.encode_prompt(req.prompt)
        self.check_prompt(ids, sampling.max_tokens)
      except ValueError as e:
        yield Response(req, [], error=f"{req.example_id}: {e}")
        continue
      if not req.sample_indices:
        yield Response(req, [], prompt_tokens=len(ids))
        continue
      ready.append((req, ids))
    ready.sort(key=lambda r: (len(r[1]), r[0].example_id))
    yield from self._generate_sorted(ready, sampling, budget)

  def _generate_sorted(self, ready, sampling: Sampling, budget: Budget) -> Iterator[Response]:
    reserved: dict[int, float] = {}  # request index -> its reservation
    refused: set[int] = set()
    done: dict[int, list[Completion]] = {}
    tokens_out: dict[int, int] = {}
    started: dict[int, float] = {}
    for batch in plan_batches([len(r.sample_indices) for r, _ in ready], self.batch_size):
      chunks = []
      for i, start, end in batch:
        if i not in reserved and i not in refused:
          worst = budget.reserve(len(ready[i][1]), sampling.max_tokens * len(ready[i][0].sample_indices))
          if worst is None:
            refused.add(i)
          else:
            reserved[i], started[i] = worst, time.perf_counter()
        if i in reserved:
          chunks.append((i, start, end))
      if not chunks:
        break  # the budget is spent: nothing more is sent
      rows = [Row.of(ready[i][1], ready[i][0].seed, ready[i][0].sample_indices[k], sampling)
              for i, start, end in chunks for k in range(start, end)]
      decoded = iter(self.decode_rows(rows))
      for i, start, end in chunks:
        for _ in range(start, end):
          d = next(decoded)
          done.setdefault(i, []).append(_with_reasoning(d.completion))
          tokens_out[i] = tokens_out.get(i, 0) + d.completion_tokens
        if end == len(ready[i][0].sample_indices):
          req, ids = ready[i]
          cost = budget.settle(reserved[i], len(ids), tokens_out[i])
          yield Response(req, done.pop(i), prompt_tokens=len(ids), completion_tokens=tokens_out[i],
                         cost_usd=cost, seconds=time.perf_counter() - started[i])

  # ---- decoding

  def decode_rows(self, rows: Sequence[Row]) -> list[Decoded]:
    """Decodes rows (any mix of prompts and sampling parameters) in batches of `batch_size`, in
    the given order; one Decoded per row."""
    out = []
    for start in range(0, len(rows), self.batch_size):
      out.extend(self._decode_batch(rows[start:start + self.batch_size]))
    return out

  def _decode_batch(self, rows: Sequence[Row]) -> list[Decoded]:
    for row in rows:
      check_sampling(row)
    arrays = self._batch_arrays(rows)
    out = decode.causal_lm_sample(
        self.graphdef, self.state, arrays.pop("prompt_ids"), arrays.pop("prompt_mask"),
        jnp.asarray(self.eos_ids, jnp.int32), jnp.uint32(self.seed % 2**32), **arrays,
        **self._static_args(rows))
    out = {k: evaluate.to_host(v) for k, v in out.items()}
    self.stats["batches"] += 1
    self.stats["rows"] += len(rows)
    self.stats["rows_per_batch"].append(len(rows))
    return [self._finish(row, {k: v[r] for k, v in out.items()}) for r, row in enumerate(rows)]

  def _static_args(self, rows: Sequence[Row]) -> dict[str, Any]:
    """The batch's compile-time choices: decode length (bucketed), which filters any sampled row
    uses, and the most top logprobs any row wants (None: no logprob records at all)."""
    hot = [r for r in rows if r.temperature > 0]
    wanted = [r.top_logprobs for r in rows if r.top_logprobs is not None]
    return {"max_new_tokens": length_bucket(max(r.max_tokens for r in rows)),
            "filter_top_k": any(r.top_k > 0 for r in hot),
            "filter_top_p": any(r.top_p < 1 for r in hot),
            "top_logprobs": min(max(wanted), self.config.vocab_size) if wanted else None,
            "pad_id": int(self.tokenizer.pad_id)}

  def _batch_arrays(self, rows: Sequence[Row]) -> dict[str, jax.Array]:
    """Left-padded prompts and per-row parameters, padded to the bucketed shape (padding rows
    repeat row 0, greedy, stopped after one token) and placed on the mesh's batch axes."""
    n = row_bucket(len(rows), self.shards, self.batch_size)
    length = length_bucket(max(len(r.prompt_ids) for r in rows))
    filler = dataclasses.replace(rows[0], temperature=0.0, max_tokens=1)
    rows = list(rows) + [filler] * (n - len(rows))
    ids = np.full((n, length), self.tokenizer.pad_id, np.int32)
    mask = np.zeros((n, length), np.int32)
    for r, row in enumerate(rows):
      ids[r, length - len(row.prompt_ids):] = row.prompt_ids
      mask[r, length - len(row.prompt_ids):] = 1
    column = lambda field, dtype: np.asarray([getattr(r, field) for r in rows], dtype)
    seeds = np.asarray([r.seed % 2**32 for r in rows], np.uint32)  # any int: keys take 32 bits
    arrays = {"prompt_ids": ids, "prompt_mask": mask, "seeds": seeds,
              "sample_ids": column("sample_index", np.uint32),
              "temperature": column("temperature", np.float32), "top_k": column("top_k", np.int32),
              "top_p": column("top_p", np.float32), "limit": column("max_tokens", np.int32)}
    return evaluate.to_global(arrays, self.mesh)

  def _finish(self, row: Row, out: dict[str, np.ndarray]) -> Decoded:
    """One row's tokens -> its Completion: cut at EOS, max_tokens, then the first stop string."""
    ids = [int(t) for t in out["tokens"][:row.max_tokens]]
    ended = next((j for j, t in enumerate(ids) if t in self.eos_ids), None)
    finish = "length"
    if ended is not None:
      ids, finish = ids[:ended], "stop"
    text = self.text(ids)
    cut = _first_stop(text, row.stop)
    if cut is not None:
      text, finish = text[:cut], "stop"
      ids = ids[:self._tokens_covering(ids, cut)]
    completion = Completion(row.sample_index, text, finish_reason=finish)
    if row.top_logprobs is not None:
      self._add_logprobs(completion, ids, out, row.top_logprobs)
    used = len(ids) + (1 if ended is not None and cut is None else 0)
    return Decoded(completion, used)

  def _add_logprobs(self, completion: Completion, ids: list[int], out: dict[str, np.ndarray],
                    k: int) -> None:
    t = len(ids)
    completion.token_ids = ids
    completion.tokens = [self.piece(i) for i in ids]
    completion.logprobs = out["logprobs"][:t].astype(float).tolist()
    top_ids = out["top_ids"][:t, :k].tolist() if k else [[] for _ in ids]
    completion.top_ids = top_ids
    completion.top_tokens = [[self.piece(i) for i in step] for step in top_ids]
    completion.top_logprobs = (out["top_logprobs"][:t, :k].astype(float).tolist() if k
                               else [[] for _ in ids])

  def _tokens_covering(self, ids: list[int], chars: int) -> int:
    """The fewest leading tokens whose text has at least `chars` characters (binary search)."""
    lo, hi = 0, len(ids)
    while lo < hi:
      mid = (lo + hi) // 2
      if len(self.text(ids[:mid])) >= chars:
        hi = mid
      else:
        lo = mid + 1
    return lo

  def text(self, ids: Sequence[int]) -> str:
    """Text of generated ids (special tokens skipped)."""
    return self.tokenizer._decode(list(ids))  # pylint: disable=protected-access

  def piece(self, token_id: int) -> str:
    """One token's text, special tokens included (cached: the vocabulary is bounded)."""
    if token_id not in self._pieces:
      hf = getattr(self.tokenizer, "hf", None)
      self._pieces[token_id] = (hf.decode([token_id], skip_special_tokens=False) if hf is not None
                                else self.text([token_id]))
    return self._pieces[token_id]


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
  found = [i for i in (text.find(s) for s in stops if s) if i >= 0]
  return min(found) if found else None


def _with_reasoning(c: Completion) -> Completion:
  answer, reasoning = split_reasoning(c.text)
  return dataclasses.replace(c, text=answer, reasoning=reasoning) if reasoning else c
