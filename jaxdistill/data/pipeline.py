"""Tokenize, pack and batch Seq2SeqRecords with Grain into the Batch layout (BATCH_KEYS).

Training stream (per host):

  MapDataset.range(n)            record indices of one epoch
    .shuffle(seed)               a different permutation per epoch (grain folds in the epoch)
    .repeat(num_epochs)          None = forever
    .map_with_index              -> (epoch, index): records may be re-drawn per epoch
    [process_index::process_count]   hosts split the *global* stream: disjoint, covering
    .map(tokenize)               truncate, EOS, decoder inputs shifted right (start = pad)
    .to_iter_dataset()
    pack (packing=True) both length budgets at once, or pad
    .batch(per_host_batch_size, drop_remainder=True)

Everything before packing is index-addressed, so the iterator state is tiny (a next
index plus the packer's own state) and `get_state()/set_state()` resume exactly; the
iterator is also an Orbax checkpointable (grain's `save`/`load` protocol and
`grain.checkpoint.CheckpointSave/Restore`).

Packers (`packer=`):
  "pool"            `PoolPackIterDataset`: keeps a pool of the next `num_packing_bins`
                    records (default max(64, batch size)); each row starts with the
                    oldest record and is completed by the subset of the pool that fills
                    the most of *both* remaining budgets (exact 2-D subset sum). A record
                    waits at most pool-size rows. State: the pool's stream indices.
  "first_fit"       grain's FirstFitPackIterDataset with `num_packing_bins` bins (default
                    the batch size): all bins are emitted as soon as one record fits none.
Why "pool": a row has two budgets (encoder, decoder) and Seq2Seq records come in two
shapes (label records: long source, ~2 target tokens; rationale records: the same source,
a long target), so first fit saturates one budget per row and strands the other; more bins
barely help (e-SNLI cot, 216/48: first fit 86%/87% encoder/decoder with 64 bins, 87%/87%
with 1024; pool of 64: 98%/99%). See benchmarks/packing.py.

Row shape: `max_source_len`/`max_target_len` are the row lengths; records are truncated to
`truncate_source_len`/`truncate_target_len` (default: the row lengths). `auto_row_shape` sizes
packed rows from the data so that a row holds a few records and both budgets fill alike.

Packing: each (source, target) pair occupies one segment of a row in both the
encoder and the decoder streams with the same segment id (1..n), positions restart
at 0 per segment, and decoder inputs are shifted *within* each segment because the
shift happens per record before packing. Padding: ids = pad id, segment ids 0, loss
weights 0.
"""

from __future__ import annotations

import atexit
import collections
import functools
import threading
import weakref
from typing import Callable, Iterable, Iterator, Mapping, Sequence, Union

import grain
import numpy as np

from jaxdistill.data.formats import Seq2SeqRecord
from jaxdistill.data.tokenizer import Tokenizer

Batch = dict[str, np.ndarray]
Records = Union[Sequence[Seq2SeqRecord], Callable[[int], Sequence[Seq2SeqRecord]]]

BATCH_KEYS = (
    "encoder_input_ids", "encoder_segment_ids", "encoder_positions", "encoder_labels",
    "decoder_input_ids", "decoder_target_ids", "decoder_segment_ids", "decoder_positions",
    "decoder_loss_weights", "decoder_task_ids",
)
# Token streams (padded with the pad id; every other per-token array is padded with 0).
TOKEN_KEYS = ("encoder_input_ids", "decoder_input_ids", "decoder_target_ids")
# Per-record features before packing/padding: name -> (stream, dtype).
_FEATURES = {
    "encoder_input_ids": ("source", np.int32),
    "encoder_labels": ("source", np.int32),
    "decoder_input_ids": ("target", np.int32),
    "decoder_target_ids": ("target", np.int32),
    "decoder_loss_weights": ("target", np.float32),
    "decoder_task_ids": ("target", np.int32),
}
# Packed along with the others but sharing the segment ids / positions of the anchor.
_PACK_META = ("encoder_labels", "decoder_input_ids", "decoder_loss_weights", "decoder_task_ids")
# A method's per-target-token int feature (methods/base.py TokenFeature): (record, target ids, task
# ids) -> one int32 per target token. Its batch key starts with "decoder_", so it is packed, padded
# (with 0) and moved into causal-LM rows like `decoder_task_ids`.
TokenFeature = Callable[[Seq2SeqRecord, Sequence[int], Sequence[int]], np.ndarray]
TokenFeatures = Mapping[str, TokenFeature]


