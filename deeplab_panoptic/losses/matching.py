"""Hungarian matching of ground-truth masks to predicted masks.

Two interchangeable solvers give the same minimum-cost assignment:

  * ``"scipy"``: ``scipy.optimize.linear_sum_assignment`` inside
    ``tf.numpy_function``. Exact and fast on CPU/GPU hosts, but a host call, so it
    cannot run on TPU nor inside an XLA cluster.
  * ``"tpu"``: the pure-TensorFlow Hungarian algorithm of the Model Garden
    (``official.projects.detr.ops.matchers``). Static shapes, compiles with XLA,
    runs on TPU. It needs a square cost matrix, so the ``K`` ground-truth rows are
    padded with constant rows up to ``N``.
"""

from typing import Optional

import numpy as np
import scipy.optimize
import tensorflow as tf

from official.projects.detr.ops import matchers

METHODS = ("scipy", "tpu")


def _under_tpu_strategy() -> bool:
  """Whether the current distribution strategy runs on TPU."""
  if not tf.distribute.has_strategy():
    return False
  strategy = tf.distribute.get_strategy()
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


def _finite_cost(cost: tf.Tensor) -> tf.Tensor:
  """Replaces non-finite costs by a cost worse than every finite one.

  Only the *assignment* sees this: both solvers fail on NaN/Inf (scipy raises an
  unrelated error, the TPU solver may never terminate), while the loss computed
  from the same predictions stays NaN and is reported by the trainer.

  Args:
    cost: float [batch, rows, cols].

  Returns:
    float [batch, rows, cols] with every entry finite.
  """
  finite = tf.math.is_finite(cost)
  finite_values = tf.where(finite, cost, tf.zeros_like(cost))
  worst = tf.reduce_max(tf.abs(finite_values)) + 1.0
  return tf.where(finite, cost, worst)


def _scipy_assignment(cost: np.ndarray) -> np.ndarray:
  """Host-side batched linear_sum_assignment.

  Args:
    cost: float [batch, K, N] with K <= N.

  Returns:
    int32 [batch, K], the column assigned to every row.
  """
  batch, rows, _ = cost.shape
  result = np.zeros((batch, rows), dtype=np.int32)
  for b in range(batch):
    row_ind, col_ind = scipy.optimize.linear_sum_assignment(cost[b])
    result[b, row_ind] = col_ind
  return result


def _scipy_matching(cost: tf.Tensor) -> tf.Tensor:
  """Scipy matcher; see `hungarian_matching`."""
  matched = tf.numpy_function(
      _scipy_assignment, [cost], tf.int32, stateful=False,
      name="scipy_linear_sum_assignment")
  # numpy_function loses the shape; the rest of the train step needs it static.
  matched.set_shape(cost.shape[:2])
  return matched


def _tpu_matching(cost: tf.Tensor) -> tf.Tensor:
  """Pure-TF (XLA/TPU) matcher; see `hungarian_matching`."""
  num_rows = cost.shape[1]
  num_cols = cost.shape[2]
  # Constant padding rows add the same total to every assignment, so they leave
  # the optimum of the real rows unchanged; they take the left-over columns.
  square_cost = tf.pad(cost, [[0, 0], [0, num_cols - num_rows], [0, 0]],
                       constant_values=0.0)
  _, assignment = matchers.hungarian_matching(square_cost)
  # assignment: bool [batch, N, N], exactly one True per row (a perfect match).
  assignment = assignment[:, :num_rows, :]
  return tf.argmax(tf.cast(assignment, tf.int32), axis=-1, output_type=tf.int32)


