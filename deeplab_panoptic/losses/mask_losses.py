"""MaX-DeepLab training losses for mask transformers (MaX, kMaX, CMT, ReMaX).

The terms follow MaX-DeepLab (Wang et al., CVPR 2021) eq. 6-17 and the way
deeplab2 implements them (see papers/REFERENCE_FACTS.md section 3):

  * PQ-style loss (eq. 10-12): a class cross-entropy weighted by the matched
    Dice, and a Dice loss weighted by the matched class probability; both
    weights are constants (stop-gradient).
  * Mask-ID cross-entropy: per-pixel classification over the N mask slots.
  * Instance discrimination (eq. 16-17) on the normalised pixel embedding.
  * Semantic cross-entropy on the auxiliary semantic head.

Notation for shapes: B batch, H x W ground-truth size, h x w prediction size
(stride 4), P = h * w pixels, K ground-truth mask slots, N predicted masks,
C classes (class logits have C + 1 entries, the last one is void / no object),
D embedding channels.

Every function below has static shapes and compiles with XLA; only the scipy
matcher (`matching.hungarian_matching(method="scipy")`) is a host call, so
`MaskTransformerLoss.match` and `MaskTransformerLoss.__call__(...,
matching=...)` are separate steps a trainer can compile separately.
"""

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import matching as matching_lib

MASK_ACTIVATIONS = ("softmax", "sigmoid")
NEGATIVE_CLASS_WEIGHTINGS = ("constant", "void_fraction")
INSTANCE_DISCRIMINATION_ANCHORS = ("thing", "all")

# Logit given to absent ground-truth masks in the instance-discrimination
# softmax so that they receive zero probability (|cos / tau| is far smaller).
_ABSENT_LOGIT = -1e9


class MaskTargets(NamedTuple):
  """Ground truth at the prediction resolution, flattened over pixels.

  Attributes:
    masks: float32 [B, P, K] one-hot ground-truth masks; all zero on void,
      crowd and padding pixels and for absent (empty or vanished) masks.
    present: bool [B, K], the mask slot holds a real mask with >= 1 pixel.
    classes: int32 [B, K] class of each mask, 0 where not present (always use
      together with `present`).
    is_thing: bool [B, K], present thing masks.
    valid_pixels: float32 [B, P], 1 on pixels where predictions are scored (not
      void); mask probabilities are zeroed elsewhere.
  """
  masks: tf.Tensor
  present: tf.Tensor
  classes: tf.Tensor
  is_thing: tf.Tensor
  valid_pixels: tf.Tensor


