"""Tests for deeplab_panoptic.losses.matching."""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.losses import matching


def _brute_force_min(cost: np.ndarray) -> float:
  """Minimum total cost over all injective row -> column maps."""
  rows, cols = cost.shape
  return min(sum(cost[r, c] for r, c in enumerate(perm))
             for perm in itertools.permutations(range(cols), rows))


def _check_optimal(cost: np.ndarray, matched: np.ndarray) -> None:
  assert matched.shape == cost.shape[:2]
  assert matched.dtype == np.int32
  for b in range(cost.shape[0]):
    assert len(set(matched[b].tolist())) == cost.shape[1], matched[b]
    assert np.all((matched[b] >= 0) & (matched[b] < cost.shape[2]))
    total = cost[b, np.arange(cost.shape[1]), matched[b]].sum()
    np.testing.assert_allclose(total, _brute_force_min(cost[b]), atol=1e-5)


@pytest.mark.parametrize("method", ["scipy", "tpu"])
@pytest.mark.parametrize("shape", [(3, 3, 5), (2, 4, 4), (2, 1, 3)])
def test_random_costs_match_brute_force(method, shape):
  rng = np.random.default_rng(sum(shape))
  cost = rng.normal(size=shape).astype(np.float32)
  _check_optimal(cost, matching.hungarian_matching(cost, method).numpy())


@pytest.mark.parametrize("method", ["scipy", "tpu"])
def test_ties(method):
  rng = np.random.default_rng(7)
  # Few distinct values: many optimal assignments; any of them will do.
  cost = rng.integers(0, 3, size=(4, 3, 5)).astype(np.float32)
  cost[0] = 0.0
  cost[1, :, :] = 1.0
  cost[1, 0, :] = -1.0
  _check_optimal(cost, matching.hungarian_matching(cost, method).numpy())


@pytest.mark.parametrize("method", ["scipy", "tpu"])
def test_constant_padding_rows_do_not_change_real_rows(method):
  rng = np.random.default_rng(3)
  cost = rng.normal(size=(2, 2, 5)).astype(np.float32)
  padded = np.concatenate([cost, np.zeros((2, 2, 5), np.float32)], axis=1)
  matched = matching.hungarian_matching(padded, method).numpy()
  _check_optimal(cost, matched[:, :2].copy())


def test_tpu_method_compiles_with_xla():
  rng = np.random.default_rng(11)
  cost = tf.constant(rng.normal(size=(3, 4, 6)).astype(np.float32))
  fn = tf.function(lambda c: matching.hungarian_matching(c, "tpu"),
                   jit_compile=True)
  matched = fn(cost)
  assert matched.shape == (3, 4)
  _check_optimal(cost.numpy(), matched.numpy())


def test_scipy_output_shape_is_static_in_graph():
  fn = tf.function(lambda c: matching.hungarian_matching(c, "scipy"))
  concrete = fn.get_concrete_function(tf.TensorSpec([2, 3, 5], tf.float32))
  assert concrete.outputs[0].shape.as_list() == [2, 3]


@pytest.mark.parametrize("method", ["scipy", "tpu"])
def test_non_finite_cost_still_gives_a_valid_assignment(method):
  cost = np.random.default_rng(5).normal(size=(1, 3, 4)).astype(np.float32)
  cost[0, 0, 0] = np.nan
  cost[0, 1, 2] = np.inf
  matched = matching.hungarian_matching(cost, method).numpy()
  assert len(set(matched[0].tolist())) == 3


def test_invalid_inputs():
  with pytest.raises(ValueError, match="rank|\\[batch, K, N\\]"):
    matching.hungarian_matching(tf.zeros([3, 4]))
  with pytest.raises(ValueError, match="K <= N"):
    matching.hungarian_matching(tf.zeros([1, 5, 4]))
  with pytest.raises(ValueError, match="method"):
    matching.hungarian_matching(tf.zeros([1, 2, 4]), method="greedy")


