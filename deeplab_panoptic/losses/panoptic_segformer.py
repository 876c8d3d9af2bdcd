"""Panoptic SegFormer loss terms (Li et al., arXiv 2109.03814, section 3.5,
eq. 3-4), with deep supervision.

  L = λ_cls L_cls + λ_seg L_seg + λ_loc L_loc,   λ = (1, 1, 5)

  * L_cls: sigmoid focal loss (Lin et al.) over the C real classes of every
    prediction; a prediction matched to ground-truth mask i has target class
    c_i, an unmatched one the all-zero target (no object).
  * L_seg: Dice loss of every matched pair.
  * L_loc (eq. 4): L1 between the location decoder's centre û and scale v̂ of
    each matched prediction and the centre f_c(m) and scale f_s(m) of its
    ground-truth mask.
  * Matching (`FocalDiceCost`): Hungarian assignment minimising L_cls + L_seg
    of the pair. The focal part of the cost is what pairing changes in L_cls:
    the focal loss of class c_i as a positive minus as a negative (the
    Deformable DETR cost, arXiv 2010.04159).

The terms are `FocalClassLoss`, `MaskDiceLoss` and `LocationL1`, summed by a
`criterion.Criterion` (configs/losses/panoptic_segformer.gin).

Choices the paper leaves open (ours; docs/losses.md): per-image
normalisation by the number of matched ground-truth masks (DETR normalises by
the batch count; per image keeps shapes static and replica-independent); the
class logits follow the common.py contract [B, N, C + 1] and the focal loss
reads the first C (the void logit is unused, so it gets no gradient); f_c is
the mask centroid and f_s the bounding-box (height, width) over the image size
("box", 2 values, as the released code's box supervision) or the area fraction
("area", 1 value), chosen in gin; L1 summed over coordinates. Void pixels are
removed from the predicted masks as in the MaX loss; crowd pixels count as
background of every mask.
"""

from typing import Dict, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion as criterion_lib
from deeplab_panoptic.losses import geometry
from deeplab_panoptic.losses import targets as targets_lib

SCALE_TARGETS = ("box", "area")


def sigmoid_focal_loss(logits: tf.Tensor, targets: tf.Tensor, alpha: float,
                       gamma: float) -> tf.Tensor:
  """Element-wise sigmoid focal loss -α_t (1 - p_t)^γ log p_t.

  Args:
    logits: float [..., C].
    targets: float [..., C] in {0, 1}.
    alpha: weight of positives (1 - alpha for negatives); < 0 disables it.
    gamma: focusing parameter.

  Returns:
    float [..., C].
  """
  probs = tf.math.sigmoid(logits)
  cross_entropy = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets,
                                                          logits=logits)
  p_t = probs * targets + (1.0 - probs) * (1.0 - targets)
  loss = cross_entropy * tf.pow(1.0 - p_t, gamma)
  if alpha >= 0:
    loss *= alpha * targets + (1.0 - alpha) * (1.0 - targets)
  return loss


def focal_class_loss(class_logits: tf.Tensor, assignment: tf.Tensor,
                     gt_classes: tf.Tensor, alpha: float,
                     gamma: float) -> tf.Tensor:
  """L_cls: focal loss of all predictions over the C real classes.

  Args:
    class_logits: float [B, N, C + 1] (the last, void, entry is not used).
    assignment: float [B, K, N] one-hot matches (zero rows: unmatched).
    gt_classes: int32 [B, K] in [0, C).
    alpha, gamma: focal parameters (Deformable DETR: 0.25, 2).

  Returns:
    float [B]: sum over predictions and classes / number of matched masks.
  """
  num_classes = class_logits.shape[-1] - 1
  logits = class_logits[..., :num_classes]
  targets = tf.einsum("bkn,bkc->bnc", assignment,
                      tf.one_hot(gt_classes, num_classes, dtype=logits.dtype))
  loss = sigmoid_focal_loss(logits, targets, alpha, gamma)
  matched = tf.reduce_sum(assignment, axis=[1, 2])
  return tf.reduce_sum(loss, axis=[1, 2]) / tf.maximum(matched, 1.0)


def focal_matching_cost(class_logits: tf.Tensor, gt_classes: tf.Tensor,
                        alpha: float, gamma: float) -> tf.Tensor:
  """Change of L_cls when prediction n is given ground-truth mask k.

  Args:
    class_logits: float [B, N, C + 1].
    gt_classes: int32 [B, K] in [0, C).
    alpha, gamma: focal parameters.

  Returns:
    float [B, K, N]: focal(c_k as positive) - focal(c_k as negative) at n.
  """
  num_classes = class_logits.shape[-1] - 1
  logits = class_logits[..., :num_classes]
  positive = sigmoid_focal_loss(logits, tf.ones_like(logits), alpha, gamma)
  negative = sigmoid_focal_loss(logits, tf.zeros_like(logits), alpha, gamma)
  one_hot = tf.one_hot(gt_classes, num_classes, dtype=logits.dtype)
  return tf.einsum("bnc,bkc->bkn", positive - negative, one_hot)


