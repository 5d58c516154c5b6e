"""Study statistics (jaxdistill/study/stats.py) against hand computations on small fixed inputs,
with scipy as an independent check where it has the same test (t quantiles, binomial test,
Wilson interval, percentile bootstrap)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from jaxdistill.study import stats

# --- t interval -------------------------------------------------------------------------------

def test_t_interval_by_hand():
  # mean 0.72; deviations -0.02, 0.02, 0 -> sample variance 0.0008 / 2 = 0.0004, sd 0.02.
  mean, low, high = stats.t_interval([0.70, 0.74, 0.72])
  t = sps.t.ppf(0.975, 2)
  assert t == pytest.approx(4.3027, abs=1e-4)  # the printed t-table value, 2 dof
  half = t * 0.02 / math.sqrt(3)
  assert mean == pytest.approx(0.72)
  assert (low, high) == pytest.approx((0.72 - half, 0.72 + half))


def test_t_interval_other_confidence_and_constant_values():
  mean, low, high = stats.t_interval([1.0, 3.0], confidence=0.9)  # sd = sqrt(2), se = 1
  assert (mean, low, high) == pytest.approx((2.0, 2.0 - sps.t.ppf(0.95, 1), 2.0 + sps.t.ppf(0.95, 1)))
  assert stats.t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_t_interval_one_seed_is_undefined_and_none_refused():
  mean, low, high = stats.t_interval([0.8])
  assert mean == 0.8 and math.isnan(low) and math.isnan(high)
  with pytest.raises(ValueError):
    stats.t_interval([])


# --- Wilson interval --------------------------------------------------------------------------

def test_wilson_interval_by_hand_and_against_scipy():
  z = 1.959963984540054
  p = 0.8
  center = (p + z * z / 20) / (1 + z * z / 10)
  half = z * math.sqrt(p * (1 - p) / 10 + z * z / 400) / (1 + z * z / 10)
  got = stats.wilson_interval(8, 10)
  assert got == pytest.approx((0.8, center - half, center + half))
  assert got[1:] == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook 8/10 interval
  ci = sps.binomtest(8, 10).proportion_ci(confidence_level=0.95, method="wilson")
  assert got[1:] == pytest.approx((ci.low, ci.high))


def test_wilson_interval_edges():
  p, low, high = stats.wilson_interval(0, 10)
  assert p == 0 and low == pytest.approx(0) and 0 < high < 0.35
  p, low, high = stats.wilson_interval(10, 10)
  assert p == 1 and high == pytest.approx(1) and 0.65 < low < 1
  for bad in [(1, 0), (3, 2), (-1, 5)]:
    with pytest.raises(ValueError):
      stats.wilson_interval(*bad)


# --- bootstrap CI -----------------------------------------------------------------------------

def test_bootstrap_ci_constant_arrays():
  assert stats.bootstrap_ci(np.ones(50, bool)) == (1.0, 1.0, 1.0)
  assert stats.bootstrap_ci(np.zeros((3, 50), bool)) == (0.0, 0.0, 0.0)


def test_bootstrap_ci_two_examples_by_hand():
  # Resampled accuracy of [1, 0]: 0 (p 1/4), 0.5 (p 1/2), 1 (p 1/4): the 2.5% and 97.5% quantiles
  # are 0 and 1.
  assert stats.bootstrap_ci([True, False], resamples=4000) == (0.5, 0.0, 1.0)


def test_bootstrap_ci_resamples_examples_not_seeds():
  # Seed 0 right everywhere, seed 1 wrong everywhere: every example's seed-average is 0.5, so
  # every resample of examples (seeds kept paired) has accuracy 0.5.
  correct = np.stack([np.ones(40, bool), np.zeros(40, bool)])
  assert stats.bootstrap_ci(correct) == (0.5, 0.5, 0.5)


def test_bootstrap_ci_deterministic_and_sane_width():
  correct = np.arange(400) % 2 == 0  # accuracy 0.5, standard error sqrt(0.25 / 400) = 0.025
  first = stats.bootstrap_ci(correct, seed=3)
  assert first == stats.bootstrap_ci(correct, seed=3)
  assert first != stats.bootstrap_ci(correct, seed=4)
  mean, low, high = first
  assert mean == 0.5
  assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
  assert high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
  ref = sps.bootstrap((correct.astype(float),), np.mean, method="percentile", n_resamples=2000,
                      random_state=np.random.default_rng(0)).confidence_interval
  assert (low, high) == pytest.approx((ref.low, ref.high), abs=0.01)


def test_bootstrap_ci_two_seeds_pooled_mean():
  correct = np.array([[1, 1, 0, 0], [1, 0, 0, 0]])
  mean, low, high = stats.bootstrap_ci(correct)
  assert mean == pytest.approx(3 / 8)
  assert 0 <= low <= mean <= high <= 1


def test_bootstrap_inputs_refused():
  for bad in ([0.5, 1.0], np.zeros((2, 2, 2)), [], np.zeros((2, 0))):
    with pytest.raises(ValueError):
      stats.bootstrap_ci(bad)


# --- paired bootstrap -------------------------------------------------------------------------

def test_paired_bootstrap_identical_runs():
  a = np.random.default_rng(0).random((3, 60)) < 0.6
  assert tuple(stats.paired_bootstrap(a, a.copy())) == (0.0, 0.0, 0.0, 1.0)


def test_paired_bootstrap_clear_difference_and_sign():
  a = np.zeros((2, 100), bool)
  b = a.copy()
  b[:, :30] = True
  diff, low, high, p = stats.paired_bootstrap(a, b)
  assert diff == pytest.approx(0.3)  # b - a
  assert 0 < low < 0.3 < high
  assert p == 0.0  # no resample at or below 0
  swapped = stats.paired_bootstrap(b, a)  # same seed, same indices: exactly mirrored
  assert tuple(swapped) == pytest.approx((-diff, -high, -low, p))


def test_paired_bootstrap_p_value_by_hand():
  # d = [1, 0, 0, 0]: a resample's mean difference is <= 0 only when it never draws example 0,
  # P = (3/4)^4; it is always >= 0. So p = 2 * (3/4)^4 = 0.633.
  a = [False, False, False, False]
  b = [True, False, False, False]
  diff, _, _, p = stats.paired_bootstrap(a, b, resamples=20000, seed=1)
  assert diff == 0.25
  assert p == pytest.approx(2 * 0.75 ** 4, abs=0.03)
  # d = [-1, 1]: the resampled mean is -1, 0, 1 with P 1/4, 1/2, 1/4: both tails 3/4, p clipped to 1.
  assert stats.paired_bootstrap([1, 0], [0, 1])[3] == 1.0


def test_paired_bootstrap_seed_counts_may_differ_examples_may_not():
  a = np.array([[1, 0, 1, 0]])  # accuracy 0.5
  b = np.array([[1, 1, 1, 0], [1, 1, 0, 0]])  # accuracy 5/8
  assert stats.paired_bootstrap(a, b).diff == pytest.approx(5 / 8 - 1 / 2)
  with pytest.raises(ValueError, match="same examples"):
    stats.paired_bootstrap(np.ones(4, bool), np.ones(5, bool))


# --- McNemar ----------------------------------------------------------------------------------

def test_mcnemar_exact_by_hand_and_against_binomtest():
  a = np.array([1, 1, 1, 1, 1, 1, 0, 1, 1, 0], bool)
  b = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 0], bool)
  b01, b10, p = stats.mcnemar_exact(a, b)
  assert (b01, b10) == (1, 6)  # a wrong & b right once; a right & b wrong six times
  # 2 * P(Binomial(7, 1/2) <= 1) = 2 * (1 + 7) / 128
  assert p == pytest.approx(16 / 128)
  assert p == pytest.approx(sps.binomtest(1, 7, 0.5).pvalue)
  assert stats.mcnemar_exact(b, a) == (6, 1, p)


def test_mcnemar_exact_no_or_balanced_discordance():
  same = [True, False, True]
  assert stats.mcnemar_exact(same, same) == (0, 0, 1.0)
  assert stats.mcnemar_exact([1, 0, 1, 0], [0, 1, 0, 1]) == (2, 2, 1.0)
  b01, b10, p = stats.mcnemar_exact([0] * 12 + [1], [1] * 12 + [1])
  assert (b01, b10) == (12, 0) and p == pytest.approx(2 / 2 ** 12)
  assert p == pytest.approx(sps.binomtest(0, 12, 0.5).pvalue)
  for bad in (([1, 0], [1, 0, 1]), ([1, 0.5], [1, 0])):
    with pytest.raises(ValueError):
      stats.mcnemar_exact(*bad)


# --- Holm -------------------------------------------------------------------------------------

def test_holm_textbook_example():
  # Four tests at alpha 0.05 (the Holm-Bonferroni example on Wikipedia): sorted 0.005, 0.01, 0.03,
  # 0.04 against alpha / 4, / 3, / 2, / 1 = 0.0125, 0.0167, 0.025, 0.05: the first two are
  # rejected, 0.03 > 0.025 stops. Adjusted: 4 * 0.005, 3 * 0.01, 2 * 0.03, max(0.06, 0.04).
  adjusted, significant = stats.holm({"H1": 0.01, "H2": 0.04, "H3": 0.03, "H4": 0.005})
  assert adjusted == pytest.approx({"H1": 0.03, "H2": 0.06, "H3": 0.06, "H4": 0.02})
  assert significant == {"H1": True, "H2": False, "H3": False, "H4": True}


def test_holm_sequence_monotone_and_clipped():
  adjusted, significant = stats.holm([0.03, 0.01, 0.02])
  assert adjusted == pytest.approx([0.04, 0.03, 0.04])  # 0.03 * 1 raised to 2 * 0.02
  assert significant == [True, True, True]
  adjusted, significant = stats.holm([0.5, 0.6, 0.001], alpha=0.01)
  assert adjusted == pytest.approx([1.0, 1.0, 0.003])  # 2 * 0.5 = 1, 0.6 raised to 1
  assert significant == [False, False, True]
  assert stats.holm([]) == ([], [])
  with pytest.raises(ValueError):
    stats.holm([0.1, math.nan])


# --- align ------------------------------------------------------------------------------------

def _rows(ids, correct=None):
  correct = correct or [True] * len(ids)
  return [{"id": i, "gold": "a", "predicted": "a" if c else "b", "correct": c}
          for i, c in zip(ids, correct)]


def test_align_reorders_to_first_run():
  runs = {"v1/s0": _rows(["x", "y", "z"], [True, False, True]),
          "v1/s1": _rows(["z", "x", "y"], [False, True, True])}
  ids, aligned = stats.align(runs)
  assert ids == ["x", "y", "z"]
  assert [r["id"] for r in aligned["v1/s1"]] == ids
  assert stats.correct_matrix(aligned, ["v1/s0", "v1/s1"]).tolist() == [[True, False, True],
                                                                        [True, True, False]]


def test_align_refuses_different_examples():
  with pytest.raises(ValueError, match=r"run 'b'.*missing \['y'\].*extra \['w'\]"):
    stats.align({"a": _rows(["x", "y"]), "b": _rows(["x", "w"])})
  with pytest.raises(ValueError, match=r"run 'b'.*missing \['y'\].*extra \[\]"):
    stats.align({"a": _rows(["x", "y"]), "b": _rows(["x"])})
  with pytest.raises(ValueError, match=r"run 'a'.*more than once.*'x'"):
    stats.align({"a": _rows(["x", "x"]), "b": _rows(["x"])})
  with pytest.raises(ValueError):
    stats.align({})


# --- NLI subsets ------------------------------------------------------------------------------

def test_words_lowercase_and_punctuation():
  assert stats.words("A man, running! Don't stop: well-known.") == [
      "a", "man", "running", "dont", "stop", "well", "known"]


def test_lexical_overlap_and_buckets():
  # hypothesis words {a, man, plays, guitar}; a, man, guitar occur in the premise: 3/4.
  assert stats.lexical_overlap("A man is playing a guitar on stage.", "A man plays guitar.") == 0.75
  assert stats.lexical_overlap("The dog runs.", "A cat sleeps.") == 0.0
  assert stats.lexical_overlap("Man, running!", "man running") == 1.0
  assert stats.lexical_overlap("dog", "dog dog cat") == 0.5  # distinct words: {dog, cat}
  assert math.isnan(stats.lexical_overlap("A dog.", "..."))
  assert stats.overlap_bucket(stats.lexical_overlap("A man runs", "A woman sings loudly")) == "low"
  assert stats.overlap_bucket(stats.lexical_overlap("A man runs", "The man sings")) == "mid"  # 1/3
  assert stats.overlap_bucket(stats.lexical_overlap("A man runs", "A man sings")) == "high"  # 2/3
  assert stats.overlap_bucket(0.6) == "mid" and stats.overlap_bucket(math.nan) == "none"


def test_has_negation():
  for text in ["The man isn't sleeping.", "Nobody is outside", "Nothing happens", "He cannot swim",
               "They do n't move", "She don\u2019t care", "No dogs run", "It is not raining",
               "Never again"]:
    assert stats.has_negation(text), text
  for text in ["A woman is singing", "The knot is tight", "He noticed the note", "Nora is here"]:
    assert not stats.has_negation(text), text


def test_length_bucket_cut_points():
  def pair(total):
    return " ".join(["w"] * (total - 4)), "a b c d."
  assert [stats.length_bucket(*pair(n)) for n in (10, 19, 20, 29, 30, 50)] == [
      "short", "short", "medium", "medium", "long", "long"]
  assert stats.length_bucket("one two", "three", cuts=(3, 4)) == "medium"


def test_subset_accuracy_by_hand():
  rows = [{"id": 1, "premise": "A man runs.", "hypothesis": "A man is not running.", "correct": True},
          {"id": 2, "premise": "A dog sleeps.", "hypothesis": "A dog sleeps.", "correct": False},
          {"id": 3, "premise": "Kids play.", "hypothesis": "Nobody plays.", "correct": False},
          {"id": 4, "premise": "Kids play.", "hypothesis": "Nobody is here.", "correct": True},
          {"id": 5, "premise": "Two cats.", "hypothesis": "Cats.", "correct": True}]
  by_negation = stats.subset_accuracy(rows, lambda r: stats.has_negation(r["hypothesis"]))
  assert by_negation == {True: {"accuracy": 2 / 3, "correct": 2, "count": 3},
                         False: {"accuracy": 1 / 2, "correct": 1, "count": 2}}
  by_overlap = stats.subset_accuracy(
      rows, lambda r: stats.overlap_bucket(stats.lexical_overlap(r["premise"], r["hypothesis"])))
  # overlaps: 1: {a, man, is, not, running} shares a, man -> 2/5 mid; 2: 1 high; 3: {nobody, plays} 0;
  # 4: 0; 5: 1 high.
  assert by_overlap == {"mid": {"accuracy": 1.0, "correct": 1, "count": 1},
                        "high": {"accuracy": 0.5, "correct": 1, "count": 2},
                        "low": {"accuracy": 0.5, "correct": 1, "count": 2}}
  assert stats.subset_accuracy([], lambda r: 0) == {}


# --- LAS --------------------------------------------------------------------------------------

def test_las_constructed_case():
  # 4 leaked examples: with 1, without 0 (effect 1); 6 non-leaked with with == without (effect 0).
  leaked = [True] * 4 + [False] * 6
  sim_with = [1, 1, 1, 1] + [1, 0, 1, 0, 1, 1]
  sim_without = [0, 0, 0, 0] + [1, 0, 1, 0, 1, 1]
  result = stats.leakage_adjusted_simulatability(sim_with, sim_without, leaked)
  assert result == (0.5 * 1 + 0.5 * 0, 1.0, 0.0, 4, 6, 2)
  # The plain mean gain would be 4 / 10 = 0.4: LAS weighs the two groups equally.
  assert np.mean(np.subtract(sim_with, sim_without)) == 0.4


def test_las_mixed_effects_by_hand():
  # leaked gains 1, 0, -1 -> 0; non-leaked gains 1, 0 -> 0.5; LAS = 0.25.
  result = stats.leakage_adjusted_simulatability(
      [1, 1, 0, 1, 0], [0, 1, 1, 0, 0], [True, True, True, False, False])
  assert result.las == pytest.approx(0.25)
  assert (result.leaked_effect, result.nonleaked_effect) == (0.0, 0.5)
  assert (result.n_leaked, result.n_nonleaked, result.groups) == (3, 2, 2)


def test_las_one_group_empty():
  result = stats.leakage_adjusted_simulatability([1, 0, 1], [0, 0, 1], [False] * 3)
  assert result == (pytest.approx(1 / 3), None, pytest.approx(1 / 3), 0, 3, 1)
  result = stats.leakage_adjusted_simulatability([0, 0], [1, 0], [True, True])
  assert result == (-0.5, -0.5, None, 2, 0, 1)
  with pytest.raises(ValueError):
    stats.leakage_adjusted_simulatability([], [], [])
  with pytest.raises(ValueError):
    stats.leakage_adjusted_simulatability([1], [1, 0], [True, False])