def test_method_choice_under_tpu_strategy(monkeypatch):
  monkeypatch.setattr(matching, "_under_tpu_strategy", lambda: True)
  with pytest.raises(ValueError, match="TPU"):
    matching.hungarian_matching(tf.zeros([1, 2, 4]), method="scipy")
  called = []
  original = matching._tpu_matching
  monkeypatch.setattr(matching, "_tpu_matching",
                      lambda c: called.append(1) or original(c))
  cost = np.random.default_rng(0).normal(size=(1, 2, 4)).astype(np.float32)
  _check_optimal(cost, matching.hungarian_matching(cost).numpy())
  assert called


def test_default_method_off_tpu_is_scipy(monkeypatch):
  called = []
  original = matching._scipy_matching
  monkeypatch.setattr(matching, "_scipy_matching",
                      lambda c: called.append(1) or original(c))
  cost = np.random.default_rng(1).normal(size=(2, 2, 3)).astype(np.float32)
  _check_optimal(cost, matching.hungarian_matching(cost).numpy())
  assert called


def _scipy_total(cost: np.ndarray) -> float:
  import scipy.optimize
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  return float(cost[rows, cols].sum())


@pytest.mark.parametrize("method", ["scipy", "tpu"])
@pytest.mark.parametrize("kind", ["random", "tied", "rectangular"])
def test_larger_costs_reach_scipy_total(method, kind):
  # Beyond brute force: the optimum of scipy's solver is the reference.
  rng = np.random.default_rng({"random": 1, "tied": 2, "rectangular": 3}[kind])
  if kind == "random":
    cost = rng.normal(size=(3, 12, 12))
  elif kind == "tied":
    cost = rng.integers(0, 2, size=(3, 10, 12)).astype(np.float64)
  else:
    cost = rng.uniform(-1, 0, size=(3, 5, 16))
  cost = cost.astype(np.float32)
  matched = matching.hungarian_matching(cost, method).numpy()
  for b in range(cost.shape[0]):
    assert len(set(matched[b].tolist())) == cost.shape[1]
    total = cost[b, np.arange(cost.shape[1]), matched[b]].sum()
    np.testing.assert_allclose(total, _scipy_total(cost[b]), atol=1e-4)


def _check_ground_truth_matching(cost, present, matched):
  """Absent -> -1; min(#present, N) present rows matched, distinct, optimal."""
  batch, rows, cols = cost.shape
  for b in range(batch):
    real = np.nonzero(present[b])[0]
    assert np.all(matched[b][~present[b]] == -1)
    taken = matched[b][matched[b] >= 0]
    assert len(set(taken.tolist())) == len(taken) == min(len(real), cols)
    total = sum(cost[b, k, matched[b, k]] for k in real if matched[b, k] >= 0)
    sub = cost[b][real]
    if len(real) <= cols:
      best = _brute_force_min(sub) if len(real) else 0.0
    else:  # Every prediction takes one of the present rows.
      best = _brute_force_min(sub.T)
    np.testing.assert_allclose(total, best, atol=1e-5)


@pytest.mark.parametrize("method", ["scipy", "tpu"])
@pytest.mark.parametrize("shape", [(3, 4, 5), (3, 6, 4)])
def test_match_ground_truth_absent_rows_and_more_masks_than_slots(method,
                                                                  shape):
  rng = np.random.default_rng(shape[1])
  cost = rng.normal(size=shape).astype(np.float32)
  present = rng.random(shape[:2]) < 0.7
  present[0] = False           # an image without ground truth
  present[1] = True            # all slots real (K > N: some stay unmatched)
  # Absent rows hold very attractive costs: they must not steal predictions.
  cost[~present] = -100.0
  matched = matching.match_ground_truth(cost, present, method).numpy()
  assert matched.dtype == np.int32 and matched.shape == shape[:2]
  _check_ground_truth_matching(cost, present, matched)


def test_match_ground_truth_tpu_compiles_with_xla():
  rng = np.random.default_rng(4)
  cost = rng.normal(size=(2, 6, 4)).astype(np.float32)
  present = rng.random((2, 6)) < 0.8
  fn = tf.function(lambda c, p: matching.match_ground_truth(c, p, "tpu"),
                   jit_compile=True)
  _check_ground_truth_matching(cost, present, fn(cost, present).numpy())