def pairwise_dice_loss(gt_masks: tf.Tensor, pred_masks: tf.Tensor,
                       smooth: float, squared: bool = False) -> tf.Tensor:
  """1 - Dice of every (ground-truth, prediction) pair.

  Dice = (2 Σ p g + smooth) / (Σ p + Σ g + smooth), or with squared sums in
  the denominator (Σ p² + Σ g², the released code's V-Net form).

  Args:
    gt_masks: float [B, P, K] binary.
    pred_masks: float [B, P, N] probabilities (zero on void pixels).
    smooth: added to numerator and denominator.
    squared: use the squared denominator.

  Returns:
    float [B, K, N].
  """
  intersection = tf.einsum("bpk,bpn->bkn", gt_masks, pred_masks)
  power = 2.0 if squared else 1.0
  gt_area = tf.reduce_sum(tf.pow(gt_masks, power), axis=1)[:, :, tf.newaxis]
  pred_area = tf.reduce_sum(tf.pow(pred_masks, power), axis=1)[:, tf.newaxis]
  dice = (2.0 * intersection + smooth) / (gt_area + pred_area + smooth)
  return 1.0 - dice


def matched_dice_loss(gt_masks: tf.Tensor, pred_masks: tf.Tensor,
                      assignment: tf.Tensor, smooth: float,
                      squared: bool = False) -> tf.Tensor:
  """L_seg: Dice loss of the matched pairs.

  Args:
    gt_masks: float [B, P, K].
    pred_masks: float [B, P, N] probabilities (zero on void pixels).
    assignment: float [B, K, N].
    smooth, squared: see `pairwise_dice_loss`.

  Returns:
    float [B]: mean over matched pairs (0 without any).
  """
  # Only the matched column of each row matters; gather it first so the
  # gradient and cost stay O(P K) rather than O(P K N).
  matched_pred = tf.einsum("bpn,bkn->bpk", pred_masks, assignment)
  intersection = tf.reduce_sum(matched_pred * gt_masks, axis=1)
  power = 2.0 if squared else 1.0
  denominator = (tf.reduce_sum(tf.pow(matched_pred, power), axis=1) +
                 tf.reduce_sum(tf.pow(gt_masks, power), axis=1) + smooth)
  loss = 1.0 - (2.0 * intersection + smooth) / denominator
  matched = tf.reduce_sum(assignment, axis=-1)
  return (tf.reduce_sum(loss * matched, axis=-1) /
          tf.maximum(tf.reduce_sum(matched, axis=-1), 1.0))


def location_loss(pred_centre: tf.Tensor, pred_scale: tf.Tensor,
                  gt_masks: tf.Tensor, assignment: tf.Tensor,
                  size: Tuple[int, int], scale_target: str = "box"
                  ) -> tf.Tensor:
  """L_loc, eq. 4: L1 of centre and scale of the matched pairs.

  Args:
    pred_centre: float [B, N, 2] (y, x) in [0, 1].
    pred_scale: float [B, N, 2] ("box": height, width over the image's) or
      [B, N, 1] ("area": fraction of the image).
    gt_masks: float [B, P, K] on the grid `size`.
    assignment: float [B, K, N].
    size: static (h, w).
    scale_target: "box" or "area".

  Returns:
    float [B]: sum over matched pairs of |Δcentre|_1 + |Δscale|_1, over the
    number of matched pairs.
  """
  if scale_target not in SCALE_TARGETS:
    raise ValueError(f"scale_target must be one of {SCALE_TARGETS}, got "
                     f"{scale_target!r}.")
  target = geometry.mask_geometry(gt_masks, size)
  gt_scale = (target.box_size if scale_target == "box"
              else target.area[..., tf.newaxis])
  if pred_scale.shape[-1] != gt_scale.shape[-1]:
    raise ValueError(f"location_loss: scale_target={scale_target!r} needs "
                     f"{gt_scale.shape[-1]} scale values per prediction, got "
                     f"{pred_scale.shape}.")
  assignment = tf.stop_gradient(assignment)
  centre = tf.einsum("bkn,bnc->bkc", assignment, pred_centre)
  scale = tf.einsum("bkn,bnc->bkc", assignment, pred_scale)
  per_mask = (tf.reduce_sum(tf.abs(centre - target.centre), axis=-1) +
              tf.reduce_sum(tf.abs(scale - gt_scale), axis=-1))
  matched = tf.reduce_sum(assignment, axis=-1)
  return (tf.reduce_sum(per_mask * matched, axis=-1) /
          tf.maximum(tf.reduce_sum(matched, axis=-1), 1.0))