def resize_nearest(labels: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Nearest-neighbour resize of a label map with half-pixel centres.

  Half-pixel centres are the sampling rule of the model's bilinear resizing,
  so a sub-sampled label sits where the prediction it supervises is.

  Args:
    labels: [B, H, W] tensor (any dtype).
    size: static (h, w).

  Returns:
    [B, h, w] tensor of the same dtype.
  """
  if tuple(labels.shape[1:3]) == tuple(size):
    return labels
  return tf.image.resize(labels[..., tf.newaxis], size, method="nearest")[..., 0]


def prepare_mask_targets(gt_mask_id: tf.Tensor,
                         gt_classes: tf.Tensor,
                         gt_is_thing: tf.Tensor,
                         gt_semantic: tf.Tensor,
                         size: Tuple[int, int],
                         num_classes: int,
                         crowd_as_void: bool = False) -> MaskTargets:
  """Resizes the ground truth to the prediction size and one-hot encodes it.

  Args:
    gt_mask_id: int32 [B, H, W], index in [0, K) of each pixel's mask, -1 for
      void, crowd and padding.
    gt_classes: int32 [B, K] class of each mask, -1 for empty slots.
    gt_is_thing: bool [B, K].
    gt_semantic: int32 [B, H, W] train ids, outside [0, num_classes) at void.
    size: static prediction size (h, w).
    num_classes: C.
    crowd_as_void: if False (deeplab2), crowd pixels (a valid semantic class but
      no mask) still count as non-void, so predicted mask mass there lowers the
      Dice; if True, every pixel without a ground-truth mask is void.

  Returns:
    A `MaskTargets`.
  """
  num_masks = gt_classes.shape[-1]
  height, width = size
  mask_id = tf.reshape(resize_nearest(gt_mask_id, size), [-1, height * width])
  # one_hot maps -1 (void / crowd / padding) to an all-zero row.
  masks = tf.one_hot(mask_id, num_masks, dtype=tf.float32)
  area = tf.reduce_sum(masks, axis=1)
  # A mask that vanishes when resizing counts as absent, like an empty slot.
  present = tf.logical_and(gt_classes >= 0, area > 0)
  masks *= tf.cast(present, tf.float32)[:, tf.newaxis, :]
  has_mask = tf.reduce_sum(masks, axis=-1) > 0
  if crowd_as_void:
    valid = has_mask
  else:
    semantic = tf.reshape(resize_nearest(gt_semantic, size),
                          [-1, height * width])
    labelled = tf.logical_and(semantic >= 0, semantic < num_classes)
    valid = tf.logical_or(labelled, has_mask)
  classes = tf.where(present, gt_classes, tf.zeros_like(gt_classes))
  is_thing = tf.logical_and(tf.cast(gt_is_thing, tf.bool), present)
  return MaskTargets(masks=masks, present=present, classes=classes,
                     is_thing=is_thing, valid_pixels=tf.cast(valid, tf.float32))


def mask_probabilities(mask_logits: tf.Tensor,
                       activation: str = "softmax") -> tf.Tensor:
  """Mask probabilities from mask logits.

  Args:
    mask_logits: float [B, P, N].
    activation: "softmax" over the N slots (MaX eq. 15) or per-slot "sigmoid"
      (ReMaX).

  Returns:
    float [B, P, N].
  """
  if activation == "softmax":
    return tf.nn.softmax(mask_logits, axis=-1)
  if activation == "sigmoid":
    return tf.math.sigmoid(mask_logits)
  raise ValueError(f"mask_activation must be one of {MASK_ACTIVATIONS}, got "
                   f"{activation!r}.")


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
  """Negated PQ-style similarity (MaX eq. 6), the Hungarian cost.

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


def assignment_matrix(matched: tf.Tensor, present: tf.Tensor,
                      num_predictions: int) -> tf.Tensor:
  """One-hot assignment of present ground-truth masks to predictions.

  Args:
    matched: int32 [B, K] prediction index of each ground-truth slot.
    present: bool [B, K].
    num_predictions: N.

  Returns:
    float32 [B, K, N], 1 at (k, matched[k]) for present k, 0 elsewhere.
  """
  return (tf.one_hot(matched, num_predictions, dtype=tf.float32) *
          tf.cast(present, tf.float32)[:, :, tf.newaxis])


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
                  negative_weights: Optional[tf.Tensor] = None) -> tf.Tensor:
  """Class part of the PQ-style loss (MaX eq. 10 second term, eq. 11, eq. 12).

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

  Returns:
    float [B], per image: weighted cross-entropy summed over slots, / N.
  """
  num_predictions = class_logits.shape[1]
  num_logits = class_logits.shape[-1]
  void_class = num_logits - 1
  positive = tf.reduce_sum(assignment, axis=1)  # [B, N] in {0, 1}.
  negative = 1.0 - positive
  gt_one_hot = tf.one_hot(gt_classes, num_logits, dtype=tf.float32)
  target = (tf.einsum("bkn,bkc->bnc", assignment, gt_one_hot) +
            negative[:, :, tf.newaxis] *
            tf.one_hot(void_class, num_logits, dtype=tf.float32))
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
  """Dice part of the PQ-style loss (MaX eq. 10 first term, eq. 12).

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


def _masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """Per-image weighted sum divided by the number of non-zero weights.

  An image without any weighted element gives 0 (nothing to learn there);
  NaN values still propagate.

  Args:
    values: float [B, P].
    weights: float [B, P] >= 0.

  Returns:
    float [B].
  """
  count = tf.reduce_sum(tf.cast(weights > 0, values.dtype), axis=-1)
  return tf.reduce_sum(values * weights, axis=-1) / tf.maximum(count, 1.0)


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
  return _masked_mean(per_pixel, labelled)


def instance_discrimination_loss(pixel_embedding: tf.Tensor,
                                 gt_masks: tf.Tensor,
                                 present: tf.Tensor,
                                 is_thing: tf.Tensor,
                                 temperature: float,
                                 anchors: str = "thing") -> tf.Tensor:
  """Instance discrimination (MaX eq. 16-17).

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
  return _masked_mean(per_pixel, anchor_weight)


