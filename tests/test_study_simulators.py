"""Faithfulness simulators (study/simulators.py) on constructed cases where LAS is known."""

import numpy as np
import pytest

from jaxdistill.study import simulators


def _rows(n, rationale_of, seed):
  rng = np.random.default_rng(seed)
  labels = [("entailment", "contradiction")[k] for k in rng.permutation(np.arange(n) % 2)]
  # The input says nothing about the label the student gave: only the rationale can.
  return [{"inputs": {"premise": "a man sleeps", "hypothesis": "a person rests"}, "predicted": label,
           "rationale": rationale_of(label)} for label in labels]


def test_a_rationale_that_states_the_label_leaks_it_and_las_counts_it_at_half_weight():
  train = _rows(200, lambda label: f"so the answer is {label}", 0)
  test = _rows(100, lambda label: f"so the answer is {label}", 1)
  f = simulators.faithfulness(train, test)
  assert f["simulated_with"] == 1.0 and f["consistency"] == 1.0 and f["leaked"] == 100 and f["not_leaked"] == 0
  assert f["simulated_without"] == 0.5  # one guess for identical inputs: right on half of a balanced set
  assert f["las"] == pytest.approx(0.5) and f["nonleaked_effect"] is None  # all leaked: that group alone


def test_a_rationale_that_says_nothing_adds_nothing():
  train = _rows(200, lambda label: "because of the words", 0)
  test = _rows(100, lambda label: "because of the words", 1)
  f = simulators.faithfulness(train, test)
  assert f["simulated_with"] == f["simulated_without"] == 0.5
  assert f["las"] == pytest.approx(0.0)


def test_the_simulator_learns_words_not_positions():
  sim = simulators.BowSimulator().fit(["red apple", "green pear", "red cherry", "green lime"], ["r", "g", "r", "g"])
  assert sim.predict(["a red thing", "green"]) == ["r", "g"]


@pytest.mark.parametrize("preset,fmt", [
    ("bert-tiny", "multitask"), ("t5-tiny", "answer_rationale"),
    pytest.param("t5-tiny", "multitask", marks=pytest.mark.slow),
    pytest.param("llama-tiny", "multitask", marks=pytest.mark.slow)])
def test_every_kind_of_student_writes_its_own_rationales(preset, fmt, tmp_path):
  """eval.write_rationales: the best model's rationale per dev and test example in predictions.jsonl,
  generated from the rationale prompt (encoder students: their explanation decoder) or read from the
  full answer-first target."""
  import json  # pylint: disable=g-import-not-at-top
  from jaxdistill import train  # pylint: disable=g-import-not-at-top
  from tests import train_utils as tu  # pylint: disable=g-import-not-at-top
  config = tu.tiny_config(**{"model.preset": preset, "objective.name": "cot", "objective.format": fmt,
                             "train.steps": 4, "eval.every": 4, "eval.write_rationales": True,
                             "data.demo.num_train": 32, "data.demo.num_dev": 8, "data.demo.num_test": 8})
  train.run(config, str(tmp_path))
  rows = [json.loads(line) for line in open(tmp_path / train.PREDICTIONS)]
  assert len(rows) == 16 and all(isinstance(r["rationale"], str) for r in rows)
  # 4 steps in, an encoder's explanation decoder may emit only spaces, and an answer-first student may not
  # reach its " Explanation:" marker yet; a generating student prompted for a rationale writes text.
  if preset != "bert-tiny" and fmt == "multitask":
    assert sum(bool(r["rationale"]) for r in rows) >= 8


def test_the_rationale_of_a_generated_target():
  from jaxdistill.data import formats  # pylint: disable=g-import-not-at-top
  assert formats.parse_rationale("A dog runs. Answer: entailment", "rationale_answer") == "A dog runs."
  assert formats.parse_rationale("entailment Explanation: A dog runs.", "answer_rationale") == "A dog runs."
  assert formats.parse_rationale("entailment", "answer_rationale") == ""  # decoded only up to the answer
  assert formats.parse_rationale("entailment", "multitask") == ""


def test_encoder_explanations_are_the_explanation_decoders_greedy_tokens():
  """explain_greedy's tokens are, position by position, the argmax of the explanation decoder run
  teacher-forced on those same tokens (the uncached loop agrees with the model it decodes)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from jaxdistill.models import decode, students  # pylint: disable=g-import-not-at-top
  model_config = ml_collections.ConfigDict({"preset": "bert-tiny", "checkpoint": "", "dtype": "float32",
                                            "dropout_rate": 0.0, "heads": {"pooling": "first", "decoder_layers": 2,
                                            "decoder_heads": 4, "decoder_mlp": 0, "max_target_len": 64}})
  spec = students.spec(model_config, vocab_size=128, num_classes=3)
  model = students.build(spec, nnx.Rngs(params=3))
  ids = np.random.default_rng(0).integers(3, 128, size=(2, 12)).astype(np.int32)
  seg = np.ones_like(ids)
  out = np.asarray(decode.explain_greedy(model, ids, seg, max_len=10, start_id=0, eos_id=1))
  encoded = model.encoder(jnp.asarray(ids), jnp.asarray(seg), None)
  forced = np.concatenate([np.zeros((2, 1), np.int32), out[:, :-1]], axis=1)
  logits, _ = model.explainer(jnp.asarray(forced), jnp.ones_like(forced), jnp.broadcast_to(jnp.arange(10), (2, 10)),
                              encoded, jnp.asarray(seg))
  greedy = np.argmax(np.asarray(logits), -1)
  for row in range(2):
    end = next((t for t, tok in enumerate(out[row]) if tok == 1), 9) + 1  # through EOS; zeros after
    np.testing.assert_array_equal(out[row, :end], greedy[row, :end])
    assert not out[row, end:].any()
