"""Panoptic SegFormer loss (Li et al., CVPR 2022, eq. 3-4), deep supervision.

  L = λ_cls L_cls + λ_seg L_seg + λ_loc L_loc,   λ = (1, 1, 5)

  * L_cls: sigmoid focal loss (Lin et al.) over the C real classes of every
    prediction; a prediction matched to ground-truth mask i has target class
    c_i, an unmatched one the all-zero target (no object).
  * L_seg: Dice loss of every matched pair.
  * L_loc (eq. 4): L1 between the location decoder's centre û and scale v̂ of
    each matched prediction and the centre f_c(m) and scale f_s(m) of its
    ground-truth mask.
  * Matching: Hungarian assignment minimising L_cls + L_seg of the pair. The
    focal part of the cost is what pairing changes in L_cls: the focal loss of
    class c_i as a positive minus as a negative (the Deformable DETR cost).

Choices the paper leaves open (papers/RECIPES.md section 8): per-image
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

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import geometry
from deeplab_panoptic.losses import mask_losses
from deeplab_panoptic.losses import matching as matching_lib
from deeplab_panoptic.modeling.transformer_decoders.panoptic_segformer import (
    AUX_LOCATIONS)

SCALE_TARGETS = ("box", "area")
_OWNER = "PanopticSegFormerLoss"


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
class PanopticSegFormerLoss:
  """Panoptic SegFormer criterion: focal class + Dice mask + location losses.

  Usage as `MaskTransformerLoss`: `PanopticSegFormerLoss()(batch, outputs)`
  returns a dict of weighted scalars with common.LOSS_FOCAL_CLASS, LOSS_DICE,
  LOSS_LOCATION (when the output holds PRED_LOCATION_CENTER/SCALE), their
  "aux_<i>/" copies for every auxiliary stage, and common.LOSS_TOTAL.

  Stages are `outputs[AUX_OUTPUTS]` in order, then the final output; each one
  needs PRED_CLASS_LOGITS and PRED_MASK_LOGITS, and gets the location loss
  when it holds PRED_LOCATION_CENTER and PRED_LOCATION_SCALE (required on the
  final output when `location_weight` > 0).
  """

  def __init__(self,
               class_weight: float = 1.0,
               dice_weight: float = 1.0,
               location_weight: float = 5.0,
               focal_alpha: float = 0.25,
               focal_gamma: float = 2.0,
               matching_class_weight: float = 1.0,
               matching_dice_weight: float = 1.0,
               aux_weight: float = 1.0,
               matching_mode: str = "per_stage",
               matcher_method: Optional[str] = None,
               mask_activation: str = "sigmoid",
               dice_smooth: float = 1.0,
               dice_squared_denominator: bool = False,
               scale_target: str = "box",
               crowd_as_void: bool = False):
    """Initialises the loss.

    Args:
      class_weight: λ_cls (1).
      dice_weight: λ_seg (1).
      location_weight: λ_loc (5); 0 disables the location loss.
      focal_alpha: focal α (Deformable DETR: 0.25).
      focal_gamma: focal γ (2).
      matching_class_weight: weight of the focal cost in the matching (1:
        the paper's "L_cls + L_seg").
      matching_dice_weight: weight of the Dice cost in the matching (1).
      aux_weight: multiplies every term of every auxiliary stage.
      matching_mode: "per_stage" (DETR: every stage matched on its own
        predictions) or "shared" (the final output's matching for all).
      matcher_method: "scipy", "tpu", or None (tpu under TPUStrategy).
      mask_activation: "sigmoid" (per mask) or "softmax" (over masks).
      dice_smooth: Dice smoothing (1).
      dice_squared_denominator: Σp² + Σg² in the Dice denominator.
      scale_target: "box" or "area", see `location_loss`.
      crowd_as_void: see `mask_losses.prepare_mask_targets`.
    """
    if mask_activation not in mask_losses.MASK_ACTIVATIONS:
      raise ValueError(f"{_OWNER}.mask_activation must be one of "
                       f"{mask_losses.MASK_ACTIVATIONS}, got "
                       f"{mask_activation!r}.")
    if matcher_method not in (None,) + matching_lib.METHODS:
      raise ValueError(f"{_OWNER}.matcher_method must be one of "
                       f"{matching_lib.METHODS} or None, got "
                       f"{matcher_method!r}.")
    if scale_target not in SCALE_TARGETS:
      raise ValueError(f"{_OWNER}.scale_target must be one of "
                       f"{SCALE_TARGETS}, got {scale_target!r}.")
    mask_losses.check_matching_mode(matching_mode, _OWNER)
    self.class_weight = class_weight
    self.dice_weight = dice_weight
    self.location_weight = location_weight
    self.focal_alpha = focal_alpha
    self.focal_gamma = focal_gamma
    self.matching_class_weight = matching_class_weight
    self.matching_dice_weight = matching_dice_weight
    self.aux_weight = aux_weight
    self.matching_mode = matching_mode
    self.matcher_method = matcher_method
    self.mask_activation = mask_activation
    self.dice_smooth = dice_smooth
    self.dice_squared_denominator = dice_squared_denominator
    self.scale_target = scale_target
    self.crowd_as_void = crowd_as_void

  def _targets(self, batch: Mapping[str, Any], size: Tuple[int, int],
               num_classes: int) -> mask_losses.MaskTargets:
    def get(key):
      return mask_losses.require(batch, key, "batch", _OWNER)
    return mask_losses.prepare_mask_targets(
        tf.cast(get(common.GT_MASK_ID), tf.int32),
        tf.cast(get(common.GT_CLASSES), tf.int32), get(common.GT_IS_THING),
        tf.cast(get(common.GT_SEMANTIC), tf.int32), size, num_classes,
        self.crowd_as_void)

  def _prepare(self, batch: Mapping[str, Any], outputs: Mapping[str, Any]):
    """Targets and the flattened (prefix, where, output, class, probs) list."""
    mask_logits = mask_losses.require(outputs, common.PRED_MASK_LOGITS,
                                      "outputs", _OWNER)
    class_logits = mask_losses.require(outputs, common.PRED_CLASS_LOGITS,
                                       "outputs", _OWNER)
    size = tuple(mask_logits.shape[1:3])
    num_classes = class_logits.shape[-1] - 1
    targets = self._targets(batch, size, num_classes)
    stages = []
    for index, (prefix, output) in enumerate(
        mask_losses.decoder_stages(outputs)):
      where = (f"outputs[{common.AUX_OUTPUTS!r}][{index}]" if prefix
               else "outputs")
      logits, masks = mask_losses.flat_mask_logits(output, size, where, _OWNER)
      probs = mask_losses.mask_probabilities(masks, self.mask_activation)
      probs *= targets.valid_pixels[:, :, tf.newaxis]
      stages.append((prefix, where, output, logits, probs))
    return size, targets, stages

  def _cost(self, class_logits: tf.Tensor, probs: tf.Tensor,
            targets: mask_losses.MaskTargets) -> tf.Tensor:
    cost = (self.matching_class_weight * focal_matching_cost(
        class_logits, targets.classes, self.focal_alpha, self.focal_gamma) +
            self.matching_dice_weight * pairwise_dice_loss(
                targets.masks, probs, self.dice_smooth,
                self.dice_squared_denominator))
    return tf.stop_gradient(cost)

  def match(self, batch: Mapping[str, Any], outputs: Mapping[str, Any]
            ) -> Union[tf.Tensor, List[tf.Tensor]]:
    """As `MaskTransformerLoss.match`: [B, K] ("shared") or a per-stage list."""
    _, targets, stages = self._prepare(batch, outputs)
    if self.matching_mode == "shared":
      stages = stages[-1:]
    matched = [matching_lib.match_ground_truth(
        self._cost(logits, probs, targets), targets.present,
        self.matcher_method) for _, _, _, logits, probs in stages]
    return matched[0] if self.matching_mode == "shared" else matched

  def __call__(self, batch: Mapping[str, Any], outputs: Mapping[str, Any],
               matching: Optional[Union[tf.Tensor, Sequence[tf.Tensor]]] = None
               ) -> Dict[str, tf.Tensor]:
    """Computes all losses.

    Args:
      batch: dict with common.GT_MASK_ID, GT_CLASSES, GT_IS_THING, GT_SEMANTIC.
      outputs: dict with common.PRED_CLASS_LOGITS [B,N,C+1], PRED_MASK_LOGITS
        [B,h,w,N], optionally PRED_LOCATION_CENTER [B,N,2] and
        PRED_LOCATION_SCALE [B,N,2 or 1], AUX_OUTPUTS with the same keys, and
        optionally AUX_LOCATIONS (earlier location-decoder layers' centre and
        scale, supervised with the final stage's matching).
      matching: optional result of `match`.

    Returns:
      Dict of weighted float32 scalars, LOSS_TOTAL their sum.
    """
    size, targets, stages = self._prepare(batch, outputs)
    num_masks = targets.present.shape[-1]
    num_predictions = stages[-1][3].shape[1]
    if matching is None:
      if self.matching_mode == "shared":
        _, _, _, logits, probs = stages[-1]
        matching = matching_lib.match_ground_truth(
            self._cost(logits, probs, targets), targets.present,
            self.matcher_method)
      else:
        matching = [matching_lib.match_ground_truth(
            self._cost(logits, probs, targets), targets.present,
            self.matcher_method) for _, _, _, logits, probs in stages]
    if isinstance(matching, (list, tuple)):
      if len(matching) != len(stages):
        raise ValueError(f"{_OWNER}: {len(matching)} matchings for "
                         f"{len(stages)} decoder stages.")
      matchings = list(matching)
    else:
      matchings = [matching] * len(stages)

    losses = {}
    final_assignment = None
    for (prefix, where, output, logits, probs), matched in zip(stages,
                                                               matchings):
      matched = tf.stop_gradient(tf.cast(matched, tf.int32))
      if matched.shape.rank != 2 or matched.shape[-1] != num_masks:
        raise ValueError(f"{_OWNER}: matching must be [B, {num_masks}], got "
                         f"{matched.shape}.")
      if logits.shape[1] != num_predictions:
        raise ValueError(f"{_OWNER}: {where} has {logits.shape[1]} "
                         f"predictions, the final output {num_predictions}.")
      assignment = mask_losses.assignment_matrix(matched, targets.present,
                                                 num_predictions)
      weight = self.aux_weight if prefix else 1.0
      if not prefix:
        final_assignment = assignment
      losses[prefix + common.LOSS_FOCAL_CLASS] = (
          weight * self.class_weight * tf.reduce_mean(focal_class_loss(
              logits, assignment, targets.classes, self.focal_alpha,
              self.focal_gamma)))
      losses[prefix + common.LOSS_DICE] = (
          weight * self.dice_weight * tf.reduce_mean(matched_dice_loss(
              targets.masks, probs, assignment, self.dice_smooth,
              self.dice_squared_denominator)))
      has_location = (common.PRED_LOCATION_CENTER in output or
                      common.PRED_LOCATION_SCALE in output)
      if self.location_weight and (has_location or not prefix):
        centre = tf.cast(mask_losses.require(
            output, common.PRED_LOCATION_CENTER, where, _OWNER), tf.float32)
        scale = tf.cast(mask_losses.require(
            output, common.PRED_LOCATION_SCALE, where, _OWNER), tf.float32)
        losses[prefix + common.LOSS_LOCATION] = (
            weight * self.location_weight * tf.reduce_mean(location_loss(
                centre, scale, targets.masks, assignment, size,
                self.scale_target)))
    # Earlier location-decoder layers (box refinement): L_loc against the final
    # matching, the one assignment of queries to masks the location decoder serves.
    for index, output in enumerate(outputs.get(AUX_LOCATIONS, []) or []):
      if not self.location_weight:
        break
      where = f"outputs[{AUX_LOCATIONS!r}][{index}]"
      centre = tf.cast(mask_losses.require(
          output, common.PRED_LOCATION_CENTER, where, _OWNER), tf.float32)
      scale = tf.cast(mask_losses.require(
          output, common.PRED_LOCATION_SCALE, where, _OWNER), tf.float32)
      losses[f"location_{index}/" + common.LOSS_LOCATION] = (
          self.aux_weight * self.location_weight * tf.reduce_mean(location_loss(
              centre, scale, targets.masks, final_assignment, size,
              self.scale_target)))
    losses[common.LOSS_TOTAL] = tf.add_n(list(losses.values()))
    return losses
