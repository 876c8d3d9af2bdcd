"""MaX-DeepLab training losses for mask transformers (MaX, kMaX, CMT, ReMaX).

The terms follow MaX-DeepLab (Wang et al., CVPR 2021) eq. 6-17 and the way
deeplab2 implements them (see papers/REFERENCE_FACTS.md section 3):

  * PQ-style loss (eq. 10-12): a class cross-entropy weighted by the matched
    Dice, and a Dice loss weighted by the matched class probability; both
    weights are constants (stop-gradient).
  * Mask-ID cross-entropy: per-pixel classification over the N mask slots.
  * Instance discrimination (eq. 16-17) on the normalised pixel embedding.
  * Semantic cross-entropy on the auxiliary semantic head.

`MaskTransformerLoss` also carries the CMT-DeepLab terms (pixel-wise
contrastive instance discrimination, mask-approximation loss; `cmt.py`), the
ReMaX relaxations (ReMask with per-stage semantic losses, ReClass; `remax.py`)
and deep supervision with shared or per-stage matching. The Panoptic SegFormer
criterion is `panoptic_segformer.PanopticSegFormerLoss`. docs/losses.md says
how void, crowd, empty images and more ground-truth masks than predictions are
handled.

Notation for shapes: B batch, H x W ground-truth size, h x w prediction size
(stride 4), P = h * w pixels, K ground-truth mask slots, N predicted masks,
C classes (class logits have C + 1 entries, the last one is void / no object),
D embedding channels.

Every function below has static shapes and compiles with XLA; only the scipy
matcher (`matching.hungarian_matching(method="scipy")`) is a host call, so
`MaskTransformerLoss.match` and `MaskTransformerLoss.__call__(...,
matching=...)` are separate steps a trainer can compile separately.
"""

from typing import (Any, Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import cmt
from deeplab_panoptic.losses import matching as matching_lib
from deeplab_panoptic.losses import remax

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
    matched: int32 [B, K] prediction index of each ground-truth slot, -1
      for none (gives a zero row).
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
                  negative_weights: Optional[tf.Tensor] = None,
                  positive_targets: Optional[tf.Tensor] = None) -> tf.Tensor:
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
      resize_nearest(tf.cast(gt_weight, semantic_logits.dtype),
                     (height, width)),
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


MATCHING_MODES = ("shared", "per_stage")


def require(mapping: Mapping[str, Any], key: str, where: str,
            owner: str = "MaskTransformerLoss") -> Any:
  """`mapping[key]`, or a KeyError naming what is missing and where."""
  if key not in mapping:
    raise KeyError(f"{owner}: {where} has no {key!r} (keys: {sorted(mapping)}).")
  return mapping[key]