def _features(extra: Iterable[str] = ()) -> dict[str, tuple[str, type]]:
  """The per-record features: the base ones and the named token features (target stream, int32)."""
  out = dict(_FEATURES)
  for name in extra:
    if not name.startswith("decoder_") or name in out or name in BATCH_KEYS:
      raise ValueError(f"token feature {name!r}: needs a new batch key starting with 'decoder_'")
    out[name] = ("target", np.int32)
  return out


def _extra_keys(feats: Mapping[str, np.ndarray]) -> list[str]:
  return [k for k in feats if k not in _FEATURES]


def tokenize_record(record: Seq2SeqRecord, tokenizer: Tokenizer, max_source_len: int,
                    max_target_len: int, encode: Callable[[str], list[int]] | None = None,
                    token_features: TokenFeatures | None = None) -> dict[str, np.ndarray]:
  """Unpadded features of one record. Over-long sequences are truncated (EOS may be cut).
  `encoder_labels` is 1 + the record's class id at its first source token, 0 elsewhere; each
  of `token_features` adds its per-target-token ids under its own key."""
  encode = encode or tokenizer.encode
  src = list(encode(record.source)[:max_source_len])
  if record.parts:  # combined formats: per-part task ids and weights; one EOS at the end
    tgt, tasks, weights = [], [], []
    for text, task_id, weight in record.parts:
      ids = list(encode(text))[:-1]
      tgt += ids
      tasks += [task_id] * len(ids)
      weights += [weight] * len(ids)
    _, last_task, last_weight = record.parts[-1]
    tgt, tasks, weights = tgt + [tokenizer.eos_id], tasks + [last_task], weights + [last_weight]
    tgt, tasks, weights = tgt[:max_target_len], tasks[:max_target_len], weights[:max_target_len]
  else:
    tgt = list(encode(record.target)[:max_target_len])
    tasks, weights = [record.task_id] * len(tgt), [record.weight] * len(tgt)
  labels = np.zeros(len(src), np.int32)
  if record.class_id >= 0 and len(src):
    labels[0] = record.class_id + 1  # classification heads read a record's first token
  feats = {
      "encoder_input_ids": np.asarray(src, np.int32),
      "encoder_labels": labels,
      "decoder_input_ids": np.asarray([tokenizer.pad_id] + tgt[:-1], np.int32),
      "decoder_target_ids": np.asarray(tgt, np.int32),
      "decoder_loss_weights": np.asarray(weights, np.float32),
      "decoder_task_ids": np.asarray(tasks, np.int32),
  }
  for name, feature in (token_features or {}).items():
    feats[name] = np.asarray(feature(record, tgt, tasks), np.int32)
    if feats[name].shape != (len(tgt),):
      raise ValueError(f"token feature {name!r} gave shape {feats[name].shape} for {len(tgt)} target tokens")
  return feats


def _pad_to(x: np.ndarray, length: int, value) -> np.ndarray:
  out = np.full((length,), value, x.dtype)
  out[:len(x)] = x
  return out


def pad_features(feats: dict[str, np.ndarray], max_source_len: int, max_target_len: int,
                 pad_id: int) -> dict[str, np.ndarray]:
  """One record per row: pad to the length budgets, segment id 1 on real tokens."""
  ls, lt = len(feats["encoder_input_ids"]), len(feats["decoder_target_ids"])
  out = {}
  for name, (stream, _) in _features(_extra_keys(feats)).items():
    length = max_source_len if stream == "source" else max_target_len
    value = pad_id if name in TOKEN_KEYS else 0
    out[name] = _pad_to(feats[name], length, value)
  out["encoder_segment_ids"] = (np.arange(max_source_len) < ls).astype(np.int32)
  out["encoder_positions"] = np.where(out["encoder_segment_ids"] > 0, np.arange(max_source_len), 0).astype(np.int32)
  out["decoder_segment_ids"] = (np.arange(max_target_len) < lt).astype(np.int32)
  out["decoder_positions"] = np.where(out["decoder_segment_ids"] > 0, np.arange(max_target_len), 0).astype(np.int32)
  return {k: out[k] for k in (*BATCH_KEYS, *_extra_keys(feats))}


