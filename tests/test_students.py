"""Student kinds: batch views (classification labels, decoder-only rows), the head loss, and the
encoder + heads student on packed rows."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdistill.data import formats, pipeline
from jaxdistill.data.examples import Example
from jaxdistill.data.formats import LABEL, RATIONALE, Seq2SeqRecord
from jaxdistill.data.tokenizer import ByteTokenizer
from jaxdistill.objectives import losses

TOK = ByteTokenizer()  # pad 0, eos 1, byte b -> b + 3
LABELS = ("entailment", "neutral", "contradiction")


def _records():
  return [Seq2SeqRecord("ab", "neutral", LABEL, 1.0, "x", class_id=1),
          Seq2SeqRecord("cde", "why", RATIONALE, 0.5, "x"),
          Seq2SeqRecord("f", "contradiction", LABEL, 1.0, "y", class_id=2)]


def test_label_record_class_ids():
  ex = Example(id="e", task="esnli", inputs={"premise": "p", "hypothesis": "h"}, label="contradiction",
               human_explanations=[], split="train")
  assert formats.label_record(ex, LABELS).class_id == 2
  assert formats.label_record(ex, None).class_id == -1  # generative tasks (no label set)
  assert formats.label_record(ex, LABELS, target="neutral").class_id == 1  # teacher label


def test_encoder_labels_mark_first_token_of_label_records():
  feats = [pipeline.tokenize_record(r, TOK, 16, 16) for r in _records()]
  np.testing.assert_array_equal(feats[0]["encoder_labels"], [2, 0, 0])  # 1 + class id; "ab" + EOS
  np.testing.assert_array_equal(feats[1]["encoder_labels"], [0, 0, 0, 0])
  row = pipeline._pack_row(feats, 12, 40, TOK.pad_id)
  np.testing.assert_array_equal(row["encoder_labels"], [2, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0])
  np.testing.assert_array_equal(row["encoder_segment_ids"][[0, 3, 7]], [1, 2, 3])
  (batch, _), = pipeline.make_eval_batches(_records(), TOK, 4, 16, 16)
  np.testing.assert_array_equal(batch["encoder_labels"][:, 0], [2, 0, 3, 0])
  assert batch["encoder_labels"][:, 1:].sum() == 0


def test_combined_record_tokens_carry_their_parts_task_and_weight():
  rec = Seq2SeqRecord("p", "why Answer: no", RATIONALE, 0.5, "x",
                      parts=(("why", RATIONALE, 0.5), (" Answer: no", LABEL, 0.25)))
  feats = pipeline.tokenize_record(rec, TOK, 16, 32)
  n_why, n_answer = len("why"), len(" Answer: no")
  np.testing.assert_array_equal(feats["decoder_target_ids"], TOK.encode("why")[:-1] + TOK.encode(" Answer: no"))
  np.testing.assert_array_equal(feats["decoder_task_ids"], [RATIONALE] * n_why + [LABEL] * (n_answer + 1))
  np.testing.assert_allclose(feats["decoder_loss_weights"], [0.5] * n_why + [0.25] * (n_answer + 1))


def test_causal_lm_rows_packed():
  recs = _records()[:2]
  feats = [pipeline.tokenize_record(r, TOK, 16, 16) for r in recs]
  packed = {k: v[None] for k, v in pipeline._pack_row(feats, 8, 16, TOK.pad_id).items()}
  out = pipeline.causal_lm_rows(packed, TOK.pad_id, TOK.eos_id)
  assert out["decoder_input_ids"].shape == (1, 24)
  enc = [TOK.encode(r.source)[:-1] for r in recs]  # the source's EOS is dropped
  tgt = [TOK.encode(r.target) for r in recs]
  seqs = [e + t for e, t in zip(enc, tgt)]
  n = [len(s) - 1 for s in seqs]
  want_in = np.zeros(24, np.int32)
  want_out = np.zeros(24, np.int32)
  want_w = np.zeros(24, np.float32)
  want_task = np.zeros(24, np.int32)
  start = 0
  for seq, e, t, r, length in zip(seqs, enc, tgt, recs, n):
    want_in[start:start + length] = seq[:-1]
    want_out[start:start + length] = seq[1:]
    # the prompt is masked: the weight starts at the prompt's last token, which predicts the target
    want_w[start + len(e) - 1:start + length] = r.weight
    want_task[start + len(e) - 1:start + length] = r.task_id
    start += length
  np.testing.assert_array_equal(out["decoder_input_ids"][0], want_in)
  np.testing.assert_array_equal(out["decoder_target_ids"][0], want_out)
  np.testing.assert_array_equal(out["decoder_loss_weights"][0], want_w)
  np.testing.assert_array_equal(out["decoder_task_ids"][0], want_task)
  np.testing.assert_array_equal(out["decoder_segment_ids"][0], [1] * n[0] + [2] * n[1] + [0] * (24 - sum(n)))
  np.testing.assert_array_equal(out["decoder_positions"][0, :sum(n)], list(range(n[0])) + list(range(n[1])))
  # the weighted targets are exactly the records' target tokens
  assert list(out["decoder_target_ids"][0][want_w > 0]) == tgt[0] + tgt[1]


def test_left_padded_prompts():
  (batch, _), = pipeline.make_eval_batches(_records(), TOK, 4, 16, 16)
  ids, mask = pipeline.left_padded_prompts(batch, TOK.pad_id, TOK.eos_id)
  assert ids.shape == batch["encoder_input_ids"].shape
  np.testing.assert_array_equal(ids[0, -2:], TOK.encode("ab")[:-1])
  assert ids[0, :-2].sum() == 0 and mask[0].sum() == 2 and mask[3].sum() == 0


def test_label_class_xent_by_hand():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 3)), jnp.float32)
  labels = jnp.asarray([[2, 0, 0], [0, 3, 0]], jnp.int32)  # class 1 at (0,0), class 2 at (1,1)
  loss, metrics = losses.label_class_xent({"class_logits": logits}, {"encoder_labels": labels})
  lp = jax.nn.log_softmax(np.asarray(logits), -1)
  want = -(lp[0, 0, 1] + lp[1, 1, 2]) / 2
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  hits = (np.argmax(logits[0, 0]) == 1) + (np.argmax(logits[1, 1]) == 2)
  np.testing.assert_allclose(metrics["label_accuracy"], hits / 2)


def test_objective_terms_by_kind():
  obj = type("O", (), {"name": "hybrid", "alpha": 0.3})()
  assert [(t.name, t.weight) for t in losses.objective_terms(obj, "encoder")] == [
      ("label_class_xent", 0.3), ("rationale_xent", pytest.approx(0.7))]
  assert [t.name for t in losses.objective_terms(obj, "decoder")] == ["label_xent", "rationale_xent"]


# ----------------------------------------------------------------- building and training students


def _config(**model):
  from configs import hybrid
  config = hybrid.get_config()
  config.model.update(model)
  return config


def test_checkpoint_loads_into_encoder_student(tmp_path):
  from jaxdistill import partitioning, train
  from jaxdistill.models import bert, hf
  source = bert.build(bert.get_config("bert-tiny", vocab_size=256), nnx.Rngs(7))
  hf.save(source, str(tmp_path / "ckpt"))
  mesh = partitioning.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  student, state = train.build_student(_config(checkpoint=str(tmp_path / "ckpt")), 256, mesh, num_classes=3)
  assert (student.kind, student.spec.family) == ("encoder", "bert")
  loaded = hf.state_dict(student.model(state).encoder)
  for name, value in hf.state_dict(source).items():
    np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_encoder_student_needs_a_label_set():
  from jaxdistill.models import students
  with pytest.raises(ValueError, match="label set"):
    students.spec(_config(preset="bert-tiny").model, 256, num_classes=0)


# Every kind with every rationale loss somewhere (semantic: PST's term, objectives/semantic.py).
@pytest.mark.parametrize("preset,fmt,rationale_loss", [
    ("bert-tiny", "multitask", "both"), ("llama-tiny", "multitask", "token"),
    ("llama-tiny", "rationale_answer", "semantic"), ("t5-tiny", "answer_rationale", "both")])
def test_students_train_and_evaluate(preset, fmt, rationale_loss, tmp_path):
  from jaxdistill import train
  config = _config(preset=preset, tokenizer="byte")
  config.objective.update(format=fmt, rationale_loss=rationale_loss)
  config.data.demo.update(num_train=48, num_dev=16, num_test=16)
  config.train.update(steps=3, batch_size=4, log_every=1, checkpoint_every=3)
  config.eval.update(every=3, max_label_len=4, measure_decode=fmt == "answer_rationale")
  result = train.run(config, str(tmp_path))
  assert result["model"]["family"] == preset.split("-")[0]
  assert 0.0 <= result["test_accuracy"] <= 1.0 and np.isfinite(result["test_rationale_perplexity"])
  assert result["rationale_loss"] == rationale_loss
  assert (tmp_path / "semantic_targets.npz").exists() == (rationale_loss != "token")
  if fmt == "answer_rationale":  # the early stop's timing, on the same test set
    decode = result["decode"]
    assert decode["answer_max_new_tokens"] < decode["full_max_new_tokens"]
    assert decode["answer_seconds"] > 0 and decode["speedup"] > 0
    assert decode["answer_accuracy"] == result["test_accuracy"]
  if fmt == "multitask":  # the exported best model loads in transformers (the encoder, for encoders)
    import transformers
    auto = transformers.AutoModel if preset == "bert-tiny" else transformers.AutoModelForCausalLM
    loaded = auto.from_pretrained(str(tmp_path / "hf"))
    assert type(loaded).__name__ == ("BertModel" if preset == "bert-tiny" else "LlamaForCausalLM")
