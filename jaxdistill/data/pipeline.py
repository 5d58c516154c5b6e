"""Tokenize, pack and batch Seq2SeqRecords with Grain (DESIGN §2, §4 Batch).

Training stream (per host):

  MapDataset.range(n)            record indices of one epoch
    .shuffle(seed)               a different permutation per epoch (grain folds in the epoch)
    .repeat(num_epochs)          None = forever
    .map_with_index              -> (epoch, index): records may be re-drawn per epoch
    [process_index::process_count]   hosts split the *global* stream: disjoint, covering
    .map(tokenize)               truncate, EOS, decoder inputs shifted right (start = pad)
    .to_iter_dataset()
    FirstFitPackIterDataset      (packing=True) both length budgets at once; or pad
    .batch(per_host_batch_size, drop_remainder=True)

Everything before packing is index-addressed, so the iterator state is tiny (a next
index plus the packer's row counters) and `get_state()/set_state()` resume exactly;
the iterator is also an Orbax checkpointable (grain's `save`/`load` protocol and
`grain.checkpoint.CheckpointSave/Restore`).

Packing: each (source, target) pair occupies one segment of a row in both the
encoder and the decoder streams with the same segment id (1..n), positions restart
at 0 per segment, and decoder inputs are shifted *within* each segment because the
shift happens per record before packing. Padding: ids = pad id, segment ids 0, loss
weights 0.
"""

from __future__ import annotations

import atexit
import collections
import threading
import weakref
from typing import Callable, Iterable, Iterator, Sequence, Union

import grain
import numpy as np

from jaxdistill.data.formats import Seq2SeqRecord
from jaxdistill.data.tokenizer import Tokenizer

Batch = dict[str, np.ndarray]
Records = Union[Sequence[Seq2SeqRecord], Callable[[int], Sequence[Seq2SeqRecord]]]

BATCH_KEYS = (
    "encoder_input_ids", "encoder_segment_ids", "encoder_positions",
    "decoder_input_ids", "decoder_target_ids", "decoder_segment_ids", "decoder_positions",
    "decoder_loss_weights", "decoder_task_ids",
)
# Per-record features before packing/padding: name -> (stream, dtype).
_FEATURES = {
    "encoder_input_ids": ("source", np.int32),
    "decoder_input_ids": ("target", np.int32),
    "decoder_target_ids": ("target", np.int32),
    "decoder_loss_weights": ("target", np.float32),
    "decoder_task_ids": ("target", np.int32),
}
# Packed along with the others but sharing the segment ids / positions of the anchor.
_PACK_META = ("decoder_input_ids", "decoder_loss_weights", "decoder_task_ids")


def tokenize_record(record: Seq2SeqRecord, tokenizer: Tokenizer, max_source_len: int,
                    max_target_len: int, encode: Callable[[str], list[int]] | None = None
                    ) -> dict[str, np.ndarray]:
  """Unpadded features of one record. Over-long sequences are truncated (EOS may be cut)."""
  encode = encode or tokenizer.encode
  src = list(encode(record.source)[:max_source_len])
  tgt = list(encode(record.target)[:max_target_len])
  return {
      "encoder_input_ids": np.asarray(src, np.int32),
      "decoder_input_ids": np.asarray([tokenizer.pad_id] + tgt[:-1], np.int32),
      "decoder_target_ids": np.asarray(tgt, np.int32),
      "decoder_loss_weights": np.full(len(tgt), record.weight, np.float32),
      "decoder_task_ids": np.full(len(tgt), record.task_id, np.int32),
  }


def _pad_to(x: np.ndarray, length: int, value) -> np.ndarray:
  out = np.full((length,), value, x.dtype)
  out[:len(x)] = x
  return out


def pad_features(feats: dict[str, np.ndarray], max_source_len: int, max_target_len: int,
                 pad_id: int) -> dict[str, np.ndarray]:
  """One record per row: pad to the length budgets, segment id 1 on real tokens."""
  ls, lt = len(feats["encoder_input_ids"]), len(feats["decoder_target_ids"])
  out = {}
  for name, (stream, _) in _FEATURES.items():
    length = max_source_len if stream == "source" else max_target_len
    value = pad_id if name.endswith("_ids") and name != "decoder_task_ids" else 0
    out[name] = _pad_to(feats[name], length, value)
  out["encoder_segment_ids"] = (np.arange(max_source_len) < ls).astype(np.int32)
  out["encoder_positions"] = np.where(out["encoder_segment_ids"] > 0, np.arange(max_source_len), 0).astype(np.int32)
  out["decoder_segment_ids"] = (np.arange(max_target_len) < lt).astype(np.int32)
  out["decoder_positions"] = np.where(out["decoder_segment_ids"] > 0, np.arange(max_target_len), 0).astype(np.int32)
  return {k: out[k] for k in BATCH_KEYS}


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
               cache_size: int = 1 << 18):
    self.records, self.tokenizer = records, tokenizer
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
    return tokenize_record(record, self.tokenizer, self.max_source_len, self.max_target_len, self._encode)

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

  def map(self, x):
    return {
        "encoder_input_ids": x["encoder_input_ids"],
        "encoder_segment_ids": x["encoder_input_ids_segment_ids"],
        "encoder_positions": x["encoder_input_ids_positions"],
        "decoder_input_ids": x["decoder_input_ids"],
        "decoder_target_ids": x["decoder_target_ids"],
        "decoder_segment_ids": x["decoder_target_ids_segment_ids"],
        "decoder_positions": x["decoder_target_ids_positions"],
        "decoder_loss_weights": x["decoder_loss_weights"].astype(np.float32),
        "decoder_task_ids": x["decoder_task_ids"],
    }