class _EpochRecords:
  """(epoch, index) -> record; the record list of the last two epochs is cached."""

  def __init__(self, records: Records):
    self._records = records
    self._static = not callable(records)
    self._cache: collections.OrderedDict[int, Sequence[Seq2SeqRecord]] = collections.OrderedDict()
    self._lock = threading.Lock()
    self.size = len(self.epoch(0))
    if self.size == 0:
      raise ValueError("make_train_iterator: no training records")

  def epoch(self, e: int) -> Sequence[Seq2SeqRecord]:
    if self._static:
      return self._records  # type: ignore[return-value]
    with self._lock:
      if e not in self._cache:
        recs = self._records(e)  # type: ignore[operator]
        if self._cache and len(recs) != self.size:
          raise ValueError(f"records for epoch {e} has {len(recs)} records, epoch 0 had {self.size}: "
                           "the per-epoch callable must return the same number every epoch")
        self._cache[e] = recs
        while len(self._cache) > 2:
          self._cache.popitem(last=False)
      return self._cache[e]

  def __getstate__(self):  # picklable for grain's multiprocess prefetch
    return {"_records": self._records, "_static": self._static, "size": self.size}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._cache, self._lock = collections.OrderedDict(), threading.Lock()


class _Tokenize(grain.transforms.Map):
  """Looks up the record and tokenizes it, memoising texts: every epoch repeats the same
  sources and targets, and encoding dominates the pipeline's cost otherwise."""

  def __init__(self, records: _EpochRecords, tokenizer: Tokenizer, max_source_len: int, max_target_len: int,
               cache_size: int = 1 << 18, token_features: TokenFeatures | None = None):
    self.records, self.tokenizer, self.token_features = records, tokenizer, token_features
    self.max_source_len, self.max_target_len = max_source_len, max_target_len
    self.cache_size = cache_size
    self._cache: collections.OrderedDict[str, tuple[int, ...]] = collections.OrderedDict()
    self._lock = threading.Lock()

  def _encode(self, text: str) -> tuple[int, ...]:
    with self._lock:
      ids = self._cache.get(text)
      if ids is not None:
        self._cache.move_to_end(text)
        return ids
    ids = tuple(self.tokenizer.encode(text))
    with self._lock:
      self._cache[text] = ids
      if len(self._cache) > self.cache_size:
        self._cache.popitem(last=False)
    return ids

  def map(self, epoch_and_index):
    epoch, index = epoch_and_index
    record = self.records.epoch(epoch)[index]
    return tokenize_record(record, self.tokenizer, self.max_source_len, self.max_target_len, self._encode,
                           self.token_features)

  def __getstate__(self):
    state = dict(self.__dict__)
    del state["_cache"], state["_lock"]
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._cache, self._lock = collections.OrderedDict(), threading.Lock()