@gin.configurable
class FocalDiceCost(criterion_lib.MatchingCost):
  """Matching cost λ_cls-focal + λ_seg-Dice of every pair (section 3.5).

  Args:
    class_weight: weight of the focal cost (1: the paper's "L_cls + L_seg").
    dice_weight: weight of the Dice cost (1).
    focal_alpha: focal α (Deformable DETR: 0.25).
    focal_gamma: focal γ (2).
    dice_smooth: Dice smoothing (1).
    squared_denominator: Σp² + Σg² in the Dice denominator.
  """

  def __init__(self, class_weight: float = 1.0, dice_weight: float = 1.0,
               focal_alpha: float = 0.25, focal_gamma: float = 2.0,
               dice_smooth: float = 1.0, squared_denominator: bool = False):
    self.class_weight = class_weight
    self.dice_weight = dice_weight
    self.focal_alpha = focal_alpha
    self.focal_gamma = focal_gamma
    self.dice_smooth = dice_smooth
    self.squared_denominator = squared_denominator

  def __call__(self, inputs: criterion_lib.LossInputs,
               stage: criterion_lib.Stage) -> tf.Tensor:
    targets = inputs.targets
    cost = (self.class_weight * focal_matching_cost(
        stage.class_logits, targets.classes, self.focal_alpha,
        self.focal_gamma) + self.dice_weight * pairwise_dice_loss(
            targets.masks, stage.valid_probs, self.dice_smooth,
            self.squared_denominator))
    return tf.stop_gradient(cost)


@gin.configurable
class FocalClassLoss(criterion_lib.StageLossTerm):
  """L_cls, common.LOSS_FOCAL_CLASS: sigmoid focal loss over the C classes.

  Args:
    weight: λ_cls (1).
    alpha: focal α (0.25).
    gamma: focal γ (2).
  """

  name = common.LOSS_FOCAL_CLASS
  needs_matching = True

  def __init__(self, weight: float = 1.0, alpha: float = 0.25,
               gamma: float = 2.0):
    super().__init__(weight)
    self.alpha = alpha
    self.gamma = gamma

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    return focal_class_loss(stage.class_logits, stage.assignment,
                            inputs.targets.classes, self.alpha, self.gamma)


@gin.configurable
class MaskDiceLoss(criterion_lib.StageLossTerm):
  """L_seg, common.LOSS_DICE: Dice loss of the matched pairs.

  Args:
    weight: λ_seg (1).
    smooth: Dice smoothing (1).
    squared_denominator: Σp² + Σg² in the denominator (V-Net form).
  """

  name = common.LOSS_DICE
  needs_matching = True

  def __init__(self, weight: float = 1.0, smooth: float = 1.0,
               squared_denominator: bool = False):
    super().__init__(weight)
    self.smooth = smooth
    self.squared_denominator = squared_denominator

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    return matched_dice_loss(inputs.targets.masks, stage.valid_probs,
                             stage.assignment, self.smooth,
                             self.squared_denominator)


@gin.configurable
class LocationL1(criterion_lib.StageLossTerm):
  """L_loc (eq. 4), common.LOSS_LOCATION, and the location decoder's layers.

  On the final output (which must hold common.PRED_LOCATION_CENTER and
  PRED_LOCATION_SCALE) and every auxiliary stage holding them; with the final
  output it also reports "location_<i>/location_loss" for each earlier
  location-decoder layer in outputs[common.AUX_LOCATIONS] (box refinement),
  against the final matching, the one assignment of queries to masks the
  location decoder serves, times `Criterion.aux_weight`. A weight of 0 turns
  it off (no entries).

  Args:
    weight: λ_loc (5).
    scale_target: "box" or "area", see `location_loss` (the decoder's
      `PanopticSegFormerDecoder` scale output must agree).
  """

  name = common.LOSS_LOCATION
  needs_matching = True

  def __init__(self, weight: float = 5.0, scale_target: str = "box"):
    super().__init__(weight)
    if scale_target not in SCALE_TARGETS:
      raise ValueError(f"LocationL1.scale_target must be one of "
                       f"{SCALE_TARGETS}, got {scale_target!r}.")
    self.scale_target = scale_target

  def applies(self, inputs: criterion_lib.LossInputs,
              stage: criterion_lib.Stage) -> bool:
    has_location = (common.PRED_LOCATION_CENTER in stage.output or
                    common.PRED_LOCATION_SCALE in stage.output)
    return bool(self.weight) and (has_location or stage.is_final)

  def _loss(self, inputs: criterion_lib.LossInputs, output, where: str,
            assignment: tf.Tensor) -> tf.Tensor:
    def get(key):
      return tf.cast(targets_lib.require(output, key, where),
                     tf.float32)
    return location_loss(get(common.PRED_LOCATION_CENTER),
                         get(common.PRED_LOCATION_SCALE), inputs.targets.masks,
                         assignment, inputs.size, self.scale_target)

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    return self._loss(inputs, stage.output, stage.where, stage.assignment)

  def __call__(self, inputs: criterion_lib.LossInputs,
               stage: criterion_lib.Stage) -> Dict[str, tf.Tensor]:
    losses = super().__call__(inputs, stage)
    if not stage.is_final:
      return losses
    layers = inputs.outputs.get(common.AUX_LOCATIONS, None) or []
    for index, output in enumerate(layers):
      where = f"outputs[{common.AUX_LOCATIONS!r}][{index}]"
      losses[f"location_{index}/" + common.LOSS_LOCATION] = (
          inputs.aux_weight * self.weight * tf.reduce_mean(
              self._loss(inputs, output, where, stage.assignment)))
    return losses
