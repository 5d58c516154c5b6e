"""Teacher-logit distillation as a method: a top-k KL term on the rationale tokens (objectives/kd.py).

Enabled by a `config.kd` section (configs/kd.py). The teacher cache at `data.cache_dir` must hold the
teacher's token ids and top-k logprobs (`python -m jaxdistill.teach` with a local teacher and
`teacher.top_logprobs=K`). Every teacher rationale a record trains on is tokenized as the student reads
it and aligned with the tokens the teacher generated (the rationale is a span of the teacher's output:
the parser cut the answer sentence off); each aligned target token carries the teacher's top-k
distribution at that step, other tokens none. The term is added after the objective's, weighted
`kd.weight`, for seq2seq and decoder students.

Refused at start, before any training: a student whose tokenizer is not the teacher's (the cached ids
would index another vocabulary: cross-tokenizer KD is silently wrong), a cache without logprobs, and
a run where under `kd.min_token_fraction` of the teacher-rationale tokens get a teacher distribution.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from jaxdistill.data import formats
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.errors import ConfigError
from jaxdistill.methods.base import Method
from jaxdistill.objectives import kd
from jaxdistill.objectives.losses import WeightedTerm

IDS_KEY = "decoder_kd_ids"  # per target token: 1 + its row of the teacher table, 0 = no teacher
COLUMNS = ("example_id", "teacher", "prompt_id", "rationale", "token_ids", "top_ids", "top_logprobs")


@dataclasses.dataclass(frozen=True)
class TeacherTable:
  """Every cached teacher step: `top_ids` / `top_logprobs` [N, K] (-inf pads a shorter top-k), and
  per (example id, rationale text) the teacher's generated ids and the row of its first step."""
  top_ids: np.ndarray
  top_logprobs: np.ndarray
  spans: Mapping[tuple[str, str], tuple[int, tuple[int, ...]]]


def read_table(cache: RationaleCache, teachers: Sequence[str]) -> TeacherTable:
  """The teacher table of `cache` (rows of the named "teacher/prompt_id" entries only)."""
  table = cache.table()
  missing = [c for c in COLUMNS if c not in table.column_names]
  if missing:
    raise ConfigError(f"config.data.cache_dir={cache.path}: no {', '.join(missing)} columns: the teacher kept no "
                      "logprobs; run `python -m jaxdistill.teach` with a local teacher and "
                      "--config.teacher.top_logprobs=K (API teachers return token texts, not ids)")
  rows = table.select(list(COLUMNS)).to_pylist()
  k = max((len(top) for r in rows if r["top_ids"] for top in r["top_ids"]), default=0)
  ids, logprobs, spans, n = [], [], {}, 0
  for r in rows:
    key = (r["example_id"], r["rationale"] or "")
    if f"{r['teacher']}/{r['prompt_id']}" not in teachers or not r["token_ids"] or key in spans:
      continue  # another teacher, no logprobs, or the same text already held (same steps)
    steps = len(r["token_ids"])
    block_ids = np.zeros((steps, k), np.int32)
    block_lp = np.full((steps, k), -np.inf, np.float32)
    for i, (top_ids, top_lp) in enumerate(zip(r["top_ids"], r["top_logprobs"])):
      block_ids[i, :len(top_ids)] = top_ids
      block_lp[i, :len(top_lp)] = top_lp
    ids.append(block_ids)
    logprobs.append(block_lp)
    spans[key] = (n, tuple(int(t) for t in r["token_ids"]))
    n += steps
  if not spans:
    raise ConfigError(f"config.data.cache_dir={cache.path}: no rationale row carries token logprobs "
                      f"(teachers {sorted(teachers)})")
  return TeacherTable(np.concatenate(ids), np.concatenate(logprobs), spans)


@functools.lru_cache(maxsize=1 << 16)  # every epoch tokenizes the same records again
def align(student: tuple[int, ...], teacher: tuple[int, ...]) -> tuple[int, int, int]:
  """(student start, teacher start, length) of the longest run of the student's rationale tokens that
  the teacher generated, starting at the student's first or second token (a leading space may
  tokenize differently) and anywhere in the teacher's output; length 0 when none."""
  best = (0, 0, 0)
  for s0 in range(min(2, len(student))):
    for t0 in range(len(teacher)):
      if teacher[t0] != student[s0]:
        continue
      n = 0
      while s0 + n < len(student) and t0 + n < len(teacher) and student[s0 + n] == teacher[t0 + n]:
        n += 1
      if n > best[2]:
        best = (s0, t0, n)
  return best


@dataclasses.dataclass(frozen=True)
class TeacherSteps:
  """The token feature: 1 + the teacher-table row of each aligned rationale token (a class, so grain
  can pickle it)."""
  spans: Mapping[tuple[str, str], tuple[int, tuple[int, ...]]]

  def __call__(self, record, target_ids: Sequence[int], task_ids: Sequence[int]) -> np.ndarray:
    out = np.zeros(len(target_ids), np.int32)
    span = self.spans.get((record.example_id, record.rationale)) if record.rationale else None
    if span is None:
      return out
    positions = [p for p, t in enumerate(task_ids) if t == formats.RATIONALE]
    s0, t0, n = align(tuple(int(target_ids[p]) for p in positions), span[1])
    for i in range(n):
      out[positions[s0 + i]] = span[0] + t0 + i + 1
    return out