def semantic_loss(semantic_logits: tf.Tensor,
                  gt_semantic: tf.Tensor,
                  gt_weight: tf.Tensor,
                  top_k_percent: float = 1.0) -> tf.Tensor:
  """Weighted softmax cross-entropy of the auxiliary semantic head.

  Args:
    semantic_logits: float [B, hs, ws, C].
    gt_semantic: int32 [B, H, W] train ids (anything at zero-weight pixels).
    gt_weight: float32 [B, H, W] pixel weights, 0 at void and padding.
    top_k_percent: in (0, 1]; keep only the hardest round(top_k_percent * hs *
      ws) pixels of each image (by weighted loss), as deeplab2.

  Returns:
    float [B]: sum of weight * cross-entropy over the kept pixels divided by the
    number of kept labelled pixels.
  """
  if not 0.0 < top_k_percent <= 1.0:
    raise ValueError(f"semantic top_k_percent must be in (0, 1], got "
                     f"{top_k_percent}.")
  height, width = semantic_logits.shape[1:3]
  num_classes = semantic_logits.shape[-1]
  labels = tf.reshape(resize_nearest(gt_semantic, (height, width)),
                      [-1, height * width])
  weights = tf.reshape(
      resize_nearest(tf.cast(gt_weight, tf.float32), (height, width)),
      [-1, height * width])
  # Void labels (e.g. 255) are out of range for the op; their weight is 0.
  labels = tf.where(weights > 0, labels, tf.zeros_like(labels))
  logits = tf.reshape(semantic_logits, [-1, height * width, num_classes])
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits)
  if top_k_percent == 1.0:
    return _masked_mean(cross_entropy, weights)
  num_kept = max(1, int(round(top_k_percent * height * width)))
  weighted = cross_entropy * weights
  kept, indices = tf.math.top_k(weighted, k=num_kept, sorted=False)
  kept_weights = tf.gather(weights, indices, batch_dims=1)
  count = tf.reduce_sum(tf.cast(kept_weights > 0, kept.dtype), axis=-1)
  return tf.reduce_sum(kept, axis=-1) / tf.maximum(count, 1.0)


def _resize_bilinear(features: tf.Tensor, size: Tuple[int, int]) -> tf.Tensor:
  """Bilinear resize (half-pixel centres) of [B, h', w', X] to [B, h, w, X]."""
  if tuple(features.shape[1:3]) == tuple(size):
    return features
  return tf.image.resize(features, size, method="bilinear")


