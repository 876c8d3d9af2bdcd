"""MaX-DeepLab loss terms (also kMaX-DeepLab, CMT-DeepLab and ReMaX).

MaX-DeepLab (Wang et al., arXiv 2012.00759, section 3.2-3.4, eq. 6-17), as
google-research/deeplab2 implements it (model/loss/max_deeplab_loss.py):

  * `PQSimilarityCost`: the Hungarian cost, minus the PQ-style similarity
    (eq. 6), Dice times the class probability.
  * `PQClassLoss`, `PQDiceLoss`: the PQ-style loss (eq. 10-12): a class
    cross-entropy weighted by the matched Dice, and a Dice loss weighted by the
    matched class probability; both weights are constants (stop-gradient).
  * `MaskIDCrossEntropy`: per-pixel classification over the N mask slots.
  * `InstanceDiscrimination`: the mask-average instance discrimination
    (eq. 16-17) on the normalised pixel embedding.

docs/losses.md says how void, crowd, empty images and more ground-truth masks
than predictions are handled.

Notation for shapes: B batch, P = h * w pixels at the prediction size, K
ground-truth mask slots, N predicted masks, C classes (class logits have C + 1
entries, the last one is void / no object), D embedding channels.
"""

import abc
from typing import Optional

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion as criterion_lib
from deeplab_panoptic.losses import targets as targets_lib

NEGATIVE_CLASS_WEIGHTINGS = ("constant", "void_fraction")
INSTANCE_DISCRIMINATION_ANCHORS = ("thing", "all")

# Logit given to absent ground-truth masks in the instance-discrimination
# softmax so that they receive zero probability (|cos / tau| is far smaller).
_ABSENT_LOGIT = -1e9


def pairwise_dice(gt_masks: tf.Tensor, pred_masks: tf.Tensor, smooth: float,
                  epsilon: float) -> tf.Tensor:
  """Dice coefficient between every ground-truth and every predicted mask.

  Dice = (2 |g n p| + smooth) / (|g| + |p| + smooth + epsilon).

  Args:
    gt_masks: float [B, P, K].
    pred_masks: float [B, P, N] probabilities (zero on void pixels).
    smooth: added to numerator and denominator.
    epsilon: added to the denominator only (avoids 0 / 0).

  Returns:
    float [B, K, N].
  """
  intersection = tf.einsum("bpk,bpn->bkn", gt_masks, pred_masks)
  gt_area = tf.reduce_sum(gt_masks, axis=1)[:, :, tf.newaxis]
  pred_area = tf.reduce_sum(pred_masks, axis=1)[:, tf.newaxis, :]
  return (2.0 * intersection + smooth) / (gt_area + pred_area + smooth + epsilon)


def gt_class_probabilities(class_logits: tf.Tensor,
                           gt_classes: tf.Tensor) -> tf.Tensor:
  """Probability each prediction gives to each ground-truth class.

  Args:
    class_logits: float [B, N, C + 1].
    gt_classes: int32 [B, K] in [0, C].

  Returns:
    float [B, K, N], p̂_n(c_k) from the full softmax over C + 1 classes.
  """
  probs = tf.nn.softmax(class_logits, axis=-1)
  one_hot = tf.one_hot(gt_classes, class_logits.shape[-1], dtype=probs.dtype)
  return tf.einsum("bnc,bkc->bkn", probs, one_hot)


def matching_cost(dice: tf.Tensor, class_probs: tf.Tensor,
                  present: tf.Tensor) -> tf.Tensor:
  """Negated PQ-style similarity (MaX-DeepLab eq. 6), the Hungarian cost.

  Args:
    dice: float [B, K, N] Dice between ground-truth and predicted masks.
    class_probs: float [B, K, N] p̂_n(c_k).
    present: bool [B, K].

  Returns:
    float [B, K, N] cost, without gradient. Absent rows are constant (0), so
    they add the same total to every assignment and cannot change which
    predictions the present rows get.
  """
  similarity = tf.stop_gradient(dice * class_probs)
  return tf.where(present[:, :, tf.newaxis], -similarity,
                  tf.zeros_like(similarity))


