"""ReMaX training relaxations (Sun et al., arXiv 2306.17319): ReMask, ReClass.

ReMask (eq. 1-2) rescales the panoptic mask logits of the first decoder stages
by a semantic guide before the panoptic losses see them:

  m̂_sem = σ(m_sem) σ(p)^T          [P, C] x [C, N] -> [P, N]
  m̂_pan = m_pan + m̂_sem ⊙ m_pan    (the identity term lets inference drop it)

with no gradient from the panoptic losses into m_sem (the semantic branch is
trained only by its own per-stage semantic loss, weight 0.5). ReClass (eq. 3-4)
softens the one-hot class target y of a matched prediction with the overlap of
its mask with every ground-truth class region:

  y_m = σ(m_pan)^T S / sum_i s_i    (per class: mask mass in it / its area)
  ŷ   = η y_m + (1 - η y_m) y       (η = 0.1)

Choices where the paper is silent (ours; docs/losses.md):
  * p in eq. 1 is the C real-class logits (the void logit is left out) and
    keeps its gradient; only m_sem is stopped.
  * ReClass uses the mask activation of the loss (sigmoid in ReMaX, softmax
    works too) on the mask logits before ReMask, carries no gradient (it is a
    target), uses S at the mask resolution without void pixels, and relaxes
    the matched predictions only; unmatched ones keep the void target.
"""

from typing import Any, Mapping, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion as criterion_lib
from deeplab_panoptic.losses import mask_losses
from deeplab_panoptic.losses import targets as targets_lib
from deeplab_panoptic.ops import resize as resize_lib


def remask_logits(mask_logits: tf.Tensor,
                  semantic_logits: tf.Tensor,
                  class_logits: tf.Tensor) -> tf.Tensor:
  """ReMask, eq. 1-2: semantic-guided mask logits with identity mapping.

  Args:
    mask_logits: float [B, P, N] panoptic mask logits m_pan.
    semantic_logits: float [B, P, C] stage semantic logits m_sem at the same
      pixels (gradient stopped here).
    class_logits: float [B, N, C] or [B, N, C + 1] class logits p; only the
      first C (real classes) are used.

  Returns:
    float [B, P, N] m̂_pan.

  Raises:
    ValueError: if the class and semantic channels disagree.
  """
  num_classes = semantic_logits.shape[-1]
  if class_logits.shape[-1] not in (num_classes, num_classes + 1):
    raise ValueError(
        f"remask_logits: {num_classes} semantic classes but class logits with "
        f"{class_logits.shape[-1]} entries (expected C or C + 1).")
  semantic = tf.math.sigmoid(tf.stop_gradient(semantic_logits))
  classes = tf.math.sigmoid(class_logits[..., :num_classes])
  guide = tf.einsum("bpc,bnc->bpn", semantic, classes)
  return mask_logits + guide * mask_logits


def semantic_one_hot(gt_semantic: tf.Tensor, num_classes: int,
                     dtype: tf.DType = tf.float32) -> tf.Tensor:
  """Binary semantic masks S of eq. 3.

  Args:
    gt_semantic: int [B, P] train ids; ids outside [0, C) (void) give zero
      rows.
    num_classes: C.
    dtype: float dtype.

  Returns:
    [B, P, C].
  """
  return tf.one_hot(gt_semantic, num_classes, dtype=dtype)