def flat_mask_logits(output: Mapping[str, Any], size: Tuple[int, int],
                     where: str, owner: str = "MaskTransformerLoss"
                     ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Class logits [B, N, C+1] and mask logits [B, P, N] resized to `size`."""
  class_logits = tf.cast(
      require(output, common.PRED_CLASS_LOGITS, where, owner), tf.float32)
  mask_logits = tf.cast(
      require(output, common.PRED_MASK_LOGITS, where, owner), tf.float32)
  mask_logits = _resize_bilinear(mask_logits, size)
  return class_logits, tf.reshape(
      mask_logits, [-1, size[0] * size[1], mask_logits.shape[-1]])


def decoder_stages(outputs: Mapping[str, Any]
                   ) -> List[Tuple[str, Mapping[str, Any]]]:
  """(loss-name prefix, output dict) of every decoder stage, final last.

  Stage i < len(aux) is `outputs[AUX_OUTPUTS][i]` with prefix "aux_<i>/"; the
  final output is the last stage, with prefix "".
  """
  aux_outputs: Sequence[Mapping[str, Any]] = outputs.get(common.AUX_OUTPUTS,
                                                         None) or []
  stages = [(aux_loss_name(index, ""), aux)
            for index, aux in enumerate(aux_outputs)]
  return stages + [("", outputs)]


def check_matching_mode(mode: str, owner: str) -> None:
  if mode not in MATCHING_MODES:
    raise ValueError(f"{owner}.matching_mode must be one of {MATCHING_MODES}, "
                     f"got {mode!r}.")


class _Stage(NamedTuple):
  """The predictions of one decoder stage, flattened at the loss resolution."""
  prefix: str
  where: str
  output: Mapping[str, Any]
  class_logits: tf.Tensor   # [B, N, C + 1]
  mask_logits: tf.Tensor    # [B, P, N], after ReMask where it applies.
  raw_mask_logits: tf.Tensor  # [B, P, N], before ReMask.
  semantic_logits: Optional[tf.Tensor]  # [B, hs, ws, C] ReMaX stage logits.


@gin.configurable
class MaskTransformerLoss:
  """MaX / CMT / kMaX / ReMaX-DeepLab loss with deep supervision.

  Terms (each a function of this package; see docs/losses.md):
    * PQ-style class and Dice terms (MaX eq. 6-12), mask-ID cross-entropy and
      the semantic loss: always (weights may be 0).
    * Instance discrimination: mask-average (MaX eq. 16-17) when
      `instance_discrimination_sample_k` is 0, else the pixel-wise contrastive
      loss of CMT-DeepLab eq. 14 on that many pixels sampled with p
      proportional to area^-T (`cmt.py`).
    * CMT mask-approximation loss (eq. 13) when
      `mask_approximation_weight` > 0, on every stage whose dict holds
      common.PRED_REFERENCE_POINTS (required on the final output).
    * ReMaX ReMask on the first `remask_num_stages` decoder stages (their dicts
      must hold common.PRED_STAGE_SEMANTIC_LOGITS), with a per-stage semantic
      loss of weight `stage_semantic_weight`; ReClass when `reclass_eta` > 0.

  Stages are `outputs[AUX_OUTPUTS]` in order, then the final output. With
  `matching_mode="shared"` the final output is matched once and that matching
  serves every stage (deeplab2, kMaX); with "per_stage" every stage is matched
  on its own predictions (DETR-style).

  Usage:
    loss_fn = MaskTransformerLoss()
    losses = loss_fn(batch, outputs)        # matching included
    # or, to XLA-compile everything but a host (scipy) matcher:
    matched = loss_fn.match(batch, outputs)
    losses = loss_fn(batch, outputs, matching=matched)

  The returned dict maps common.LOSS_* names (and "aux_<i>/<name>" for the
  auxiliary outputs) to scalars that already include their weights, so
  common.LOSS_TOTAL is the sum of all other entries. Per-image means are
  averaged over the batch. NaN is never replaced.
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
               crowd_as_void: bool = False,
               matching_mode: str = "shared",
               instance_discrimination_sample_k: int = 0,
               instance_discrimination_sample_temperature: float = 1.5,
               mask_approximation_weight: float = 0.0,
               remask_num_stages: int = 0,
               stage_semantic_weight: float = 0.5,
               reclass_eta: float = 0.0):
    """Initialises the loss.

    Args:
      pq_weight: weight of both PQ-style terms (MaX: 3.0).
      alpha: positive/negative balance of the PQ-style loss (MaX: 0.75).
      mask_id_weight: weight of the mask-ID cross-entropy (MaX: 0.3).
      instance_discrimination_weight: MaX: 1.0.
      temperature: instance-discrimination tau (MaX: 0.3).
      semantic_weight: weight of the semantic loss on the final output.
      aux_weight: multiplies every per-mask term of every auxiliary output
        (deeplab2: 1.0, full weight).
      matcher_method: "scipy", "tpu", or None (tpu under TPUStrategy).
      mask_activation: "softmax" over slots (MaX) or "sigmoid" (ReMaX), used by
        the matching, the Dice term, the mask-ID term and ReClass.
      negative_class_weighting: "constant": negatives weighted 1 - alpha (MaX
        eq. 11-12); "void_fraction": also times the fraction of the slot's soft
        mask lying on void pixels (what deeplab2's code does).
      instance_discrimination_anchors: "thing" (MaX) or "all" non-void pixels;
        mask-average version only (the pixel-wise one samples all labelled
        pixels, as deeplab2).
      semantic_top_k_percent: hardest-pixel fraction of the semantic losses.
      matching_dice_epsilon: denominator epsilon of the matching Dice (and of
        the Dice weighting the class term).
      dice_smooth: smoothing of the Dice loss term.
      weight_floor: lower bound of the stop-gradient loss weights.
      crowd_as_void: see `prepare_mask_targets` (deeplab2: False).
      matching_mode: "shared" (match the final output once, reuse it for every
        stage) or "per_stage".
      instance_discrimination_sample_k: 0 for MaX's mask-average instance
        discrimination, else |A| of CMT's pixel-wise contrastive loss (4096).
      instance_discrimination_sample_temperature: T of the p ~ area^-T pixel
        sampling (deeplab2: 1.5 COCO/ADE, 0.6 Cityscapes).
      mask_approximation_weight: CMT eq. 13 weight (CMT: 1.0; 0 disables).
      remask_num_stages: ReMaX ReMask on decoder stages [0, this) (ReMaX: 4;
        0 disables).
      stage_semantic_weight: weight of each ReMask stage's semantic loss
        (ReMaX: 0.5).
      reclass_eta: ReClass eta (ReMaX: 0.1; 0 disables).
    """
    owner = "MaskTransformerLoss"
    if mask_activation not in MASK_ACTIVATIONS:
      raise ValueError(f"{owner}.mask_activation must be one of "
                       f"{MASK_ACTIVATIONS}, got {mask_activation!r}.")
    if negative_class_weighting not in NEGATIVE_CLASS_WEIGHTINGS:
      raise ValueError(f"{owner}.negative_class_weighting must be "
                       f"one of {NEGATIVE_CLASS_WEIGHTINGS}, got "
                       f"{negative_class_weighting!r}.")
    if instance_discrimination_anchors not in INSTANCE_DISCRIMINATION_ANCHORS:
      raise ValueError(f"{owner}.instance_discrimination_anchors "
                       f"must be one of {INSTANCE_DISCRIMINATION_ANCHORS}, got "
                       f"{instance_discrimination_anchors!r}.")
    if matcher_method not in (None,) + matching_lib.METHODS:
      raise ValueError(f"{owner}.matcher_method must be one of "
                       f"{matching_lib.METHODS} or None, got "
                       f"{matcher_method!r}.")
    check_matching_mode(matching_mode, owner)
    if not 0.0 < semantic_top_k_percent <= 1.0:
      raise ValueError(f"{owner}.semantic_top_k_percent must be in "
                       f"(0, 1], got {semantic_top_k_percent}.")
    if temperature <= 0:
      raise ValueError(f"{owner}.temperature must be > 0, got "
                       f"{temperature}.")
    if instance_discrimination_sample_k < 0:
      raise ValueError(f"{owner}.instance_discrimination_sample_k must be >= 0,"
                       f" got {instance_discrimination_sample_k}.")
    if remask_num_stages < 0:
      raise ValueError(f"{owner}.remask_num_stages must be >= 0, got "
                       f"{remask_num_stages}.")
    if not 0.0 <= reclass_eta <= 1.0:
      raise ValueError(f"{owner}.reclass_eta must be in [0, 1], got "
                       f"{reclass_eta}.")
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
    self.matching_mode = matching_mode
    self.instance_discrimination_sample_k = instance_discrimination_sample_k
    self.instance_discrimination_sample_temperature = (
        instance_discrimination_sample_temperature)
    self.mask_approximation_weight = mask_approximation_weight
    self.remask_num_stages = remask_num_stages
    self.stage_semantic_weight = stage_semantic_weight
    self.reclass_eta = reclass_eta

  # --------------------------------------------------------------------------
  # Helpers.
  # --------------------------------------------------------------------------
  @staticmethod
  def _require(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    return require(mapping, key, where)

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
    return flat_mask_logits(output, size, where)

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

  def _stages(self, outputs: Mapping[str, Any], size: Tuple[int, int],
              num_predictions: int) -> List[_Stage]:
    """Every decoder stage, flattened, with ReMask applied where it belongs."""
    stages = []
    for index, (prefix, output) in enumerate(decoder_stages(outputs)):
      where = (f"outputs[{common.AUX_OUTPUTS!r}][{index}]" if prefix
               else "outputs")
      class_logits, mask_logits = self._flat_masks(output, size, where)
      if class_logits.shape[1] != num_predictions:
        raise ValueError(f"MaskTransformerLoss: {where} has "
                         f"{class_logits.shape[1]} predictions, the final "
                         f"output {num_predictions}.")
      semantic_logits = None
      remasked = mask_logits
      if index < self.remask_num_stages:
        semantic_logits = tf.cast(self._require(
            output, common.PRED_STAGE_SEMANTIC_LOGITS,
            f"{where} (ReMask stage {index} < remask_num_stages="
            f"{self.remask_num_stages})"), tf.float32)
        flat_semantic = tf.reshape(
            _resize_bilinear(semantic_logits, size),
            [-1, size[0] * size[1], semantic_logits.shape[-1]])
        remasked = remax.remask_logits(mask_logits, flat_semantic,
                                       class_logits)
      stages.append(_Stage(prefix, where, output, class_logits, remasked,
                           mask_logits, semantic_logits))
    return stages

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

  def _match(self, similarity: Tuple[tf.Tensor, tf.Tensor, tf.Tensor],
             targets: MaskTargets) -> tf.Tensor:
    _, dice, class_probs = similarity
    cost = matching_cost(dice, class_probs, targets.present)
    return matching_lib.match_ground_truth(cost, targets.present,
                                           self.matcher_method)

  # --------------------------------------------------------------------------
  # Public API.
  # --------------------------------------------------------------------------
  def match(self, batch: Mapping[str, Any],
            outputs: Mapping[str, Any]) -> Union[tf.Tensor, List[tf.Tensor]]:
    """Hungarian matching (the only step that may be a host call).

    Args:
      batch: ground-truth dict (common.GT_*).
      outputs: model outputs (common.PRED_*).

    Returns:
      "shared" mode: int32 [B, K], the prediction matched to each ground-truth
      slot of the final output, -1 for absent slots and for masks left without
      a prediction when K > N. "per_stage" mode: a list of such tensors, one
      per stage (auxiliary outputs in order, then the final output).
    """
    _, num_predictions, num_classes = self._check_shapes(batch, outputs)
    size = tuple(outputs[common.PRED_MASK_LOGITS].shape[1:3])
    targets = self._targets(batch, size, num_classes)
    stages = self._stages(outputs, size, num_predictions)
    if self.matching_mode == "shared":
      stages = stages[-1:]
    matched = [self._match(self._similarity_terms(
        stage.class_logits, stage.mask_logits, targets), targets)
               for stage in stages]
    return matched[0] if self.matching_mode == "shared" else matched

  def _mask_terms(self, stage: _Stage, targets: MaskTargets,
                  assignment: tf.Tensor,
                  similarity: Tuple[tf.Tensor, tf.Tensor, tf.Tensor],
                  size: Tuple[int, int],
                  semantic_masks: Optional[tf.Tensor],
                  samples: Optional[Tuple[tf.Tensor, tf.Tensor]]
                  ) -> Dict[str, tf.Tensor]:
    """Weighted per-mask terms of one stage (final or auxiliary)."""
    probs, dice, class_probs = similarity
    matched_dice = tf.reduce_sum(dice * assignment, axis=-1)
    matched_class_probs = tf.reduce_sum(class_probs * assignment, axis=-1)
    negative_weights = None
    if self.negative_class_weighting == "void_fraction":
      negative_weights = void_fraction(probs, targets.valid_pixels,
                                       self.weight_floor)
    positive_targets = None
    if self.reclass_eta:
      one_hot = tf.einsum(
          "bkn,bkc->bnc", assignment,
          tf.one_hot(targets.classes, stage.class_logits.shape[-1],
                     dtype=tf.float32))
      raw_probs = mask_probabilities(stage.raw_mask_logits,
                                     self.mask_activation)
      positive_targets = remax.reclass_targets(
          raw_probs * targets.valid_pixels[:, :, tf.newaxis], semantic_masks,
          one_hot, self.reclass_eta)
    valid_probs = probs * targets.valid_pixels[:, :, tf.newaxis]
    zero = tf.zeros([], tf.float32)
    losses = {}
    losses[common.LOSS_PQ_CLASS] = self.pq_weight * tf.reduce_mean(
        pq_class_loss(stage.class_logits, assignment, targets.classes,
                      matched_dice, self.alpha, self.weight_floor,
                      negative_weights, positive_targets))
    losses[common.LOSS_PQ_DICE] = self.pq_weight * tf.reduce_mean(
        pq_dice_loss(valid_probs, assignment, targets.masks,
                     matched_class_probs, self.alpha, self.dice_smooth,
                     self.weight_floor))
    losses[common.LOSS_MASK_ID] = (self.mask_id_weight * tf.reduce_mean(
        mask_id_loss(stage.mask_logits, assignment, targets.masks,
                     self.mask_activation)) if self.mask_id_weight else zero)
    if self.instance_discrimination_weight:
      embedding = self._flat_embedding(stage.output, size, stage.where)
      if samples is None:
        per_image = instance_discrimination_loss(
            embedding, targets.masks, targets.present, targets.is_thing,
            self.temperature, self.instance_discrimination_anchors)
      else:
        per_image = cmt.pixel_contrastive_loss(
            embedding, targets.masks, samples[0], samples[1], self.temperature)
      losses[common.LOSS_INSTANCE_DISCRIMINATION] = (
          self.instance_discrimination_weight * tf.reduce_mean(per_image))
    else:
      losses[common.LOSS_INSTANCE_DISCRIMINATION] = zero
    if self.mask_approximation_weight:
      is_final = not stage.prefix
      if is_final or common.PRED_REFERENCE_POINTS in stage.output:
        if common.PRED_REFERENCE_POINTS not in stage.output:
          raise KeyError(
              f"MaskTransformerLoss.mask_approximation_weight is "
              f"{self.mask_approximation_weight} but the model predicts no "
              f"{common.PRED_REFERENCE_POINTS!r} (CMT-DeepLab's reference masks: "
              "CMTLayerConfig.location = True); set the weight to 0 for a model "
              "without them.")
        points = tf.cast(stage.output[common.PRED_REFERENCE_POINTS], tf.float32)
        losses[common.LOSS_MASK_APPROXIMATION] = (
            self.mask_approximation_weight * tf.reduce_mean(
                cmt.mask_approximation_loss(points, targets.masks, assignment,
                                            size)))
    return losses

  def __call__(self, batch: Mapping[str, Any], outputs: Mapping[str, Any],
               matching: Optional[Union[tf.Tensor, Sequence[tf.Tensor]]] = None
               ) -> Dict[str, tf.Tensor]:
    """Computes all losses.

    Args:
      batch: dict with common.GT_MASK_ID [B,H,W], GT_CLASSES [B,K], GT_IS_THING
        [B,K], GT_SEMANTIC [B,H,W], GT_SEMANTIC_WEIGHT [B,H,W].
      outputs: dict with common.PRED_CLASS_LOGITS [B,N,C+1], PRED_MASK_LOGITS
        [B,h,w,N], PRED_PIXEL_EMBEDDING [B,h,w,D], PRED_SEMANTIC_LOGITS
        [B,hs,ws,C], and optionally AUX_OUTPUTS (list of dicts with the first
        three keys, any spatial size). CMT adds PRED_REFERENCE_POINTS
        [B,N,M,2]; ReMaX adds PRED_STAGE_SEMANTIC_LOGITS [B,hs,ws,C] to the
        first `remask_num_stages` stages.
      matching: optional result of `match`; computed here if None.

    Returns:
      Dict of float32 scalars: common.LOSS_PQ_CLASS, LOSS_PQ_DICE, LOSS_MASK_ID,
      LOSS_INSTANCE_DISCRIMINATION, LOSS_SEMANTIC (and LOSS_MASK_APPROXIMATION,
      LOSS_STAGE_SEMANTIC when enabled) of the final output, "aux_<i>/<name>"
      for the per-mask terms of every auxiliary output, and LOSS_TOTAL, their
      sum. Each entry already includes its weight.
    """
    num_masks, num_predictions, num_classes = self._check_shapes(batch, outputs)
    size = tuple(outputs[common.PRED_MASK_LOGITS].shape[1:3])
    targets = self._targets(batch, size, num_classes)
    stages = self._stages(outputs, size, num_predictions)
    similarities = [self._similarity_terms(stage.class_logits,
                                           stage.mask_logits, targets)
                    for stage in stages]
    if matching is None:
      if self.matching_mode == "shared":
        matching = self._match(similarities[-1], targets)
      else:
        matching = [self._match(similarity, targets)
                    for similarity in similarities]
    if isinstance(matching, (list, tuple)):
      if len(matching) != len(stages):
        raise ValueError(f"MaskTransformerLoss: {len(matching)} matchings for "
                         f"{len(stages)} decoder stages.")
      matchings = list(matching)
    else:
      matchings = [matching] * len(stages)
    assignments = []
    for matched in matchings:
      matched = tf.stop_gradient(tf.cast(matched, tf.int32))
      if matched.shape.rank != 2 or matched.shape[-1] != num_masks:
        raise ValueError(f"MaskTransformerLoss: matching must be [B, "
                         f"{num_masks}], got {matched.shape}.")
      assignments.append(
          assignment_matrix(matched, targets.present, num_predictions))

    gt_semantic = tf.cast(self._require(batch, common.GT_SEMANTIC, "batch"),
                          tf.int32)
    gt_weight = self._require(batch, common.GT_SEMANTIC_WEIGHT, "batch")
    semantic_masks = None
    if self.reclass_eta:
      semantic_masks = remax.semantic_one_hot(
          tf.reshape(resize_nearest(gt_semantic, size), [-1, size[0] * size[1]]),
          num_classes)
    samples = None
    if (self.instance_discrimination_weight and
        self.instance_discrimination_sample_k):
      # One draw serves every stage, so stages are compared on equal pixels.
      samples = cmt.sample_pixels_by_mask_size(
          targets.masks, self.instance_discrimination_sample_k,
          self.instance_discrimination_sample_temperature)

    losses = {}
    for stage, similarity, assignment in zip(stages, similarities,
                                             assignments):
      stage_losses = self._mask_terms(stage, targets, assignment, similarity,
                                      size, semantic_masks, samples)
      weight = self.aux_weight if stage.prefix else 1.0
      for name, value in stage_losses.items():
        losses[stage.prefix + name] = (weight * value if stage.prefix
                                       else value)
      if stage.semantic_logits is not None and self.stage_semantic_weight:
        losses[stage.prefix + common.LOSS_STAGE_SEMANTIC] = (
            self.stage_semantic_weight * tf.reduce_mean(semantic_loss(
                stage.semantic_logits, gt_semantic, gt_weight,
                self.semantic_top_k_percent)))

    if self.semantic_weight:
      semantic_logits = tf.cast(
          self._require(outputs, common.PRED_SEMANTIC_LOGITS, "outputs"),
          tf.float32)
      losses[common.LOSS_SEMANTIC] = self.semantic_weight * tf.reduce_mean(
          semantic_loss(semantic_logits, gt_semantic, gt_weight,
                        self.semantic_top_k_percent))
    else:
      losses[common.LOSS_SEMANTIC] = tf.zeros([], tf.float32)
    losses[common.LOSS_TOTAL] = tf.add_n(list(losses.values()))
    return losses


def aux_loss_name(index: int, name: str) -> str:
  """Key of loss `name` of auxiliary output `index` ("aux_0/pq_class_loss")."""
  return f"aux_{index}/{name}"


def loss_names(num_aux_outputs: int) -> List[str]:
  """Keys `MaskTransformerLoss()` (default options) returns."""
  per_mask = [common.LOSS_PQ_CLASS, common.LOSS_PQ_DICE, common.LOSS_MASK_ID,
              common.LOSS_INSTANCE_DISCRIMINATION]
  names = per_mask + [common.LOSS_SEMANTIC]
  for index in range(num_aux_outputs):
    names += [aux_loss_name(index, name) for name in per_mask]
  return names + [common.LOSS_TOTAL]
