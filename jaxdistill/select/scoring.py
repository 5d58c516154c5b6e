"""Rationale Difficulty under a scoring student (see jaxdistill/select/__init__.py for RD).

RD of a candidate = exp(NLL(gold | question + rationale) - NLL(gold | question)): `rd_records` builds
the two label records, `record_nll` scores records with a `Scorer` (a generating student loaded by
`load_scorer`), and `rationale_difficulty` pairs them up, keeping every record's NLL in a
`ScoreStore` so that a killed or repeated selection scores nothing twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import uuid
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from flax import nnx

from jaxdistill import evaluate, files, kinds, partitioning
from jaxdistill.data import formats, pipeline
from jaxdistill.data import tokenizer as tokenizer_lib
from jaxdistill.data.examples import Example, Rationale
from jaxdistill.models import families, hf
from jaxdistill.objectives import losses
from jaxdistill.select.stages import Key, key_of

SCORE_COLUMNS = ("rd", "nll_with", "nll_without")
RATIONALE_FIELD = "rationale"  # the extra input field of "question + rationale" records


def fingerprint(*parts: Any) -> str:
  """A short hash of JSON-able parts: names score stores and guards reader runs."""
  return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def with_rationale(ex: Example, rationale: str) -> Example:
  """The example with the rationale as one more input field (after the question's own fields)."""
  return dataclasses.replace(ex, inputs={**ex.inputs, RATIONALE_FIELD: rationale})


def rd_records(ex: Example, rationale: str) -> tuple[formats.Seq2SeqRecord, formats.Seq2SeqRecord]:
  """(question + rationale, question alone) label records; both target the gold label."""
  return formats.label_record(with_rationale(ex, rationale), None), formats.label_record(ex, None)


def record_key(record: formats.Seq2SeqRecord) -> str:
  """Content address of a record: equal texts share a score, changed texts never reuse one."""
  return hashlib.sha1(f"{record.source}\x00{record.target}".encode()).hexdigest()[:24]


@dataclasses.dataclass
class Scorer:
  """A generating student that scores records: model, its tokenizer, kind, mesh and batch shape."""
  model: nnx.Module
  tokenizer: tokenizer_lib.Tokenizer
  kind: str  # seq2seq | decoder
  mesh: jax.sharding.Mesh
  batch_size: int = 64
  max_source_len: int = 256
  max_target_len: int = 32


@nnx.jit
def _row_nll(model, batch):
  """Per row: summed cross-entropy of the target tokens and their count."""
  logits = model(batch)["logits"]
  xent = losses.token_cross_entropy(logits, batch["decoder_target_ids"])
  weights = (batch["decoder_loss_weights"] > 0).astype(jnp.float32)
  return (xent * weights).sum(-1), weights.sum(-1)


def record_nll(scorer: Scorer, records: Sequence[formats.Seq2SeqRecord]) -> np.ndarray:
  """Mean target-token NLL of each record (one jitted forward per batch of rows)."""
  data_devices = math.prod(scorer.mesh.shape[a] for a in partitioning.BATCH_AXES)
  if scorer.batch_size % data_devices:
    raise ValueError(f"config.select.scorer.score_batch_size={scorer.batch_size} is not divisible by the "
                     f"{data_devices} data-parallel devices of the mesh")
  out = np.full(len(records), np.nan, np.float64)
  view = kinds.of(scorer.kind).batch_view(scorer.tokenizer)
  for batch, index in pipeline.make_eval_batches(records, scorer.tokenizer, scorer.batch_size,
                                                 scorer.max_source_len, scorer.max_target_len):
    total, tokens = _row_nll(scorer.model, evaluate.to_global(view(batch) if view else batch, scorer.mesh))
    total, tokens = evaluate.to_host(total), evaluate.to_host(tokens)
    real = index >= 0
    out[index[real]] = total[real] / np.maximum(tokens[real], 1.0)
  return out


class ScoreStore:
  """Record NLLs of one scorer on disk: Parquet shards (key, nll), one per scored chunk,
  written to a temp file and renamed, so a killed run loses at most the chunk in flight."""

  def __init__(self, directory: str):
    self.directory = directory
    self.nll: dict[str, float] = {}
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    shards = epath.Path(directory).glob("part-*.parquet") if epath.Path(directory).is_dir() else []
    for path in sorted(shards, key=os.fspath):
      t = pq.read_table(pa.BufferReader(path.read_bytes()))  # through epath: local or remote
      self.nll.update(zip(t.column("key").to_pylist(), t.column("nll").to_pylist()))

  def add(self, nll: Mapping[str, float]) -> None:
    import pyarrow as pa  # pylint: disable=g-import-not-at-top
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    self.nll.update(nll)
    if jax.process_index() != 0 or not nll:
      return
    epath.Path(self.directory).mkdir(parents=True, exist_ok=True)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    with files.atomic_open(os.path.join(self.directory, name)) as f:  # a hidden temp name until whole
      pq.write_table(pa.table({"key": list(nll), "nll": [float(v) for v in nll.values()]}), f)


def rationale_difficulty(scorer: Scorer, examples: Mapping[str, Example],
                         cands: Mapping[str, Sequence[Rationale]], *, store: ScoreStore | None = None,
                         chunk: int = 2048) -> dict[Key, dict[str, float]]:
  """RD of every candidate: {key: {"nll_with", "nll_without", "rd"}}, rd = exp(nll_with - nll_without)
  (the ratio of the two perplexities). Records already in `store` are not scored again; new ones
  are scored in chunks (sorted by length, so rows of a chunk pad little) and saved per chunk."""
  records: dict[str, formats.Seq2SeqRecord] = {}
  pairs = []
  for ex_id, rs in cands.items():
    for r in rs:
      with_rec, without_rec = rd_records(examples[ex_id], r.rationale)
      pairs.append((key_of(r), record_key(with_rec), record_key(without_rec)))
      records.setdefault(pairs[-1][1], with_rec)
      records.setdefault(pairs[-1][2], without_rec)
  known = dict(store.nll) if store is not None else {}
  # Chunks are cut from all records, not from those left to score, so a resumed run pads and
  # batches every record exactly as an uninterrupted one (identical NLLs, bit for bit).
  ordered = sorted(records, key=lambda k: (len(records[k].source), k))
  todo = sum(k not in known for k in ordered)
  if todo:
    logging.info("scoring %d records (%d already scored)", todo, len(records) - todo)
  chunk = max(int(chunk), 1)
  for start in range(0, len(ordered), chunk):
    part = [k for k in ordered[start:start + chunk] if k not in known]
    if not part:
      continue
    new = dict(zip(part, record_nll(scorer, [records[k] for k in part]).tolist()))
    known.update(new)
    if store is not None:
      store.add(new)
  return {key: {"nll_with": known[w], "nll_without": known[wo], "rd": math.exp(known[w] - known[wo])}
          for key, w, wo in pairs}



# --------------------------------------------------------------------------- scorers

def scorer_tokenizer(workdir: str, spec: str = "auto") -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: the one exported with WORKDIR/hf, else the trained one in WORKDIR/tokenizer."""
  if spec != "auto":
    return tokenizer_lib.load_tokenizer(spec)
  hf_dir, trained = os.path.join(workdir, "hf"), os.path.join(workdir, "tokenizer")
  if (epath.Path(hf_dir) / "tokenizer.json").exists():
    return tokenizer_lib.load_tokenizer(hf_dir)
  if tokenizer_lib.is_saved(trained):
    return tokenizer_lib.load_tokenizer(tokenizer_lib.saved_kind(trained) or "bpe", save_dir=trained)
  raise FileNotFoundError(f"config.select.scorer.workdir={workdir}: no tokenizer in hf/ or tokenizer/ "
                          "(a byte-tokenizer run saves none: set config.select.scorer.tokenizer=byte)")


def load_scorer(workdir: str, mesh, rules, *, tokenizer: str = "auto", batch_size: int = 64,
                max_source_len: int = 256, max_target_len: int = 32) -> Scorer:
  """The best model a jaxdistill run exported to WORKDIR/hf, sharded over `mesh`."""
  hf_dir = os.path.join(workdir, "hf")
  if not (epath.Path(hf_dir) / hf.CONFIG).exists():
    raise FileNotFoundError(f"config.select.scorer.workdir={workdir}: no {hf_dir}/{hf.CONFIG} (finished runs "
                            "export their best model there unless config.train.export_hf=False)")
  hf_config = hf.read_config(hf_dir)
  kind = families.kind(families.family_for(hf_config, os.path.join(hf_dir, hf.CONFIG)))  # unknown: a clear error
  if not kinds.of(kind).generates:
    raise ValueError(f"config.select.scorer.workdir={workdir}: an encoder student ({hf_config['model_type']}) "
                     "predicts labels with a classification head and has no answer perplexity; RD needs a "
                     "generating (seq2seq or decoder) student")
  tok = scorer_tokenizer(workdir, tokenizer)
  model = families.load(hf_dir, mesh=mesh, rules=rules)
  if model.config.vocab_size < tok.vocab_size:
    raise ValueError(f"{hf_dir}: the model has {model.config.vocab_size} token embeddings but its tokenizer "
                     f"{tok.vocab_size} ids")
  return Scorer(model, tok, kind, mesh, batch_size, max_source_len, max_target_len)
