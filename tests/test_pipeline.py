"""Grain input pipeline: Batch contract, packing, resume exactness, per-host sharding."""

import collections

import numpy as np
import pytest

from jaxdistill.data import pipeline
from jaxdistill.data.formats import LABEL, RATIONALE, Seq2SeqRecord
from jaxdistill.data.tokenizer import load_tokenizer

LS, LT, B = 48, 24, 4


def _records(n=60):
  """Label and rationale records of varied lengths; each target names its record."""
  out = []
  for i in range(n):
    out.append(Seq2SeqRecord(f"[label] q{i} " + "x" * (i % 7), f"L{i}", LABEL, 1.0, f"e{i}"))
    out.append(Seq2SeqRecord(f"[rationale] q{i}", f"R{i} " + "y" * (i % 11), RATIONALE, 0.5, f"e{i}"))
  return out


@pytest.fixture(scope="module")
def tok():
  return load_tokenizer("byte")


def _iter(records, tok, **kw):
  args = dict(per_host_batch_size=B, max_source_len=LS, max_target_len=LT, packing=True, seed=3)
  args.update(kw)
  return pipeline.make_train_iterator(records, tok, **args)


def _segments(batch, tok):
  """Decoded (source, target) texts per packed segment, plus structural checks of each row."""
  found = []
  for r in range(batch["encoder_input_ids"].shape[0]):
    eseg, dseg = batch["encoder_segment_ids"][r], batch["decoder_segment_ids"][r]
    assert set(np.unique(eseg)) - {0} == set(np.unique(dseg)) - {0}
    for s in sorted(set(np.unique(eseg)) - {0}):
      e, d = eseg == s, dseg == s
      # Segments are contiguous, positions restart at 0.
      assert np.array_equal(batch["encoder_positions"][r][e], np.arange(e.sum()))
      assert np.array_equal(batch["decoder_positions"][r][d], np.arange(d.sum()))
      tgt = batch["decoder_target_ids"][r][d]
      dec_in = batch["decoder_input_ids"][r][d]
      # Decoder inputs are the targets shifted right within the segment, start token = pad.
      assert dec_in[0] == tok.pad_id and np.array_equal(dec_in[1:], tgt[:-1])
      assert tgt[-1] == tok.eos_id
      task = batch["decoder_task_ids"][r][d]
      assert len(set(task)) == 1
      weights = batch["decoder_loss_weights"][r][d]
      assert np.all(weights == (1.0 if task[0] == LABEL else 0.5))
      found.append((tok.decode(batch["encoder_input_ids"][r][e]), tok.decode(tgt)))
    pad = dseg == 0
    assert np.all(batch["decoder_loss_weights"][r][pad] == 0)
    assert np.all(batch["decoder_target_ids"][r][pad] == tok.pad_id)
    assert np.all(batch["encoder_input_ids"][r][eseg == 0] == tok.pad_id)
  return found


@pytest.mark.parametrize("packing", [True, False])
def test_batch_contract(tok, packing):
  it = _iter(_records(), tok, packing=packing)
  batch = next(it)
  assert set(batch) == set(pipeline.BATCH_KEYS)
  for k, v in batch.items():
    assert v.shape == ((B, LS) if k.startswith("encoder") else (B, LT)), k
    assert v.dtype == (np.float32 if k == "decoder_loss_weights" else np.int32), k
  records = {(r.source, r.target) for r in _records()}
  segs = _segments(batch, tok)
  assert segs and all(s in records for s in segs)
  if not packing:
    assert len(segs) == B


def test_packing_is_denser_than_padding(tok):
  packed = pipeline.take(_iter(_records(), tok), 10)
  padded = pipeline.take(_iter(_records(), tok, packing=False), 10)
  eff_p, eff_u = pipeline.packing_efficiency(packed), pipeline.packing_efficiency(padded)
  assert eff_p["decoder"] > eff_u["decoder"] and eff_p["encoder"] > eff_u["encoder"]
  assert eff_p["records_per_row"] > 1.5 and eff_u["records_per_row"] == 1.0


def test_epochs_cover_every_record_once(tok):
  records = _records(30)
  it = _iter(records, tok, packing=False, prefetch=0, num_epochs=1)
  seen = collections.Counter()
  for batch in it:
    seen.update(_segments(batch, tok))
  # drop_remainder drops at most B-1 records of the single epoch
  assert len(records) - len(seen) < B and max(seen.values()) == 1


def test_shuffle_differs_per_epoch_and_seed(tok):
  records = _records(10)  # 20 records = 5 unpacked batches per epoch

  def order(seed):
    it = _iter(records, tok, packing=False, seed=seed, prefetch=0)
    return [t for b in pipeline.take(it, 10) for _, t in _segments(b, tok)]

  first = order(0)
  assert sorted(first[:20]) == sorted(first[20:])  # two full epochs
  assert first[:20] != first[20:]
  assert order(0) == first and order(1) != first


@pytest.mark.parametrize("packing,prefetch", [(True, 2), (False, 0), (True, 0)])
def test_resume_exactness(tok, packing, prefetch):
  records = _records()
  it = _iter(records, tok, packing=packing, prefetch=prefetch)
  pipeline.take(it, 7)
  state = it.get_state()
  expected = pipeline.take(it, 9)
  fresh = _iter(records, tok, packing=packing, prefetch=prefetch)
  fresh.set_state(state)
  got = pipeline.take(fresh, 9)
  for a, b in zip(expected, got):
    for k in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(a[k], b[k])


def test_state_is_json_serialisable(tok):
  import json
  it = _iter(_records(), tok)
  next(it)
  assert json.loads(json.dumps(it.get_state())) == it.get_state()


