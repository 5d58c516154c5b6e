"""PST: semantic targets through the pipeline, the pooled projection, the loss, the embed tool."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from jaxdistill import cache as cache_tool
from jaxdistill import methods
from jaxdistill.data import formats, pipeline
from jaxdistill.data.rationale_cache import RationaleCache
from jaxdistill.data.examples import Example, Rationale
from jaxdistill.data.tokenizer import ByteTokenizer
from jaxdistill.objectives import losses, semantic


def _examples():
  return [Example(f"e{i}", "demo", {"premise": f"A cat {i}.", "hypothesis": "A pet."}, "entailment",
                  (f"human {i}",)) for i in range(6)]


def _rationales(examples):
  return {ex.id: [Rationale(ex.id, "t", "p", k, f"teacher {ex.id} {k}", "entailment", True) for k in range(2)]
          for ex in examples}


class _Objective(dict):
  __getattr__ = dict.__getitem__


def _objective(**kw):
  sem = _Objective(distance="cosine", weight=1.0)
  return _Objective(dict(name="hybrid", alpha=0.5, format="multitask", mix="both", label_source="gold",
                         rationales="all", human_weight=1.0, teacher_weight=1.0, rationale_loss="both",
                         semantic=sem), **kw)


def _fake_table(texts, dim=5):
  rng = np.random.default_rng(0)
  table = rng.normal(size=(len(texts), dim)).astype(np.float32)
  return {t: table[i] for i, t in enumerate(texts)}


@pytest.mark.parametrize("fmt", formats.FORMATS)
def test_packed_batches_carry_each_records_own_target(fmt):
  """Through tokenization, pool packing and the view, segment k's target is the embedding of the
  rationale that segment k's tokens spell, weighted by that record's weight."""
  examples = _examples()
  rationales = _rationales(examples)
  records = formats.epoch_records(examples, rationales, _objective(format=fmt), ("entailment", "neutral"))
  texts = semantic.rationale_texts(examples, rationales)
  vectors = _fake_table(texts)
  targets = semantic.build_targets(texts, "fake", embed_fn=lambda ts: np.stack([vectors[t] for t in ts]))
  tok = ByteTokenizer()
  it = pipeline.make_train_iterator(records, tok, per_host_batch_size=2, max_source_len=96, max_target_len=96,
                                    prefetch=0, batch_view=targets.view,
                                    token_features={semantic.IDS_KEY: targets.token_feature()})
  seen = 0
  for batch in pipeline.take(it, 4):
    assert "decoder_semantic_ids" not in batch
    assert batch["semantic_targets"].shape == (2, 96, 5) and batch["semantic_weights"].shape == (2, 96)
    for r in range(2):
      for k in range(1, int(batch["decoder_segment_ids"][r].max()) + 1):
        in_seg = batch["decoder_segment_ids"][r] == k
        is_rationale = in_seg & (batch["decoder_task_ids"][r] == formats.RATIONALE)
        if not is_rationale.any():
          assert batch["semantic_weights"][r, k - 1] == 0
          continue
        text = tok.decode(batch["decoder_target_ids"][r, is_rationale].tolist())
        text = text.removeprefix(formats.EXPLANATION_MARK).removesuffix(formats.ANSWER_MARK.rstrip()).strip()
        if fmt == "rationale_answer":
          text = tok.decode(batch["decoder_target_ids"][r, is_rationale].tolist()).strip()
        np.testing.assert_array_equal(batch["semantic_targets"][r, k - 1], vectors[text], err_msg=text)
        weight = batch["decoder_loss_weights"][r, is_rationale][0]
        assert batch["semantic_weights"][r, k - 1] == weight > 0
        seen += 1
    # Slots past the row's segments stay empty.
    last = batch["decoder_segment_ids"].max(axis=1)
    for r in range(2):
      assert not batch["semantic_weights"][r, last[r]:].any()
  assert seen > 4


def test_pool_segments_by_hand():
  hidden = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
  seg = np.array([[1, 1, 2, 2, 0], [1, 2, 2, 2, 3]])
  mask = np.array([[1, 0, 1, 1, 0], [1, 1, 0, 1, 0]])
  got = np.asarray(semantic.pool_segments(jnp.asarray(hidden), jnp.asarray(mask), jnp.asarray(seg), 4))
  want = np.zeros((2, 4, 3), np.float32)
  want[0, 0] = hidden[0, 0]
  want[0, 1] = hidden[0, 2:4].mean(0)
  want[1, 0] = hidden[1, 0]
  want[1, 1] = hidden[1, [1, 3]].mean(0)
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_semantic_loss_by_hand_and_finite_gradients_on_empty_slots():
  pred = np.array([[[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]]], np.float32)  # slot 1 empty (pred 0)
  target = np.array([[[2.0, 0.0], [0.0, 0.0], [0.0, 1.0]]], np.float32)
  weights = np.array([[1.0, 0.0, 0.5]], np.float32)
  batch = {"semantic_targets": jnp.asarray(target), "semantic_weights": jnp.asarray(weights)}
  cos = np.array([1.0, 0.0, 0.8])
  loss, metrics = semantic.rationale_semantic("cosine")({"rationale_embedding": jnp.asarray(pred)}, batch)
  np.testing.assert_allclose(loss, ((1 - cos) * weights[0]).sum() / 1.5, rtol=1e-5)
  np.testing.assert_allclose(metrics["semantic_cosine"], (cos * weights[0]).sum() / 1.5, rtol=1e-5)
  mse, _ = semantic.rationale_semantic("mse")({"rationale_embedding": jnp.asarray(pred)}, batch)
  np.testing.assert_allclose(mse, (0.5 * 1.0 + 0.5 * (9 + 9) / 2) / 1.5, rtol=1e-5)
  grad = jax.grad(lambda p: semantic.rationale_semantic("cosine")({"rationale_embedding": p}, batch)[0])(
      jnp.asarray(pred))
  assert np.isfinite(np.asarray(grad)).all()
  with pytest.raises(ValueError, match="distance"):
    semantic.rationale_semantic("l1")


def test_rationale_loss_picks_the_terms():
  def names(**kw):  # the objective's terms, then PST's (methods/pst.py) when it is enabled
    config = ml_collections.ConfigDict({"objective": dict(_objective(**kw)), "data": {"cache_dir": ""}})
    pst = methods.pst.PST.from_config(config)
    terms = losses.objective_terms(config.objective) + (pst.loss_terms("seq2seq") if pst else [])
    return [(t.name, t.weight) for t in terms]
  assert names(rationale_loss="token") == [("label_xent", 0.5), ("rationale_xent", 0.5)]
  assert names(rationale_loss="semantic") == [("label_xent", 0.5), ("rationale_semantic", 0.5)]
  assert names(rationale_loss="both") == [("label_xent", 0.5), ("rationale_xent", 0.5), ("rationale_semantic", 0.5)]
  with pytest.raises(ValueError, match="rationale_loss"):
    losses.objective_terms(_objective(rationale_loss="hidden"))
  assert not semantic.enabled(_objective(name="baseline", rationale_loss="semantic"))


def test_semantic_student_projects_the_pooled_rationale_states():
  class Tiny(nnx.Module):
    def __call__(self, batch, rngs=None):
      return {"decoder_hidden": batch["hidden"]}
  model = semantic.SemanticStudent(Tiny(), 3, 2, rngs=nnx.Rngs(0))
  hidden = np.random.default_rng(0).normal(size=(1, 4, 3)).astype(np.float32)
  batch = {"hidden": hidden, "decoder_task_ids": np.array([[0, 1, 1, 1]]),
           "decoder_loss_weights": np.array([[1.0, 1.0, 1.0, 0.0]]), "decoder_segment_ids": np.array([[1, 1, 1, 2]]),
           "semantic_targets": np.zeros((1, 4, 2), np.float32)}
  out = model(batch)
  want = hidden[0, 1:3].mean(0) @ np.asarray(model.projection[...]) + np.asarray(model.bias[...])
  np.testing.assert_allclose(out["rationale_embedding"][0, 0], want, rtol=1e-5)
  np.testing.assert_allclose(out["rationale_embedding"][0, 1], np.asarray(model.bias[...]))


def test_build_targets_reuses_saved_embeddings(tmp_path):
  calls = []
  def embed_fn(texts):
    calls.append(list(texts))
    return np.ones((len(texts), 3), np.float32) * len(calls)
  path = str(tmp_path / "t.npz")
  first = semantic.build_targets(["b", "a"], "enc", save_path=path, embed_fn=embed_fn)
  assert first.index == {"b": 1, "a": 2} and first.dim == 3
  again = semantic.build_targets(["a", "b", "c"], "enc", save_path=path, embed_fn=embed_fn)
  assert calls == [["b", "a"], ["c"]]  # a resumed run embeds only what is new
  np.testing.assert_array_equal(again.table[again.index["c"] - 1], 2.0)
  other = semantic.build_targets(["a"], "other-encoder", save_path=path, embed_fn=embed_fn,
                                 known={"a": np.zeros(3, np.float32)})
  assert len(calls) == 2 and not other.table.any()  # `known` (a cache's column) wins, nothing embedded


class _FakeEmbedder:
  dim = 4

  def __init__(self, fail_after=None):
    self.calls, self.fail_after = 0, fail_after

  def embed(self, texts):
    self.calls += 1
    if self.fail_after is not None and self.calls > self.fail_after:
      raise KeyboardInterrupt("killed")
    return np.stack([np.full(4, len(t), np.float32) for t in texts])


def _small_cache(path):
  examples = _examples()
  cache = RationaleCache.create(path)
  cache.write_examples(examples)
  cache.write_rationales([r for rs in _rationales(examples).values() for r in rs])
  return cache


def test_cache_embed_is_resumable_and_read_back_by_training(tmp_path):
  _small_cache(str(tmp_path / "src"))
  out = str(tmp_path / "out")
  with pytest.raises(KeyboardInterrupt):  # killed after the first chunk's shard
    cache_tool.embed(str(tmp_path / "src"), out, "fake", chunk_size=5, embedder=_FakeEmbedder(fail_after=1),
                     echo=lambda _: None)
  assert len(RationaleCache.open(out).keys()) == 5
  summary = cache_tool.embed(str(tmp_path / "src"), out, "fake", chunk_size=5, embedder=_FakeEmbedder(),
                             echo=lambda _: None)
  assert summary == {"out": RationaleCache.open(out).path, "encoder": "fake", "rationales": 12, "new": 7}
  rows = RationaleCache.open(out).rows()
  assert len(rows) == 12 and all(r["embedding"] == [float(len(r["rationale"]))] * 4 for r in rows)
  assert len(RationaleCache.open(out).read_examples()) == 6
  got = semantic.cache_embeddings(out, "fake")
  assert set(got) == {r["rationale"] for r in rows}
  assert semantic.cache_embeddings(out, "another") == {}  # embedded by another encoder: not used
  with pytest.raises(ValueError, match="embedded by 'fake'"):
    cache_tool.embed(str(tmp_path / "src"), out, "another", embedder=_FakeEmbedder(), echo=lambda _: None)
  with pytest.raises(ValueError, match="must differ"):
    cache_tool.embed(out, out, "fake", embedder=_FakeEmbedder(), echo=lambda _: None)


def test_packaged_minilm_embeddings_are_order_independent_unit_vectors():
  from jaxdistill.embed import Embedder
  embedder = Embedder(batch_size=4)
  texts = ["A cat is a pet.", "A cat is an animal people keep at home.", "Stocks fell sharply today.",
           "x", "The dog cannot be running and sleeping at the same time."]
  vectors = embedder.embed(texts)
  assert vectors.shape == (5, 384)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
  one_by_one = np.concatenate([embedder.embed([t]) for t in texts])
  np.testing.assert_allclose(vectors, one_by_one, atol=2e-6)
  sims = vectors @ vectors.T
  assert sims[0, 1] > 0.5 > sims[0, 2]  # a paraphrase is closer than an unrelated sentence


def test_a_local_teachers_hidden_states_embed_texts(tmp_path):
  """Any supported HF directory can be the frozen encoder, e.g. a decoder LM's final hidden states."""
  from jaxdistill.data import tokenizer as tokenizer_lib
  from jaxdistill.embed import Embedder
  from jaxdistill.models import common, hf, llama
  texts = ["a cat is a pet", "the dog runs in the park", "birds can fly"]
  tok = tokenizer_lib.load_tokenizer("bpe", texts=texts * 4, vocab_size=300)
  teacher = llama.build(llama.get_config("llama-tiny", vocab_size=tok.vocab_size), nnx.Rngs(3))
  hf.save(teacher, str(tmp_path / "teacher"), tokenizer=tok)
  embedder = Embedder(str(tmp_path / "teacher"), batch_size=2)
  got = embedder.embed(texts)
  assert got.shape == (3, teacher.config.hidden_size) and embedder.family == "llama"
  for text, vector in list(zip(texts, got))[:1]:  # eager forward is slow; one text shows the recipe
    ids = jnp.asarray([embedder._ids(text)])
    hidden = teacher.forward(ids, jnp.ones_like(ids))[1]
    pooled = np.asarray(common.mean_pool(hidden, jnp.ones_like(ids)))[0]
    np.testing.assert_allclose(vector, pooled / np.linalg.norm(pooled), atol=2e-5)


def test_rationale_texts_follow_the_objective():
  examples = _examples()[:1]
  rationales = _rationales(examples)
  assert semantic.rationale_texts(examples, rationales, "cot") == ["teacher e0 0", "teacher e0 1"]
  assert semantic.rationale_texts(examples, rationales, "human") == ["human 0"]
  assert len(semantic.rationale_texts(examples, rationales, "hybrid")) == 3