def hungarian_matching(cost: tf.Tensor,
                       method: Optional[str] = None) -> tf.Tensor:
  """Minimum-cost assignment of each of K rows to a distinct one of N columns.

  Args:
    cost: float [batch, K, N] cost of matching row (ground truth) k to column
      (prediction) n, with K <= N. No gradient flows through the matching.
    method: "scipy", "tpu", or None to choose "tpu" under a TPUStrategy and
      "scipy" otherwise.

  Returns:
    int32 [batch, K]: the column (prediction index) matched to every row; the
    columns of one batch element are distinct and their total cost is minimal.

  Raises:
    ValueError: if `cost` is not rank 3 with static K <= N, if `method` is
      unknown, or if "scipy" is asked for under a TPUStrategy.
  """
  cost = tf.convert_to_tensor(cost)
  if cost.shape.rank != 3:
    raise ValueError(
        f"hungarian_matching: cost must be [batch, K, N], got shape {cost.shape}.")
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  if num_rows is None or num_cols is None:
    raise ValueError(
        "hungarian_matching: K and N must be static, got cost shape "
        f"{cost.shape}.")
  if num_rows > num_cols:
    raise ValueError(
        f"hungarian_matching: needs K <= N (ground-truth masks <= predictions), "
        f"got K={num_rows} > N={num_cols}. Raise the number of mask slots or "
        "lower the maximum number of ground-truth masks.")
  if method is None:
    method = "tpu" if _under_tpu_strategy() else "scipy"
  if method not in METHODS:
    raise ValueError(
        f"hungarian_matching: method must be one of {METHODS} or None, got "
        f"{method!r}.")
  if method == "scipy" and _under_tpu_strategy():
    raise ValueError(
        "hungarian_matching: method='scipy' runs on the host through "
        "tf.numpy_function, which TPUs cannot execute; use method='tpu' (or "
        "None) under a TPUStrategy.")
  if not cost.dtype.is_floating:
    cost = tf.cast(cost, tf.float32)
  cost = _finite_cost(tf.stop_gradient(cost))
  if num_rows == 0:
    return tf.zeros_like(cost[:, :, 0], dtype=tf.int32)
  if method == "scipy":
    return _scipy_matching(cost)
  return _tpu_matching(tf.cast(cost, tf.float32))


def match_ground_truth(cost: tf.Tensor,
                       present: tf.Tensor,
                       method: Optional[str] = None) -> tf.Tensor:
  """Matches present ground-truth masks to predictions, for any K and N.

  Absent ground-truth slots (padding, masks that vanished) never take a
  prediction away from a present one, and when there are more slots than
  predictions (K > N, e.g. deeplab2's COCO set-up of 128 thing + 53 stuff slots
  for 128 predictions) each prediction gets at most one ground-truth mask and
  the left-over ground-truth masks stay unmatched (-1): they add no matched
  loss term, like a missed segment in PQ.

  Args:
    cost: float [B, K, N] cost of giving prediction n to ground-truth mask k.
    present: bool [B, K], which ground-truth slots hold a real mask.
    method: see `hungarian_matching`.

  Returns:
    int32 [B, K]: the prediction matched to each ground-truth slot, -1 for
    absent slots and for present masks left without a prediction (only possible
    when K > N). Matched predictions of one image are distinct, and the total
    cost of the matched pairs is minimal among assignments that match
    min(#present, N) masks.
  """
  cost = tf.convert_to_tensor(cost)
  present = tf.cast(present, tf.bool)
  num_rows, num_cols = cost.shape[1], cost.shape[2]
  if num_rows is None or num_cols is None:
    raise ValueError("match_ground_truth: K and N must be static, got cost "
                     f"shape {cost.shape}.")
  if num_rows == 0:
    return tf.zeros_like(cost[:, :, 0], dtype=tf.int32)
  cost = tf.cast(tf.stop_gradient(cost), tf.float32)
  if num_rows <= num_cols:
    # Constant absent rows add the same total to every assignment.
    cost = tf.where(present[:, :, tf.newaxis], cost, tf.zeros_like(cost))
    matched = hungarian_matching(cost, method)
    return tf.where(present, matched, -tf.ones_like(matched))
  # K > N: assign every prediction a distinct ground-truth column instead. An
  # absent column costs more than any present one, so a prediction never takes
  # an absent column while a present one is free (moving it there is cheaper).
  finite = tf.where(tf.math.is_finite(cost), cost, tf.zeros_like(cost))
  absent_cost = tf.reduce_max(tf.abs(finite)) * 2.0 + 1.0
  transposed = tf.where(present[:, tf.newaxis, :],
                        tf.transpose(cost, [0, 2, 1]), absent_cost)
  gt_of_prediction = hungarian_matching(transposed, method)  # [B, N] in [0, K).
  hits = tf.logical_and(
      tf.one_hot(gt_of_prediction, num_rows, on_value=True, off_value=False),
      present[:, tf.newaxis, :])  # [B, N, K]
  prediction = tf.argmax(tf.cast(hits, tf.int32), axis=1, output_type=tf.int32)
  return tf.where(tf.reduce_any(hits, axis=1), prediction,
                  -tf.ones_like(prediction))
