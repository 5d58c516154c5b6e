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