def void_fraction(mask_probs: tf.Tensor, valid_pixels: tf.Tensor,
                  floor: float) -> tf.Tensor:
  """Fraction of each predicted soft mask lying on void pixels (deeplab2).

  Args:
    mask_probs: float [B, P, N], not zeroed on void.
    valid_pixels: float [B, P].
    floor: lower bound of the denominator.

  Returns:
    float [B, N] in [0, 1].
  """
  void = 1.0 - valid_pixels
  on_void = tf.einsum("bpn,bp->bn", mask_probs, void)
  total = tf.reduce_sum(mask_probs, axis=1)
  return on_void / tf.maximum(total, floor)


def pq_class_loss(class_logits: tf.Tensor,
                  assignment: tf.Tensor,
                  gt_classes: tf.Tensor,
                  matched_dice: tf.Tensor,
                  alpha: float,
                  weight_floor: float,
                  negative_weights: Optional[tf.Tensor] = None,
                  positive_targets: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Class part of the PQ-style loss (MaX-DeepLab eq. 10 second
  term, eq. 11, eq. 12).

  Every slot gets a softmax cross-entropy; the target is the ground-truth class
  of the mask it is matched to, void (index C) if unmatched. Positives are
  weighted by alpha * Dice of their match, negatives by (1 - alpha) times
  `negative_weights` (1 in the paper). Weights carry no gradient.

  Args:
    class_logits: float [B, N, C + 1].
    assignment: float [B, K, N] from `assignment_matrix`.
    gt_classes: int32 [B, K] in [0, C).
    matched_dice: float [B, K] Dice of each ground-truth mask with its match.
    alpha: positive weight (MaX: 0.75).
    weight_floor: lower bound of the positive weights (and of the negative
      weights when given).
    negative_weights: optional float [B, N] extra weight of each negative.
    positive_targets: optional float [B, N, C + 1] soft targets replacing the
      one-hot ground-truth class of the positives (ReMaX ReClass); rows of
      negatives are ignored.

  Returns:
    float [B], per image: weighted cross-entropy summed over slots, / N.
  """
  num_predictions = class_logits.shape[1]
  num_logits = class_logits.shape[-1]
  void_class = num_logits - 1
  positive = tf.reduce_sum(assignment, axis=1)  # [B, N] in {0, 1}.
  negative = 1.0 - positive
  gt_one_hot = tf.one_hot(gt_classes, num_logits, dtype=class_logits.dtype)
  positive_target = tf.einsum("bkn,bkc->bnc", assignment, gt_one_hot)
  if positive_targets is not None:
    positive_target = (positive[:, :, tf.newaxis] *
                       tf.stop_gradient(positive_targets))
  target = (positive_target + negative[:, :, tf.newaxis] *
            tf.one_hot(void_class, num_logits, dtype=class_logits.dtype))
  cross_entropy = -tf.reduce_sum(
      target * tf.nn.log_softmax(class_logits, axis=-1), axis=-1)
  dice_weight = tf.maximum(tf.stop_gradient(matched_dice), weight_floor)
  positive_weight = alpha * tf.einsum("bkn,bk->bn", assignment, dice_weight)
  negative_weight = (1.0 - alpha) * negative
  if negative_weights is not None:
    negative_weight *= tf.maximum(tf.stop_gradient(negative_weights),
                                  weight_floor)
  weight = positive_weight + negative_weight
  return tf.reduce_sum(weight * cross_entropy, axis=-1) / num_predictions


def pq_dice_loss(mask_probs: tf.Tensor,
                 assignment: tf.Tensor,
                 gt_masks: tf.Tensor,
                 matched_class_probs: tf.Tensor,
                 alpha: float,
                 smooth: float,
                 weight_floor: float) -> tf.Tensor:
  """Dice part of the PQ-style loss (MaX-DeepLab eq. 10 first term, eq. 12).

  Sum over present ground-truth masks of max(p̂(c), floor) * (1 - Dice), the
  Dice with `smooth` added to numerator and denominator, times alpha / N.

  Args:
    mask_probs: float [B, P, N], zero on void pixels.
    assignment: float [B, K, N] from `assignment_matrix` (zero rows for absent
      masks, which therefore add nothing).
    gt_masks: float [B, P, K].
    matched_class_probs: float [B, K] p̂ of the matched prediction at the
      ground-truth class.
    alpha: MaX: 0.75.
    smooth: Dice smoothing (deeplab2: 1).
    weight_floor: lower bound of the class-probability weight.

  Returns:
    float [B].
  """
  num_predictions = mask_probs.shape[-1]
  # Column k holds the prediction matched to ground-truth mask k.
  matched_pred = tf.einsum("bpn,bkn->bpk", mask_probs, assignment)
  intersection = tf.reduce_sum(matched_pred * gt_masks, axis=1)
  denominator = (tf.reduce_sum(matched_pred, axis=1) +
                 tf.reduce_sum(gt_masks, axis=1) + smooth)
  dice = (2.0 * intersection + smooth) / denominator
  present = tf.reduce_sum(assignment, axis=-1)  # [B, K] in {0, 1}.
  weight = tf.maximum(tf.stop_gradient(matched_class_probs), weight_floor)
  return (tf.reduce_sum(present * weight * (1.0 - dice), axis=-1) *
          alpha / num_predictions)


def mask_id_loss(mask_logits: tf.Tensor,
                 assignment: tf.Tensor,
                 gt_masks: tf.Tensor,
                 activation: str = "softmax") -> tf.Tensor:
  """Mask-ID cross-entropy: classify every labelled pixel into its matched slot.

  Args:
    mask_logits: float [B, P, N].
    assignment: float [B, K, N].
    gt_masks: float [B, P, K]; pixels with no present mask (void, crowd,
      padding) have weight 0.
    activation: "softmax": one cross-entropy over the N slots (MaX);
      "sigmoid": per-slot binary cross-entropies summed over the N slots
      (ReMaX).

  Returns:
    float [B], mean over labelled pixels.
  """
  target = tf.einsum("bpk,bkn->bpn", gt_masks, assignment)
  labelled = tf.reduce_sum(target, axis=-1)  # [B, P] in {0, 1}.
  if activation == "softmax":
    per_pixel = -tf.reduce_sum(
        target * tf.nn.log_softmax(mask_logits, axis=-1), axis=-1)
  elif activation == "sigmoid":
    per_pixel = tf.reduce_sum(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=target,
                                                logits=mask_logits), axis=-1)
  else:
    raise ValueError(f"mask_activation must be one of {MASK_ACTIVATIONS}, got "
                     f"{activation!r}.")
  return targets_lib.masked_mean(per_pixel, labelled)


def instance_discrimination_loss(pixel_embedding: tf.Tensor,
                                 gt_masks: tf.Tensor,
                                 present: tf.Tensor,
                                 is_thing: tf.Tensor,
                                 temperature: float,
                                 anchors: str = "thing") -> tf.Tensor:
  """Instance discrimination (MaX-DeepLab eq. 16-17).

  Each present ground-truth mask (thing or stuff) gets the L2-normalised mean
  embedding t_k of its pixels; each anchor pixel is classified among the
  present masks with logits g_p . t_k / temperature.

  Args:
    pixel_embedding: float [B, P, D], L2-normalised.
    gt_masks: float [B, P, K].
    present: bool [B, K].
    is_thing: bool [B, K] (false for absent masks).
    temperature: tau (MaX: 0.3).
    anchors: "thing" (MaX: only thing pixels are anchors) or "all" (every pixel
      of a present mask).

  Returns:
    float [B], mean over anchor pixels.
  """
  mask_sum = tf.einsum("bpk,bpd->bkd", gt_masks, pixel_embedding)
  # Absent masks sum to 0; l2_normalize keeps them 0 without NaN.
  centers = tf.math.l2_normalize(mask_sum, axis=-1)
  logits = tf.einsum("bpd,bkd->bpk", pixel_embedding, centers) / temperature
  logits = tf.where(present[:, tf.newaxis, :], logits,
                    tf.cast(_ABSENT_LOGIT, logits.dtype))
  per_pixel = -tf.reduce_sum(gt_masks * tf.nn.log_softmax(logits, axis=-1),
                             axis=-1)
  if anchors == "thing":
    anchor_weight = tf.einsum("bpk,bk->bp", gt_masks,
                              tf.cast(is_thing, gt_masks.dtype))
  elif anchors == "all":
    anchor_weight = tf.reduce_sum(gt_masks, axis=-1)
  else:
    raise ValueError(f"instance_discrimination_anchors must be one of "
                     f"{INSTANCE_DISCRIMINATION_ANCHORS}, got {anchors!r}.")
  return targets_lib.masked_mean(per_pixel, anchor_weight)




# ----------------------------------------------------------------------------
# The criterion's parts.
# ----------------------------------------------------------------------------
def stage_dice(inputs: criterion_lib.LossInputs, stage: criterion_lib.Stage,
               epsilon: float) -> tf.Tensor:
  """float32 [B, K, N] matching Dice of a stage (computed once per epsilon)."""
  return stage.cached(("pq_dice", epsilon), lambda: pairwise_dice(
      inputs.targets.masks, stage.valid_probs, smooth=0.0, epsilon=epsilon))


def stage_class_probabilities(inputs: criterion_lib.LossInputs,
                              stage: criterion_lib.Stage) -> tf.Tensor:
  """float32 [B, K, N] p̂_n(c_k) of a stage (computed once)."""
  return stage.cached("gt_class_probs", lambda: gt_class_probabilities(
      stage.class_logits, inputs.targets.classes))


@gin.configurable
class PQSimilarityCost(criterion_lib.MatchingCost):
  """Minus the PQ-style similarity, Dice x p̂(c) (MaX-DeepLab eq. 6).

  Args:
    dice_epsilon: denominator epsilon of the Dice (deeplab2: 1e-5).
  """

  def __init__(self, dice_epsilon: float = 1e-5):
    self.dice_epsilon = dice_epsilon

  def __call__(self, inputs: criterion_lib.LossInputs,
               stage: criterion_lib.Stage) -> tf.Tensor:
    return matching_cost(stage_dice(inputs, stage, self.dice_epsilon),
                         stage_class_probabilities(inputs, stage),
                         inputs.targets.present)


class ClassTargetRelaxation(abc.ABC):
  """Soft class targets of the matched predictions (ReMaX's `ReClass`)."""

  @abc.abstractmethod
  def __call__(self, inputs: criterion_lib.LossInputs,
               stage: criterion_lib.Stage) -> tf.Tensor:
    """float32 [B, N, C + 1] targets (rows of unmatched slots are ignored)."""


@gin.configurable
class PQClassLoss(criterion_lib.StageLossTerm):
  """Class part of the PQ-style loss, common.LOSS_PQ_CLASS (eq. 10-12).

  Args:
    weight: MaX-DeepLab: 3.0 (shared with `PQDiceLoss`).
    alpha: positive / negative balance (MaX-DeepLab: 0.75).
    dice_epsilon: epsilon of the matched Dice weighting the positives (the
      matching's: 1e-5).
    weight_floor: lower bound of the stop-gradient weights (1e-5).
    negative_weighting: "constant": negatives weighted 1 - alpha (eq. 11-12);
      "void_fraction": also times the fraction of the slot's soft mask on void
      pixels (what deeplab2's code does, kMaX-DeepLab).
    target_relaxation: optional soft positive targets (`ReClass`).
  """

  name = common.LOSS_PQ_CLASS
  needs_matching = True

  def __init__(self, weight: float = 3.0, alpha: float = 0.75,
               dice_epsilon: float = 1e-5, weight_floor: float = 1e-5,
               negative_weighting: str = "constant",
               target_relaxation: Optional[ClassTargetRelaxation] = None):
    super().__init__(weight)
    if negative_weighting not in NEGATIVE_CLASS_WEIGHTINGS:
      raise ValueError(f"PQClassLoss.negative_weighting must be one of "
                       f"{NEGATIVE_CLASS_WEIGHTINGS}, got "
                       f"{negative_weighting!r}.")
    self.alpha = alpha
    self.dice_epsilon = dice_epsilon
    self.weight_floor = weight_floor
    self.negative_weighting = negative_weighting
    self.target_relaxation = target_relaxation

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    targets = inputs.targets
    matched_dice = tf.reduce_sum(
        stage_dice(inputs, stage, self.dice_epsilon) * stage.assignment, -1)
    negative_weights = None
    if self.negative_weighting == "void_fraction":
      negative_weights = void_fraction(stage.probs, targets.valid_pixels,
                                       self.weight_floor)
    positive_targets = None
    if self.target_relaxation is not None:
      positive_targets = self.target_relaxation(inputs, stage)
    return pq_class_loss(stage.class_logits, stage.assignment, targets.classes,
                         matched_dice, self.alpha, self.weight_floor,
                         negative_weights, positive_targets)


@gin.configurable
class PQDiceLoss(criterion_lib.StageLossTerm):
  """Dice part of the PQ-style loss, common.LOSS_PQ_DICE (eq. 10, 12).

  Args:
    weight: MaX-DeepLab: 3.0.
    alpha: MaX-DeepLab: 0.75.
    smooth: Dice smoothing (deeplab2: 1).
    weight_floor: lower bound of the class-probability weight (1e-5).
  """

  name = common.LOSS_PQ_DICE
  needs_matching = True

  def __init__(self, weight: float = 3.0, alpha: float = 0.75,
               smooth: float = 1.0, weight_floor: float = 1e-5):
    super().__init__(weight)
    self.alpha = alpha
    self.smooth = smooth
    self.weight_floor = weight_floor

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    matched_class_probs = tf.reduce_sum(
        stage_class_probabilities(inputs, stage) * stage.assignment, axis=-1)
    return pq_dice_loss(stage.valid_probs, stage.assignment,
                        inputs.targets.masks, matched_class_probs, self.alpha,
                        self.smooth, self.weight_floor)


@gin.configurable
class MaskIDCrossEntropy(criterion_lib.StageLossTerm):
  """Mask-ID cross-entropy, common.LOSS_MASK_ID (MaX-DeepLab section 3.4).

  With the criterion's "sigmoid" mask activation, per-slot binary
  cross-entropies summed over the slots (ReMaX).

  Args:
    weight: MaX-DeepLab: 0.3.
  """

  name = common.LOSS_MASK_ID
  needs_matching = True

  def __init__(self, weight: float = 0.3):
    super().__init__(weight)

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    return mask_id_loss(stage.mask_logits, stage.assignment,
                        inputs.targets.masks, inputs.mask_activation)


@gin.configurable
class InstanceDiscrimination(criterion_lib.StageLossTerm):
  """Mask-average instance discrimination (eq. 16-17), on every stage's
  common.PRED_PIXEL_EMBEDDING; common.LOSS_INSTANCE_DISCRIMINATION.

  Args:
    weight: MaX-DeepLab: 1.0.
    temperature: tau (MaX-DeepLab: 0.3).
    anchors: "thing" (MaX-DeepLab: only thing pixels are anchors) or "all"
      pixels of a present mask.
  """

  name = common.LOSS_INSTANCE_DISCRIMINATION

  def __init__(self, weight: float = 1.0, temperature: float = 0.3,
               anchors: str = "thing"):
    super().__init__(weight)
    if temperature <= 0:
      raise ValueError(f"InstanceDiscrimination.temperature must be > 0, got "
                       f"{temperature}.")
    if anchors not in INSTANCE_DISCRIMINATION_ANCHORS:
      raise ValueError(f"InstanceDiscrimination.anchors must be one of "
                       f"{INSTANCE_DISCRIMINATION_ANCHORS}, got {anchors!r}.")
    self.temperature = temperature
    self.anchors = anchors

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    targets = inputs.targets
    return instance_discrimination_loss(
        stage.pixel_embedding, targets.masks, targets.present,
        targets.is_thing, self.temperature, self.anchors)