@dataclasses.dataclass(frozen=True)
class TeacherTopK:
  """The batch view: `decoder_kd_ids` -> `kd_top_ids` [B, L, K] and `kd_top_logprobs` [B, L, K]
  (-inf where a token has no teacher)."""
  top_ids: np.ndarray
  top_logprobs: np.ndarray

  def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(batch)
    rows = out.pop(IDS_KEY)
    has = (rows > 0)[..., None]
    index = np.maximum(rows - 1, 0)
    out["kd_top_ids"] = np.where(has, self.top_ids[index], 0).astype(np.int32)
    out["kd_top_logprobs"] = np.where(has, self.top_logprobs[index], -np.inf).astype(np.float32)
    return out


class KD(Method):
  name = "kd"

  def __init__(self, kd_config, objective):
    self.config, self.objective = kd_config, objective
    self.table: TeacherTable | None = None
    self.coverage: dict[str, Any] = {}

  @classmethod
  def from_config(cls, config) -> "KD | None":
    kd_config = config.get("kd")
    if kd_config is None:
      return None
    if float(kd_config.weight) <= 0 or float(kd_config.temperature) <= 0:
      raise ConfigError(f"config.kd: weight={kd_config.weight} and temperature={kd_config.temperature} must be > 0")
    if not 0.0 <= float(kd_config.min_token_fraction) <= 1.0:
      raise ConfigError(f"config.kd.min_token_fraction={kd_config.min_token_fraction}: must be in [0, 1]")
    if config.objective.name not in ("cot", "hybrid"):
      raise ConfigError(f"config.kd distils teacher rationales: config.objective.name={config.objective.name!r} "
                        "trains on none (use cot or hybrid)")
    if not config.data.cache_dir:
      raise ConfigError("config.kd needs config.data.cache_dir: a teacher cache written by `python -m "
                        "jaxdistill.teach` with --config.teacher.top_logprobs=K")
    return cls(kd_config, config.objective)

  def start(self, config, dataset, tokenizer, workdir: str, is_chief: bool) -> None:
    del workdir, is_chief
    cache = RationaleCache.open(config.data.cache_dir)
    teachers = (cache.manifest.get("source") or {}).get("teachers") or {}
    self._check_tokenizer(cache.path, teachers, tokenizer)
    self.table = read_table(cache, list(teachers))
    if self.table.top_ids.max(initial=0) >= tokenizer.vocab_size:
      raise ConfigError(f"config.data.cache_dir={cache.path}: teacher ids up to {int(self.table.top_ids.max())} "
                        f"do not fit the student's vocabulary of {tokenizer.vocab_size}")
    self.coverage = self._coverage(dataset, tokenizer)
    logging.info("kd: %s", self.coverage)
    floor = float(self.config.min_token_fraction)
    if self.coverage["token_fraction"] < floor:
      raise ConfigError(
          f"config.kd: only {self.coverage['token_fraction']:.1%} of the {self.coverage['rationale_tokens']} "
          f"teacher-rationale tokens of the training set align with the teacher's cached steps (at least "
          f"config.kd.min_token_fraction={floor}); were the rationales re-parsed or the cache written for "
          "other examples?")

  @staticmethod
  def _check_tokenizer(path: str, teachers: Mapping[str, Mapping], tokenizer) -> None:
    student = tokenizer.fingerprint()
    for name, info in sorted(teachers.items()):
      teacher = info.get("tokenizer")
      if teacher is None:
        raise ConfigError(f"config.data.cache_dir={path}: teacher {name!r} recorded no tokenizer fingerprint "
                          "(an API teacher, or a cache written before fingerprints): its token ids cannot be "
                          "checked against the student's vocabulary")
      if teacher != student:
        raise ConfigError(
            f"config.kd: the student's tokenizer ({tokenizer.name}, fingerprint {student}) is not the teacher's "
            f"({name!r} in {path}: {info.get('model')}, fingerprint {teacher}); teacher-logit distillation needs "
            f"one vocabulary: set --config.model.tokenizer={info.get('model') or 'TEACHER_DIR'}")

  def _coverage(self, dataset, tokenizer) -> dict[str, Any]:
    """How many teacher-rationale tokens of the training examples get a teacher distribution."""
    feature = TeacherSteps(self.table.spans)
    tokens = aligned = rationales = with_steps = 0
    for ex in dataset.splits["train"]:
      for r in dataset.rationales.get(ex.id, ()):
        ids = tokenizer.encode(r.rationale)
        record = formats.Seq2SeqRecord("", r.rationale, formats.RATIONALE, 1.0, ex.id, rationale=r.rationale)
        got = int(np.count_nonzero(feature(record, ids, [formats.RATIONALE] * len(ids))))
        rationales, tokens, aligned, with_steps = rationales + 1, tokens + len(ids), aligned + got, with_steps + (got > 0)
    return {"teacher_rationales": rationales, "with_teacher_steps": with_steps, "rationale_tokens": tokens,
            "aligned_tokens": aligned, "token_fraction": aligned / max(tokens, 1), "top_k": int(self.table.top_ids.shape[1])}

  def wrap_student(self, model, spec, rngs):
    del rngs
    if spec.kind == "encoder":
      raise ConfigError("config.kd distils the teacher's next-token distributions into a generating student "
                        "(seq2seq or decoder); an encoder student's label comes from a classification head")
    return model

  def token_features(self):
    return {IDS_KEY: TeacherSteps(self.table.spans)}

  def batch_view(self):
    return TeacherTopK(self.table.top_ids, self.table.top_logprobs)

  def loss_terms(self, kind: str) -> list[WeightedTerm]:
    del kind
    return [WeightedTerm("topk_kl", float(self.config.weight), kd.topk_kl_term(float(self.config.temperature)))]

  def result(self, test_metrics):
    del test_metrics
    return {"kd": {"weight": float(self.config.weight), "temperature": float(self.config.temperature),
                   **self.coverage}}