class _EpochIndex(grain.experimental.MapWithIndexTransform):

  def __init__(self, size: int):
    self.size = size

  def map_with_index(self, index: int, element: int):
    return (index // self.size, int(element))


class _Pad(grain.transforms.Map):

  def __init__(self, max_source_len: int, max_target_len: int, pad_id: int):
    self.max_source_len, self.max_target_len, self.pad_id = max_source_len, max_target_len, pad_id

  def map(self, feats):
    return pad_features(feats, self.max_source_len, self.max_target_len, self.pad_id)


class _RenamePacked(grain.transforms.Map):
  """Grain names packing metadata after the anchor feature; rename to the Batch keys."""

  def __init__(self, extra: Sequence[str] = ()):
    self.extra = tuple(extra)  # token features: packed like decoder_task_ids, kept under their names

  def map(self, x):
    return {
        **{k: x[k] for k in self.extra},
        "encoder_input_ids": x["encoder_input_ids"],
        "encoder_segment_ids": x["encoder_input_ids_segment_ids"],
        "encoder_positions": x["encoder_input_ids_positions"],
        "encoder_labels": x["encoder_labels"],
        "decoder_input_ids": x["decoder_input_ids"],
        "decoder_target_ids": x["decoder_target_ids"],
        "decoder_segment_ids": x["decoder_target_ids_segment_ids"],
        "decoder_positions": x["decoder_target_ids_positions"],
        "decoder_loss_weights": x["decoder_loss_weights"].astype(np.float32),
        "decoder_task_ids": x["decoder_task_ids"],
    }


def _best_fill(sizes: Sequence[tuple[int, int]], room_s: int, room_t: int) -> list[int]:
  """Indices into `sizes` of a subset whose summed (source, target) lengths fit in
  (room_s, room_t) and whose total token count is the largest; ties prefer earlier items.

  Exact 2-D subset sum over the reachable (source, target) totals, kept as a bitset in a
  Python int (bit a * width + b <=> total (a, b) reachable; width 2 * (room_t + 1) so that a
  target overflow lands in the gap and is masked off instead of wrapping to the next row).
  """
  if not sizes:
    return []
  width = 2 * (room_t + 1)
  row = (1 << (room_t + 1)) - 1
  valid = sum(row << (a * width) for a in range(room_s + 1))  # bits with a <= room_s, b <= room_t
  full = room_s * width + room_t
  reach, snapshots = 1, []
  for s, t in sizes:
    snapshots.append(reach)
    if s <= room_s and t <= room_t:  # else (t > room_t) the shift could wrap a row
      reach |= (reach << (s * width + t)) & valid
    if (reach >> full) & 1:  # both budgets filled exactly: nothing can do better
      break
  nbytes = (reach.bit_length() + 7) // 8
  bits = np.unpackbits(np.frombuffer(reach.to_bytes(nbytes, "little"), np.uint8), bitorder="little")
  pos = np.flatnonzero(bits)
  tokens = pos // width + pos % width  # a + b
  best = int(pos[np.flatnonzero(tokens == tokens.max())[-1]])  # ties: the most source tokens
  chosen = []
  for j in range(len(snapshots) - 1, -1, -1):
    if (snapshots[j] >> best) & 1:
      continue  # reachable without item j
    chosen.append(j)
    best -= sizes[j][0] * width + sizes[j][1]
  assert best == 0, best
  return chosen[::-1]


def _pack_row(parts: Sequence[dict[str, np.ndarray]], max_source_len: int, max_target_len: int,
              pad_id: int) -> dict[str, np.ndarray]:
  """Records' features -> one packed row (segments 1..n in order, positions per segment)."""
  out = {}
  extra = _extra_keys(parts[0])
  for name, (stream, dtype) in _features(extra).items():
    length = max_source_len if stream == "source" else max_target_len
    value = pad_id if name in TOKEN_KEYS else 0
    row = np.full((length,), value, dtype)
    vals = np.concatenate([p[name] for p in parts]).astype(dtype)
    row[:len(vals)] = vals
    out[name] = row
  for prefix, anchor, length in (("encoder", "encoder_input_ids", max_source_len),
                                 ("decoder", "decoder_target_ids", max_target_len)):
    seg, posn = np.zeros((length,), np.int32), np.zeros((length,), np.int32)
    start = 0
    for i, p in enumerate(parts):
      n = len(p[anchor])
      seg[start:start + n] = i + 1
      posn[start:start + n] = np.arange(n, dtype=np.int32)
      start += n
    out[f"{prefix}_segment_ids"], out[f"{prefix}_positions"] = seg, posn
  return {k: out[k] for k in (*BATCH_KEYS, *extra)}


class PoolPackIterDataset(grain.IterDataset):
  """Packs tokenized records into rows of (max_source_len, max_target_len) from a pool.

  `parent` is the IterDataset of unpadded records (read sequentially, with its own
  read-ahead) and `records` the MapDataset it came from (`records[i]` is the i-th record
  of the stream; used to rebuild the pool on `set_state`). Each row: the oldest pooled
  record plus the pool subset (`_best_fill`) that fills the most remaining tokens. Fully
  deterministic; the state is the parent's state plus the pool's stream indices.
  """

  def __init__(self, parent: grain.IterDataset, records: grain.MapDataset, *, max_source_len: int,
               max_target_len: int, pool_size: int, pad_id: int):
    super().__init__(parent)
    if pool_size <= 0:
      raise ValueError(f"pool_size={pool_size} must be positive")
    self._records = records
    self._max_source_len, self._max_target_len = max_source_len, max_target_len
    self._pool_size, self._pad_id = pool_size, pad_id

  def __iter__(self) -> "_PoolPackIterator":
    return _PoolPackIterator(self._parent.__iter__(), self._records, self._max_source_len,
                             self._max_target_len, self._pool_size, self._pad_id)

  def __str__(self) -> str:
    return f"PoolPackIterDataset(pool_size={self._pool_size})"


class _PoolPackIterator(grain.DatasetIterator):

  def __init__(self, parent: grain.DatasetIterator, records: grain.MapDataset, max_source_len: int,
               max_target_len: int, pool_size: int, pad_id: int):
    super().__init__(parent)
    self._records = records
    self._max_source_len, self._max_target_len = max_source_len, max_target_len
    self._pool_size, self._pad_id = pool_size, pad_id
    self._pool: list[tuple[int, dict[str, np.ndarray]]] = []  # (stream index, features), oldest first
    self._next = 0  # stream index of the parent's next record
    self._exhausted = False

  def _refill(self) -> None:
    while not self._exhausted and len(self._pool) < self._pool_size:
      try:
        feats = next(self._parent)
      except StopIteration:
        self._exhausted = True
        return
      self._pool.append((self._next, feats))
      self._next += 1

  def __next__(self) -> dict[str, np.ndarray]:
    self._refill()
    if not self._pool:
      raise StopIteration
    sizes = [(len(f["encoder_input_ids"]), len(f["decoder_target_ids"])) for _, f in self._pool]
    room_s = self._max_source_len - sizes[0][0]
    room_t = self._max_target_len - sizes[0][1]
    fits = [k for k in range(1, len(sizes)) if sizes[k][0] <= room_s and sizes[k][1] <= room_t]
    take = [0] + [fits[j] for j in _best_fill([sizes[k] for k in fits], room_s, room_t)]
    row = _pack_row([self._pool[k][1] for k in take], self._max_source_len, self._max_target_len,
                    self._pad_id)
    taken = set(take)
    self._pool = [p for k, p in enumerate(self._pool) if k not in taken]
    return row

  def get_state(self) -> dict:
    return {"parent": self._parent.get_state(), "next": self._next,
            "pool": [i for i, _ in self._pool]}

  def set_state(self, state: dict) -> None:
    self._parent.set_state(state["parent"])
    self._next = int(state["next"])
    self._pool = [(int(i), self._records[int(i)]) for i in state["pool"]]
    self._exhausted = False

  def __str__(self) -> str:
    return f"PoolPackDatasetIterator(pool_size={self._pool_size})"


PACKERS = ("pool", "first_fit")


def round_up(n: float, multiple: int = 8) -> int:
  return int(-(-int(np.ceil(n)) // multiple) * multiple)


def auto_row_shape(records: Sequence[Seq2SeqRecord], tokenizer: Tokenizer, *, max_source_len: int,
                   max_target_len: int, records_per_row: float = 5.0, sample_size: int = 4096,
                   seed: int = 0) -> tuple[int, int]:
  """(source, target) lengths of packed rows sized to the data.

  A row should hold about `records_per_row` records and fill both budgets alike, so the
  target budget is records_per_row x the mean target length and the source budget keeps the
  data's own source:target token ratio; each is at least the longest (truncated) record seen
  in a sample, so a record never has to be cut to fit a row. Multiples of 8.
  """
  if not len(records):
    raise ValueError("auto_row_shape: no training records")
  rng = np.random.default_rng(seed)
  idx = rng.choice(len(records), size=min(sample_size, len(records)), replace=False)
  src = np.array([min(len(tokenizer.encode(records[i].source)), max_source_len) for i in idx])
  tgt = np.array([min(len(tokenizer.encode(records[i].target)), max_target_len) for i in idx])
  target_len = round_up(max(tgt.max(), records_per_row * tgt.mean()))
  source_len = round_up(max(src.max(), target_len * src.mean() / max(tgt.mean(), 1.0)))
  return source_len, target_len



def make_train_dataset(records: Records, tokenizer: Tokenizer, *, per_host_batch_size: int,
                       max_source_len: int, max_target_len: int, packing: bool = True, seed: int = 0,
                       process_index: int = 0, process_count: int = 1,
                       num_epochs: int | None = None, num_packing_bins: int | None = None,
                       num_threads: int = 0, prefetch: int = 2, packer: str = "pool",
                       truncate_source_len: int | None = None,
                       truncate_target_len: int | None = None,
                       batch_view: Callable[[Batch], Batch] | None = None,
                       token_features: TokenFeatures | None = None) -> grain.IterDataset:
  """The training IterDataset (see module docstring); `iter()` it or use make_train_iterator.
  `batch_view` maps each batch to the layout the student reads (e.g. `causal_lm_rows`) in the
  prefetch thread, off the training loop; it is stateless, so the iterator state is unchanged.
  `token_features` (batch key -> TokenFeature) add per-target-token ids (tokenize_record)."""
  truncate_source_len = min(truncate_source_len or max_source_len, max_source_len)
  truncate_target_len = min(truncate_target_len or max_target_len, max_target_len)
  if packer not in PACKERS:
    raise ValueError(f"packer={packer!r}: expected one of {PACKERS}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  if per_host_batch_size <= 0:
    raise ValueError(f"per_host_batch_size={per_host_batch_size} must be positive")
  epoch_records = _EpochRecords(records)
  ds = grain.MapDataset.range(epoch_records.size).shuffle(seed=int(seed) % 2**32)
  ds = ds.repeat(num_epochs).map_with_index(_EpochIndex(epoch_records.size))
  ds = ds[process_index::process_count]
  ds = ds.map(_Tokenize(epoch_records, tokenizer, truncate_source_len, truncate_target_len,
                        token_features=token_features))
  features = _features(token_features or {})
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(
      2 * per_host_batch_size, 64) if num_threads else 0))
  if packing and packer == "pool":
    it = PoolPackIterDataset(it, ds, max_source_len=max_source_len, max_target_len=max_target_len,
                             pool_size=num_packing_bins or max(per_host_batch_size, 64),
                             pad_id=tokenizer.pad_id)
  elif packing:
    lengths = {name: max_source_len if stream == "source" else max_target_len
               for name, (stream, _) in features.items()}
    padding = {name: tokenizer.pad_id if name in TOKEN_KEYS else 0 for name in features}
    extra = tuple(token_features or ())
    it = grain.experimental.FirstFitPackIterDataset(
        it, length_struct=lengths, num_packing_bins=num_packing_bins or per_host_batch_size,
        seed=int(seed), shuffle_bins=False, meta_features=_PACK_META + extra, padding_struct=padding)
    it = it.map(_RenamePacked(extra))
  else:
    it = it.map(_Pad(max_source_len, max_target_len, tokenizer.pad_id))
  it = it.batch(per_host_batch_size, drop_remainder=True)
  if batch_view is not None:
    it = it.map(batch_view)
  if prefetch > 0:  # a background thread overlaps batch building with the (GIL-free) train step
    it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
  return it


def make_train_iterator(records: Records, tokenizer: Tokenizer, *, per_host_batch_size: int,
                        max_source_len: int, max_target_len: int, packing: bool = True, seed: int = 0,
                        process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
                        num_packing_bins: int | None = None, num_threads: int = 0, prefetch: int = 2,
                        packer: str = "pool", truncate_source_len: int | None = None,
                        truncate_target_len: int | None = None,
                        batch_view: Callable[[Batch], Batch] | None = None,
                        token_features: TokenFeatures | None = None) -> grain.DatasetIterator:
  """A checkpointable iterator of per-host Batch dicts ([per_host_batch_size, L] numpy arrays).

  `records` is a fixed sequence or `epoch -> records` (same length every epoch), e.g.
  `formats.records_per_epoch(...)`. `packer` is "pool" (default) or "first_fit" (module
  docstring); `num_packing_bins` is the pool size (default max(64, batch size)) or the
  number of first-fit bins (default the batch size): it trades packing density against
  how far records move from their shuffled order (at most that many rows). `prefetch`
  batches are built ahead in a thread (0: none); for heavier pipelines wrap the dataset
  from `make_train_dataset` in grain's `mp_prefetch` (every transform here pickles).
  """
  it = iter(make_train_dataset(
      records, tokenizer, per_host_batch_size=per_host_batch_size, max_source_len=max_source_len,
      max_target_len=max_target_len, packing=packing, seed=seed, process_index=process_index,
      process_count=process_count, num_epochs=num_epochs, num_packing_bins=num_packing_bins,
      num_threads=num_threads, prefetch=prefetch, packer=packer, truncate_source_len=truncate_source_len,
      truncate_target_len=truncate_target_len, batch_view=batch_view, token_features=token_features))
  if prefetch > 0:
    atexit.register(_close_at_exit, weakref.ref(it))
  return it


def _close_at_exit(ref: weakref.ref) -> None:
  """Stops the prefetch thread before interpreter teardown. grain's ThreadPrefetch iterator
  closes again from __del__ once modules are torn down and prints an ignored exception, so
  its close becomes a no-op afterwards."""
  it = ref()
  if it is not None:
    it.close()
    it.close = lambda: None


def make_eval_batches(records: Sequence[Seq2SeqRecord], tokenizer: Tokenizer, batch_size: int,
                      max_source_len: int, max_target_len: int) -> list[tuple[Batch, np.ndarray]]:
  """Padded, unpacked, in-order batches for evaluation: a list of (batch, row_indices).

  Records are truncated to max_source_len/max_target_len; rows are padded to the longest
  record of `records` (rounded up to a multiple of 8), not to the maximum.

  row_indices[i] is the index into `records` of row i, or -1 for rows that pad the
  final partial batch (all-pad rows: segment ids 0, loss weights 0).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be positive")
  feats = [tokenize_record(r, tokenizer, max_source_len, max_target_len) for r in records]
  if feats:  # one shape per split (one compilation), no longer than its longest record needs
    max_source_len = round_up(max(len(f["encoder_input_ids"]) for f in feats))
    max_target_len = round_up(max(len(f["decoder_target_ids"]) for f in feats))
  out = []
  for start in range(0, len(records), batch_size):
    rows, idx = [], []
    for i in range(start, min(start + batch_size, len(records))):
      rows.append(pad_features(feats[i], max_source_len, max_target_len, tokenizer.pad_id))
      idx.append(i)
    while len(rows) < batch_size:
      blank = {k: np.zeros_like(v) for k, v in rows[0].items()}
      for k in ("encoder_input_ids", "decoder_input_ids", "decoder_target_ids"):
        blank[k][:] = tokenizer.pad_id
      rows.append(blank)
      idx.append(-1)
    batch = {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}
    out.append((batch, np.asarray(idx, np.int64)))
  return out


def packing_efficiency(batches: Iterable[Batch]) -> dict[str, float]:
  """Fraction of non-pad tokens (segment id != 0) in the encoder and decoder streams and
  in both together ("combined"), and records per row (segments), over `batches`."""
  enc = dec = enc_total = dec_total = segments = rows = 0
  for b in batches:
    enc += int(np.count_nonzero(b["encoder_segment_ids"]))
    dec += int(np.count_nonzero(b["decoder_segment_ids"]))
    enc_total += b["encoder_segment_ids"].size
    dec_total += b["decoder_segment_ids"].size
    segments += int(np.sum(np.max(b["decoder_segment_ids"], axis=1)))
    rows += b["decoder_segment_ids"].shape[0]
  if not rows:
    return {"encoder": 0.0, "decoder": 0.0, "combined": 0.0, "records_per_row": 0.0}
  return {"encoder": enc / enc_total, "decoder": dec / dec_total,
          "combined": (enc + dec) / (enc_total + dec_total), "records_per_row": segments / rows}


def take(iterator: Iterator[Batch], n: int) -> list[Batch]:
  """The next n batches (for tests and efficiency reports)."""
  return [next(iterator) for _ in range(n)]


# --------------------------------------------------------------------------- decoder-only view

CAUSAL_LM_KEYS = ("decoder_input_ids", "decoder_target_ids", "decoder_segment_ids", "decoder_positions",
                  "decoder_loss_weights", "decoder_task_ids")


def causal_lm_rows(batch: Batch, pad_id: int, eos_id: int) -> Batch:
  """A seq2seq Batch (packed or not) -> the same records as decoder-only LM rows.

  Record k of a row becomes one segment `source ++ target` (the source's trailing EOS dropped,
  so the target follows the prompt directly) of length S + T at most; inputs are that sequence
  without its last token, targets without its first, and only target tokens carry loss weight
  and task id (the prompt is masked out of the loss). Positions restart at 0 per record.
  Token features (other "decoder_*" keys, one value per target token) move with the target tokens;
  other keys are per record (segment k keeps its number) and carry over as they are.
  Host-side numpy, applied after the iterator, so the iterator's checkpoint state is unchanged.
  """
  enc, enc_seg = batch["encoder_input_ids"], batch["encoder_segment_ids"]
  tgt, dec_seg = batch["decoder_target_ids"], batch["decoder_segment_ids"]
  rows, length = enc.shape[0], enc.shape[1] + tgt.shape[1]
  out = {k: np.zeros((rows, length), np.float32 if k == "decoder_loss_weights" else np.int32)
         for k in CAUSAL_LM_KEYS}
  out["decoder_input_ids"][:] = pad_id
  out["decoder_target_ids"][:] = pad_id
  per_target_token = ["decoder_loss_weights", "decoder_task_ids"]
  for key in batch:
    if key.startswith("decoder_") and key not in BATCH_KEYS:
      out[key] = np.zeros((rows, length), batch[key].dtype)
      per_target_token.append(key)
  for r in range(rows):
    start = 0
    for seg in range(1, int(enc_seg[r].max(initial=0)) + 1):
      src = enc[r, enc_seg[r] == seg]
      if len(src) and src[-1] == eos_id:
        src = src[:-1]
      in_target = dec_seg[r] == seg
      target = tgt[r, in_target]
      seq = np.concatenate([src, target])
      n = len(seq) - 1
      if n <= 0:
        continue
      span = slice(start, start + n)
      out["decoder_input_ids"][r, span] = seq[:-1]
      out["decoder_target_ids"][r, span] = seq[1:]
      out["decoder_segment_ids"][r, span] = seg
      out["decoder_positions"][r, span] = np.arange(n)
      first = start + len(src) - 1  # the position that predicts the target's first token
      for key in per_target_token:
        out[key][r, first:first + len(target)] = batch[key][r, in_target]
      start += n
  for key in batch:
    if key == "encoder_labels" or not key.startswith(("encoder_", "decoder_")):
      out[key] = batch[key]  # per record, not per token: segment k keeps its number, so these carry over
  return out


def batch_view(kind: str, tokenizer: Tokenizer) -> Callable[[Batch], Batch] | None:
  """What turns the pipeline's seq2seq batch into the layout a kind of student (models/students.py
  KINDS: seq2seq | encoder | decoder) reads (host-side numpy; picklable for grain), or None when the
  student reads it as it is. Here, not in models/, because it is batch layout: models never import data."""
  if kind == "decoder":
    return functools.partial(causal_lm_rows, pad_id=tokenizer.pad_id, eos_id=tokenizer.eos_id)
  return None


def compose(*views: Callable[[Batch], Batch] | None) -> Callable[[Batch], Batch] | None:
  """Batch views applied left to right (None entries skipped); picklable for grain."""
  views = tuple(v for v in views if v is not None)
  if not views:
    return None
  return views[0] if len(views) == 1 else functools.partial(_apply_all, views)


def _apply_all(views, batch):
  for view in views:
    batch = view(batch)
  return batch


def left_padded_prompts(batch: Batch, pad_id: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Unpacked eval rows' sources (trailing EOS dropped) right-aligned for decoder-only
  generation: (prompt ids [B, S], prompt mask [B, S])."""
  enc, seg = batch["encoder_input_ids"], batch["encoder_segment_ids"]
  ids = np.full(enc.shape, pad_id, np.int32)
  mask = np.zeros(enc.shape, np.int32)
  for r in range(enc.shape[0]):
    src = enc[r, seg[r] > 0]
    if len(src) and src[-1] == eos_id:
      src = src[:-1]
    if len(src):
      ids[r, -len(src):] = src
      mask[r, -len(src):] = 1
  return ids, mask