def reclass_targets(mask_probs: tf.Tensor,
                    gt_semantic_masks: tf.Tensor,
                    one_hot_targets: tf.Tensor,
                    eta: float) -> tf.Tensor:
  """ReClass soft class targets, eq. 3-4.

  Args:
    mask_probs: float [B, P, N] mask probabilities σ(m_pan) (gradient
      stopped here).
    gt_semantic_masks: float [B, P, C] binary S.
    one_hot_targets: float [B, N, C'] with C' >= C: the one-hot targets y
      (classes beyond C, e.g. void, are left as they are).
    eta: smoothing factor η (ReMaX: 0.1).

  Returns:
    float [B, N, C'] ŷ; classes absent from the image get y_m = 0.
  """
  num_classes = gt_semantic_masks.shape[-1]
  area = tf.reduce_sum(gt_semantic_masks, axis=1)  # [B, C]
  overlap = tf.einsum("bpn,bpc->bnc", tf.stop_gradient(mask_probs),
                      gt_semantic_masks)
  y_m = overlap / tf.maximum(area, 1.0)[:, tf.newaxis, :]
  y = one_hot_targets[..., :num_classes]
  relaxed = eta * y_m + (1.0 - eta * y_m) * y
  return tf.concat([relaxed, one_hot_targets[..., num_classes:]], axis=-1)


@gin.configurable
class ReMask(criterion_lib.MaskLogitTransform):
  """ReMask (eq. 1-2) on the first `num_stages` decoder stages.

  Those stages' dicts must hold common.PRED_STAGE_SEMANTIC_LOGITS [B, hs, ws,
  C], resized (bilinear) to the mask grid. Bind `Criterion.mask_logit_transform
  = @ReMask()`; the stages' own semantic loss is `StageSemanticCrossEntropy`
  with the same `num_stages`.

  Args:
    num_stages: ReMask on stages [0, num_stages) (ReMaX: 4; 0 disables).
  """

  def __init__(self, num_stages: int = 4):
    if num_stages < 0:
      raise ValueError(f"ReMask.num_stages must be >= 0, got {num_stages}.")
    self.num_stages = num_stages

  def __call__(self, index: int, output: Mapping[str, Any], where: str,
               class_logits: tf.Tensor, mask_logits: tf.Tensor,
               size: Tuple[int, int]) -> tf.Tensor:
    if index >= self.num_stages:
      return mask_logits
    semantic_logits = tf.cast(targets_lib.require(
        output, common.PRED_STAGE_SEMANTIC_LOGITS,
        f"{where} (ReMask stage {index} < num_stages={self.num_stages})"),
                              tf.float32)
    flat_semantic = tf.reshape(
        resize_lib.resize_bilinear(semantic_logits, size),
        [-1, size[0] * size[1], semantic_logits.shape[-1]])
    return remask_logits(mask_logits, flat_semantic, class_logits)


@gin.configurable
class ReClass(mask_losses.ClassTargetRelaxation):
  """ReClass soft targets (eq. 3-4) for `PQClassLoss.target_relaxation`.

  The masks are the stage's logits before ReMask, with the criterion's
  activation, zero on void pixels; S is the semantic labels at the mask grid.

  Args:
    eta: η (ReMaX: 0.1; 0 gives the one-hot targets back).
  """

  def __init__(self, eta: float = 0.1):
    if not 0.0 <= eta <= 1.0:
      raise ValueError(f"ReClass.eta must be in [0, 1], got {eta}.")
    self.eta = eta

  def __call__(self, inputs: criterion_lib.LossInputs,
               stage: criterion_lib.Stage) -> tf.Tensor:
    targets = inputs.targets
    size = inputs.size
    semantic_masks = inputs.cached("reclass_semantic_masks", lambda: (
        semantic_one_hot(tf.reshape(
            resize_lib.resize_nearest(inputs.gt_semantic, size),
            [-1, size[0] * size[1]]), inputs.num_classes,
            stage.raw_mask_logits.dtype)))
    one_hot = tf.einsum(
        "bkn,bkc->bnc", stage.assignment,
        tf.one_hot(targets.classes, stage.class_logits.shape[-1],
                   dtype=stage.assignment.dtype))
    raw_probs = targets_lib.mask_probabilities(stage.raw_mask_logits,
                                               inputs.mask_activation)
    return reclass_targets(raw_probs * targets.valid_pixels[:, :, tf.newaxis],
                           semantic_masks, one_hot, self.eta)