@gin.configurable
class MaskTransformerLoss:
  """MaX-DeepLab / kMaX-DeepLab loss with deep supervision.

  Usage:
    loss_fn = MaskTransformerLoss()
    losses = loss_fn(batch, outputs)        # matching included
    # or, to XLA-compile everything but a host (scipy) matcher:
    matched = loss_fn.match(batch, outputs)
    losses = loss_fn(batch, outputs, matching=matched)

  The returned dict maps common.LOSS_* names (and "aux_<i>/<name>" for the
  auxiliary outputs) to scalars that already include their weights, so
  common.LOSS_TOTAL is the sum of all other entries. Per-image means are
  averaged over the batch.
  """

  def __init__(self,
               pq_weight: float = 3.0,
               alpha: float = 0.75,
               mask_id_weight: float = 0.3,
               instance_discrimination_weight: float = 1.0,
               temperature: float = 0.3,
               semantic_weight: float = 1.0,
               aux_weight: float = 1.0,
               matcher_method: Optional[str] = None,
               mask_activation: str = "softmax",
               negative_class_weighting: str = "constant",
               instance_discrimination_anchors: str = "thing",
               semantic_top_k_percent: float = 1.0,
               matching_dice_epsilon: float = 1e-5,
               dice_smooth: float = 1.0,
               weight_floor: float = 1e-5,
               crowd_as_void: bool = False):
    """Initialises the loss.

    Args:
      pq_weight: weight of both PQ-style terms (MaX: 3.0).
      alpha: positive/negative balance of the PQ-style loss (MaX: 0.75).
      mask_id_weight: weight of the mask-ID cross-entropy (MaX: 0.3).
      instance_discrimination_weight: MaX: 1.0.
      temperature: instance-discrimination tau (MaX: 0.3).
      semantic_weight: weight of the semantic loss on the final output.
      aux_weight: multiplies every term of every auxiliary output (deeplab2:
        1.0, full weight).
      matcher_method: "scipy", "tpu", or None (tpu under TPUStrategy).
      mask_activation: "softmax" over slots (MaX) or "sigmoid" (ReMaX), used by
        the matching, the Dice term and the mask-ID term.
      negative_class_weighting: "constant": negatives weighted 1 - alpha (MaX
        eq. 11-12); "void_fraction": also times the fraction of the slot's soft
        mask lying on void pixels (what deeplab2's code does).
      instance_discrimination_anchors: "thing" (MaX) or "all" non-void pixels.
      semantic_top_k_percent: hardest-pixel fraction of the semantic loss.
      matching_dice_epsilon: denominator epsilon of the matching Dice (and of
        the Dice weighting the class term).
      dice_smooth: smoothing of the Dice loss term.
      weight_floor: lower bound of the stop-gradient loss weights.
      crowd_as_void: see `prepare_mask_targets` (deeplab2: False).
    """
    if mask_activation not in MASK_ACTIVATIONS:
      raise ValueError(f"MaskTransformerLoss.mask_activation must be one of "
                       f"{MASK_ACTIVATIONS}, got {mask_activation!r}.")
    if negative_class_weighting not in NEGATIVE_CLASS_WEIGHTINGS:
      raise ValueError(f"MaskTransformerLoss.negative_class_weighting must be "
                       f"one of {NEGATIVE_CLASS_WEIGHTINGS}, got "
                       f"{negative_class_weighting!r}.")
    if instance_discrimination_anchors not in INSTANCE_DISCRIMINATION_ANCHORS:
      raise ValueError(f"MaskTransformerLoss.instance_discrimination_anchors "
                       f"must be one of {INSTANCE_DISCRIMINATION_ANCHORS}, got "
                       f"{instance_discrimination_anchors!r}.")
    if matcher_method not in (None,) + matching_lib.METHODS:
      raise ValueError(f"MaskTransformerLoss.matcher_method must be one of "
                       f"{matching_lib.METHODS} or None, got "
                       f"{matcher_method!r}.")
    if not 0.0 < semantic_top_k_percent <= 1.0:
      raise ValueError(f"MaskTransformerLoss.semantic_top_k_percent must be in "
                       f"(0, 1], got {semantic_top_k_percent}.")
    if temperature <= 0:
      raise ValueError(f"MaskTransformerLoss.temperature must be > 0, got "
                       f"{temperature}.")
    self.pq_weight = pq_weight
    self.alpha = alpha
    self.mask_id_weight = mask_id_weight
    self.instance_discrimination_weight = instance_discrimination_weight
    self.temperature = temperature
    self.semantic_weight = semantic_weight
    self.aux_weight = aux_weight
    self.matcher_method = matcher_method
    self.mask_activation = mask_activation
    self.negative_class_weighting = negative_class_weighting
    self.instance_discrimination_anchors = instance_discrimination_anchors
    self.semantic_top_k_percent = semantic_top_k_percent
    self.matching_dice_epsilon = matching_dice_epsilon
    self.dice_smooth = dice_smooth
    self.weight_floor = weight_floor
    self.crowd_as_void = crowd_as_void

  # --------------------------------------------------------------------------
  # Helpers.
  # --------------------------------------------------------------------------
  @staticmethod
  def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
      raise KeyError(f"MaskTransformerLoss: {where} has no {key!r} "
                     f"(keys: {sorted(mapping)}).")
    return mapping[key]

  def _check_shapes(self, batch: Mapping[str, Any],
                    outputs: Mapping[str, Any]) -> Tuple[int, int, int]:
    """Returns (K, N, C) after validating the static shapes."""
    gt_classes = self._require(batch, common.GT_CLASSES, "batch")
    class_logits = self._require(outputs, common.PRED_CLASS_LOGITS, "outputs")
    mask_logits = self._require(outputs, common.PRED_MASK_LOGITS, "outputs")
    if class_logits.shape.rank != 3 or mask_logits.shape.rank != 4:
      raise ValueError(
          f"MaskTransformerLoss: expected {common.PRED_CLASS_LOGITS} [B, N, C+1] "
          f"and {common.PRED_MASK_LOGITS} [B, h, w, N], got "
          f"{class_logits.shape} and {mask_logits.shape}.")
    num_masks = gt_classes.shape[-1]
    num_predictions = class_logits.shape[1]
    if mask_logits.shape[-1] != num_predictions:
      raise ValueError(
          f"MaskTransformerLoss: {common.PRED_MASK_LOGITS} has "
          f"{mask_logits.shape[-1]} masks but {common.PRED_CLASS_LOGITS} has "
          f"{num_predictions}.")
    if num_masks is None or num_predictions is None:
      raise ValueError("MaskTransformerLoss: K and N must be static, got "
                       f"{common.GT_CLASSES} {gt_classes.shape}, "
                       f"{common.PRED_CLASS_LOGITS} {class_logits.shape}.")
    if num_masks > num_predictions:
      raise ValueError(
          f"MaskTransformerLoss: more ground-truth mask slots (K={num_masks}) "
          f"than predicted masks (N={num_predictions}); the matching needs "
          "K <= N. Lower the data's maximum number of masks or raise N.")
    return num_masks, num_predictions, class_logits.shape[-1] - 1

  def _targets(self, batch: Mapping[str, Any], size: Tuple[int, int],
               num_classes: int) -> MaskTargets:
    return prepare_mask_targets(
        tf.cast(self._require(batch, common.GT_MASK_ID, "batch"), tf.int32),
        tf.cast(self._require(batch, common.GT_CLASSES, "batch"), tf.int32),
        self._require(batch, common.GT_IS_THING, "batch"),
        tf.cast(self._require(batch, common.GT_SEMANTIC, "batch"), tf.int32),
        size, num_classes, self.crowd_as_void)

  def _flat_masks(self, output: Mapping[str, Any], size: Tuple[int, int],
                  where: str) -> Tuple[tf.Tensor, tf.Tensor]:
    """Class logits [B, N, C+1] and mask logits [B, P, N] resized to `size`."""
    class_logits = tf.cast(
        self._require(output, common.PRED_CLASS_LOGITS, where), tf.float32)
    mask_logits = tf.cast(
        self._require(output, common.PRED_MASK_LOGITS, where), tf.float32)
    mask_logits = _resize_bilinear(mask_logits, size)
    return class_logits, tf.reshape(
        mask_logits, [-1, size[0] * size[1], mask_logits.shape[-1]])

  def _flat_embedding(self, output: Mapping[str, Any], size: Tuple[int, int],
                      where: str) -> tf.Tensor:
    """Pixel embedding [B, P, D] at `size`, unit length."""
    embedding = tf.cast(
        self._require(output, common.PRED_PIXEL_EMBEDDING, where), tf.float32)
    if tuple(embedding.shape[1:3]) != tuple(size):
      # Interpolation shortens unit vectors; eq. 17 assumes unit length.
      embedding = tf.math.l2_normalize(_resize_bilinear(embedding, size),
                                       axis=-1)
    return tf.reshape(embedding, [-1, size[0] * size[1], embedding.shape[-1]])

  def _similarity_terms(self, class_logits: tf.Tensor, mask_logits: tf.Tensor,
                        targets: MaskTargets
                        ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns (mask probs [B,P,N], dice [B,K,N], class probs [B,K,N])."""
    probs = mask_probabilities(mask_logits, self.mask_activation)
    valid_probs = probs * targets.valid_pixels[:, :, tf.newaxis]
    dice = pairwise_dice(targets.masks, valid_probs, smooth=0.0,
                         epsilon=self.matching_dice_epsilon)
    class_probs = gt_class_probabilities(class_logits, targets.classes)
    return probs, dice, class_probs

  # --------------------------------------------------------------------------
  # Public API.
  # --------------------------------------------------------------------------
  def match(self, batch: Mapping[str, Any],
            outputs: Mapping[str, Any]) -> tf.Tensor:
    """Hungarian matching on the final output.

    Args:
      batch: ground-truth dict (common.GT_*).
      outputs: model outputs (common.PRED_*).

    Returns:
      int32 [B, K], prediction matched to each ground-truth slot (arbitrary
      but distinct for absent slots).
    """
    _, _, num_classes = self._check_shapes(batch, outputs)
    size = tuple(outputs[common.PRED_MASK_LOGITS].shape[1:3])
    targets = self._targets(batch, size, num_classes)
    class_logits, mask_logits = self._flat_masks(outputs, size, "outputs")
    similarity = self._similarity_terms(class_logits, mask_logits, targets)
    return self._match(similarity, targets)

  def _match(self, similarity: Tuple[tf.Tensor, tf.Tensor, tf.Tensor],
             targets: MaskTargets) -> tf.Tensor:
    _, dice, class_probs = similarity
    cost = matching_cost(dice, class_probs, targets.present)
    return matching_lib.hungarian_matching(cost, self.matcher_method)

  def _mask_terms(self, class_logits: tf.Tensor, mask_logits: tf.Tensor,
                  embedding: Optional[tf.Tensor], targets: MaskTargets,
                  assignment: tf.Tensor,
                  similarity: Tuple[tf.Tensor, tf.Tensor, tf.Tensor]
                  ) -> Dict[str, tf.Tensor]:
    """Weighted per-mask terms of one output (final or auxiliary)."""
    probs, dice, class_probs = similarity
    matched_dice = tf.reduce_sum(dice * assignment, axis=-1)
    matched_class_probs = tf.reduce_sum(class_probs * assignment, axis=-1)
    negative_weights = None
    if self.negative_class_weighting == "void_fraction":
      negative_weights = void_fraction(probs, targets.valid_pixels,
                                       self.weight_floor)
    valid_probs = probs * targets.valid_pixels[:, :, tf.newaxis]
    zero = tf.zeros([], tf.float32)
    losses = {}
    losses[common.LOSS_PQ_CLASS] = self.pq_weight * tf.reduce_mean(
        pq_class_loss(class_logits, assignment, targets.classes, matched_dice,
                      self.alpha, self.weight_floor, negative_weights))
    losses[common.LOSS_PQ_DICE] = self.pq_weight * tf.reduce_mean(
        pq_dice_loss(valid_probs, assignment, targets.masks,
                     matched_class_probs, self.alpha, self.dice_smooth,
                     self.weight_floor))
    losses[common.LOSS_MASK_ID] = (self.mask_id_weight * tf.reduce_mean(
        mask_id_loss(mask_logits, assignment, targets.masks,
                     self.mask_activation)) if self.mask_id_weight else zero)
    if self.instance_discrimination_weight:
      losses[common.LOSS_INSTANCE_DISCRIMINATION] = (
          self.instance_discrimination_weight * tf.reduce_mean(
              instance_discrimination_loss(
                  embedding, targets.masks, targets.present, targets.is_thing,
                  self.temperature, self.instance_discrimination_anchors)))
    else:
      losses[common.LOSS_INSTANCE_DISCRIMINATION] = zero
    return losses

  def __call__(self, batch: Mapping[str, Any], outputs: Mapping[str, Any],
               matching: Optional[tf.Tensor] = None) -> Dict[str, tf.Tensor]:
    """Computes all losses.

    Args:
      batch: dict with common.GT_MASK_ID [B,H,W], GT_CLASSES [B,K], GT_IS_THING
        [B,K], GT_SEMANTIC [B,H,W], GT_SEMANTIC_WEIGHT [B,H,W].
      outputs: dict with common.PRED_CLASS_LOGITS [B,N,C+1], PRED_MASK_LOGITS
        [B,h,w,N], PRED_PIXEL_EMBEDDING [B,h,w,D], PRED_SEMANTIC_LOGITS
        [B,hs,ws,C], and optionally AUX_OUTPUTS (list of dicts with the first
        three keys, any spatial size).
      matching: optional int32 [B, K] from `match`; computed here if None. The
        same matching (of the final output) serves every auxiliary output.

    Returns:
      Dict of float32 scalars: common.LOSS_PQ_CLASS, LOSS_PQ_DICE, LOSS_MASK_ID,
      LOSS_INSTANCE_DISCRIMINATION, LOSS_SEMANTIC, "aux_<i>/<name>" for the
      four per-mask names of every auxiliary output, and LOSS_TOTAL, their sum.
      Each entry already includes its weight.
    """
    num_masks, num_predictions, num_classes = self._check_shapes(batch, outputs)
    size = tuple(outputs[common.PRED_MASK_LOGITS].shape[1:3])
    targets = self._targets(batch, size, num_classes)
    class_logits, mask_logits = self._flat_masks(outputs, size, "outputs")
    similarity = self._similarity_terms(class_logits, mask_logits, targets)
    if matching is None:
      matching = self._match(similarity, targets)
    matching = tf.stop_gradient(tf.cast(matching, tf.int32))
    if matching.shape.rank != 2 or matching.shape[-1] != num_masks:
      raise ValueError(f"MaskTransformerLoss: matching must be [B, {num_masks}],"
                       f" got {matching.shape}.")
    assignment = assignment_matrix(matching, targets.present, num_predictions)

    def embedding_of(output, where):
      if not self.instance_discrimination_weight:
        return None
      return self._flat_embedding(output, size, where)

    losses = self._mask_terms(class_logits, mask_logits,
                              embedding_of(outputs, "outputs"), targets,
                              assignment, similarity)
    if self.semantic_weight:
      semantic_logits = tf.cast(
          self._require(outputs, common.PRED_SEMANTIC_LOGITS, "outputs"),
          tf.float32)
      losses[common.LOSS_SEMANTIC] = self.semantic_weight * tf.reduce_mean(
          semantic_loss(
              semantic_logits,
              tf.cast(self._require(batch, common.GT_SEMANTIC, "batch"),
                      tf.int32),
              self._require(batch, common.GT_SEMANTIC_WEIGHT, "batch"),
              self.semantic_top_k_percent))
    else:
      losses[common.LOSS_SEMANTIC] = tf.zeros([], tf.float32)

    aux_outputs: Sequence[Mapping[str, Any]] = outputs.get(common.AUX_OUTPUTS,
                                                           None) or []
    for index, aux in enumerate(aux_outputs):
      where = f"outputs[{common.AUX_OUTPUTS!r}][{index}]"
      aux_class, aux_mask = self._flat_masks(aux, size, where)
      if aux_class.shape[1] != num_predictions:
        raise ValueError(f"MaskTransformerLoss: {where} has "
                         f"{aux_class.shape[1]} predictions, the final output "
                         f"{num_predictions}; the shared matching needs equal N.")
      aux_losses = self._mask_terms(
          aux_class, aux_mask, embedding_of(aux, where), targets, assignment,
          self._similarity_terms(aux_class, aux_mask, targets))
      for name, value in aux_losses.items():
        losses[aux_loss_name(index, name)] = self.aux_weight * value

    losses[common.LOSS_TOTAL] = tf.add_n(list(losses.values()))
    return losses


def aux_loss_name(index: int, name: str) -> str:
  """Key of loss `name` of auxiliary output `index` ("aux_0/pq_class_loss")."""
  return f"aux_{index}/{name}"


def loss_names(num_aux_outputs: int) -> List[str]:
  """All keys `MaskTransformerLoss` returns for `num_aux_outputs` aux outputs."""
  per_mask = [common.LOSS_PQ_CLASS, common.LOSS_PQ_DICE, common.LOSS_MASK_ID,
              common.LOSS_INSTANCE_DISCRIMINATION]
  names = per_mask + [common.LOSS_SEMANTIC]
  for index in range(num_aux_outputs):
    names += [aux_loss_name(index, name) for name in per_mask]
  return names + [common.LOSS_TOTAL]