def test_per_host_shards_disjoint_and_covering(tok):
  records = _records(24)  # 48 records
  per_host = []
  for p in range(2):
    it = _iter(records, tok, packing=False, process_index=p, process_count=2, num_epochs=1,
               prefetch=0, per_host_batch_size=4)
    per_host.append([s for b in it for s in _segments(b, tok)])
  a, b = set(per_host[0]), set(per_host[1])
  assert not a & b
  assert a | b == {(r.source, r.target) for r in records}
  assert len(per_host[0]) == len(per_host[1]) == 24


def test_records_callable_per_epoch(tok):
  base = _records(8)

  def by_epoch(epoch):
    return [Seq2SeqRecord(r.source, f"{r.target} e{epoch}", r.task_id, r.weight, r.example_id) for r in base]

  it = _iter(by_epoch, tok, packing=False, prefetch=0)
  targets = [t for b in pipeline.take(it, 8) for _, t in _segments(b, tok)]  # 32 rows = 2 epochs
  assert all(t.endswith(" e0") for t in targets[:16]) and all(t.endswith(" e1") for t in targets[16:])

  def varying(epoch):
    return base if epoch == 0 else base[:-1]

  with pytest.raises(ValueError, match="same number"):
    pipeline.take(_iter(varying, tok, packing=False, prefetch=0), 10)


def test_truncation(tok):
  long = [Seq2SeqRecord("s" * 100, "t" * 100, RATIONALE, 1.0, "e")] * 8
  batch = next(_iter(long, tok))
  assert np.all(batch["encoder_segment_ids"] == 1) and np.all(batch["decoder_segment_ids"] == 1)


def test_eval_batches(tok):
  records = _records(5)  # 10 records, batch 4 -> 3 batches, last has 2 padding rows
  batches = pipeline.make_eval_batches(records, tok, 4, LS, LT)
  assert len(batches) == 3
  idx = np.concatenate([i for _, i in batches])
  assert list(idx) == list(range(10)) + [-1, -1]
  for batch, rows in batches:
    assert set(batch) == set(pipeline.BATCH_KEYS)
    for r, i in enumerate(rows):
      if i < 0:
        assert batch["decoder_loss_weights"][r].sum() == 0 and batch["encoder_segment_ids"][r].sum() == 0
      else:
        n = int(batch["decoder_segment_ids"][r].sum())
        assert tok.decode(batch["decoder_target_ids"][r]) == records[i].target
        assert np.all(batch["decoder_loss_weights"][r][:n] == records[i].weight)


def test_bad_arguments(tok):
  with pytest.raises(ValueError, match="process_index"):
    _iter(_records(), tok, process_index=2, process_count=2)
  with pytest.raises(ValueError, match="no training records"):
    _iter([], tok)


def test_orbax_checkpoint_round_trip(tok, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  records = _records()
  it = _iter(records, tok)
  pipeline.take(it, 5)
  with ocp.CheckpointManager(str(tmp_path), item_names=("data",)) as mgr:
    mgr.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
  expected = pipeline.take(it, 3)
  fresh = _iter(records, tok)
  with ocp.CheckpointManager(str(tmp_path), item_names=("data",)) as mgr:
    mgr.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
  for a, b in zip(expected, pipeline.take(fresh, 3)):
    for k in pipeline.BATCH_KEYS:
      np.testing.assert_array_equal(a[k], b[k])


def test_auto_row_shape(tok):
  records = _records()
  src = np.array([len(tok.encode(r.source)) for r in records])
  tgt = np.array([len(tok.encode(r.target)) for r in records])
  ls, lt = pipeline.auto_row_shape(records, tok, max_source_len=256, max_target_len=256, records_per_row=5)
  assert ls % 8 == 0 and lt % 8 == 0
  assert lt == pipeline.round_up(max(tgt.max(), 5 * tgt.mean()))
  assert ls == pipeline.round_up(max(src.max(), lt * src.mean() / tgt.mean()))
  # The record truncation caps what a row must hold.
  ls_cut, lt_cut = pipeline.auto_row_shape(records, tok, max_source_len=8, max_target_len=4, records_per_row=1)
  tgt_cut = np.minimum(tgt, 4)
  assert lt_cut == 8 and ls_cut == pipeline.round_up(max(8, 8 * 8 / tgt_cut.mean()))
  # Rows sized to the data pack densely (the demo-like records here fill >90% of both budgets).
  it = _iter(records, tok, max_source_len=ls, max_target_len=lt, packer="pool", num_epochs=1)
  eff = pipeline.packing_efficiency(list(it))
  assert eff["encoder"] > 0.9 and eff["decoder"] > 0.9, eff


def test_truncate_below_row_length(tok):
  long = [Seq2SeqRecord("s" * 100, "t" * 100, RATIONALE, 1.0, "e")] * 8
  batch = next(_iter(long, tok, truncate_source_len=10, truncate_target_len=6))
  # Records are cut at the truncation lengths, several per row.
  assert batch["encoder_segment_ids"].max() > 1
  assert (batch["encoder_segment_ids"][0] == 1).sum() == 10 and (batch["decoder_segment_ids"][0] == 1).sum() == 6


def test_eval_batches_pad_to_longest_record(tok):
  records = _records(5)
  batches = pipeline.make_eval_batches(records, tok, 4, 200, 100)
  longest_src = max(len(tok.encode(r.source)) for r in records)
  longest_tgt = max(len(tok.encode(r.target)) for r in records)
  for batch, _ in batches:
    assert batch["encoder_input_ids"].shape[1] == pipeline.round_up(longest_src)
    assert batch["decoder_target_ids"].shape[1] == pipeline.round_up(longest_tgt)