def make_train_dataset(records: Records, tokenizer: Tokenizer, *, per_host_batch_size: int,
                       max_source_len: int, max_target_len: int, packing: bool = True, seed: int = 0,
                       process_index: int = 0, process_count: int = 1,
                       num_epochs: int | None = None, num_packing_bins: int | None = None,
                       num_threads: int = 0, prefetch: int = 2) -> grain.IterDataset:
  """The training IterDataset (see module docstring); `iter()` it or use make_train_iterator."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} not in [0, process_count={process_count})")
  if per_host_batch_size <= 0:
    raise ValueError(f"per_host_batch_size={per_host_batch_size} must be positive")
  epoch_records = _EpochRecords(records)
  ds = grain.MapDataset.range(epoch_records.size).shuffle(seed=int(seed) % 2**32)
  ds = ds.repeat(num_epochs).map_with_index(_EpochIndex(epoch_records.size))
  ds = ds[process_index::process_count]
  ds = ds.map(_Tokenize(epoch_records, tokenizer, max_source_len, max_target_len))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(
      2 * per_host_batch_size, 64) if num_threads else 0))
  if packing:
    lengths = {name: max_source_len if stream == "source" else max_target_len
               for name, (stream, _) in _FEATURES.items()}
    padding = {name: tokenizer.pad_id if name in ("encoder_input_ids", "decoder_input_ids", "decoder_target_ids")
               else 0 for name in _FEATURES}
    it = grain.experimental.FirstFitPackIterDataset(
        it, length_struct=lengths, num_packing_bins=num_packing_bins or per_host_batch_size,
        seed=int(seed), shuffle_bins=False, meta_features=_PACK_META, padding_struct=padding)
    it = it.map(_RenamePacked())
  else:
    it = it.map(_Pad(max_source_len, max_target_len, tokenizer.pad_id))
  it = it.batch(per_host_batch_size, drop_remainder=True)
  if prefetch > 0:  # a background thread overlaps batch building with the (GIL-free) train step
    it = grain.experimental.ThreadPrefetchIterDataset(it, prefetch_buffer_size=prefetch)
  return it


def make_train_iterator(records: Records, tokenizer: Tokenizer, *, per_host_batch_size: int,
                        max_source_len: int, max_target_len: int, packing: bool = True, seed: int = 0,
                        process_index: int = 0, process_count: int = 1, num_epochs: int | None = None,
                        num_packing_bins: int | None = None, num_threads: int = 0, prefetch: int = 2
                        ) -> grain.DatasetIterator:
  """A checkpointable iterator of per-host Batch dicts ([per_host_batch_size, L] numpy arrays).

  `records` is a fixed sequence or `epoch -> records` (same length every epoch), e.g.
  `formats.records_per_epoch(...)`. `num_packing_bins` (default: the batch size) trades
  packing density against how far records move from their shuffled order. `prefetch`
  batches are built ahead in a thread (0: none); for heavier pipelines wrap the dataset
  from `make_train_dataset` in grain's `mp_prefetch` (every transform here pickles).
  """
  it = iter(make_train_dataset(
      records, tokenizer, per_host_batch_size=per_host_batch_size, max_source_len=max_source_len,
      max_target_len=max_target_len, packing=packing, seed=seed, process_index=process_index,
      process_count=process_count, num_epochs=num_epochs, num_packing_bins=num_packing_bins,
      num_threads=num_threads, prefetch=prefetch))
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

  row_indices[i] is the index into `records` of row i, or -1 for rows that pad the
  final partial batch (all-pad rows: segment ids 0, loss weights 0).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size} must be positive")
  out = []
  for start in range(0, len(records), batch_size):
    rows, idx = [], []
    for i in range(start, min(start + batch_size, len(records))):
      feats = tokenize_record(records[i], tokenizer, max_source_len, max_target_len)
      rows.append(pad_features(feats, max_source_len, max_target_len, tokenizer.pad_id))
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
  """Fraction of non-pad tokens (segment id != 0) in the encoder and decoder streams,
  and records per row (segments), over `batches`."""
  enc = dec = enc_total = dec_total = segments = rows = 0
  for b in batches:
    enc += int(np.count_nonzero(b["encoder_segment_ids"]))
    dec += int(np.count_nonzero(b["decoder_segment_ids"]))
    enc_total += b["encoder_segment_ids"].size
    dec_total += b["decoder_segment_ids"].size
    segments += int(np.sum(np.max(b["decoder_segment_ids"], axis=1)))
    rows += b["decoder_segment_ids"].shape[0]
  if not rows:
    return {"encoder": 0.0, "decoder": 0.0, "records_per_row": 0.0}
  return {"encoder": enc / enc_total, "decoder": dec / dec_total, "records_per_row": segments / rows}


def take(iterator: Iterator[Batch], n: int) -> list[Batch]:
  """The next n batches (for tests and efficiency reports)."""
  return [next(iterator) for _ in range(n)]
