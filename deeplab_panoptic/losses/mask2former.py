"""Mask2Former loss terms: class cross-entropy and point-sampled mask losses.

Mask2Former (Cheng et al., arXiv 2112.01527), section 3.3 and section 4
"Training settings", as facebookresearch/Mask2Former implements it
(mask2former/modeling/criterion.py, mask2former/modeling/matcher.py):

  * `ClassCrossEntropy`: softmax cross-entropy of every prediction against the
    class of its matched mask, or "no object" (weight 0.1) when unmatched;
    a weighted mean over all predictions of the batch.
  * `PointMaskBCE`, `PointMaskDice`: binary cross-entropy (mean over points)
    and Dice (smoothing 1) of each matched mask on S points picked by
    `PointSampler` (importance sampling on the matched prediction's logits),
    summed over masks and divided by the batch's number of masks.
  * `PointMaskCost`: the Hungarian cost 2 (-p(c)) + 5 BCE + 5 Dice, the mask
    parts on S uniformly random points shared by every pair of an image.

Normalisation. The reference divides by batch-wide counts (the weights of all
predictions, the masks of all images); a term here returns per-image values
whose batch mean is that batch-wide quotient, so the criterion's mean over
images gives the reference number.

Void, crowd and padding pixels belong to no ground-truth mask: their points
are negatives of every mask, as in the reference (which has no void class in
its mask targets).

Shapes: B batch, H x W input, h x w predicted masks, K ground-truth slots, N
predictions, C classes (class logits C + 1, the last "no object"), S points.
"""

from typing import Optional, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion as criterion_lib
from deeplab_panoptic.losses import panoptic_segformer as psf
from deeplab_panoptic.losses import point_sampling as sampling

# Stream numbers of the point sampler's random numbers (one stream per use,
# per decoder stage).
_MATCHING_STREAM, _CANDIDATE_STREAM, _EXTRA_STREAM, _NUM_STREAMS = 0, 1, 2, 3
_POSITION_MODULUS = 1 << 20   # keeps the int64 fingerprint sum far from overflow


def batch_share(per_image_sum: tf.Tensor, per_image_count: tf.Tensor
                ) -> tf.Tensor:
  """float32 [B] whose mean is sum(per_image_sum) / max(sum(counts), 1).

  Args:
    per_image_sum: float [B].
    per_image_count: float [B].
  """
  batch = tf.cast(tf.shape(per_image_sum)[0], per_image_sum.dtype)
  total = tf.maximum(tf.reduce_sum(per_image_count), 1.0)
  return per_image_sum * batch / total


def class_cross_entropy(class_logits: tf.Tensor, assignment: tf.Tensor,
                        gt_classes: tf.Tensor,
                        no_object_weight: float) -> tf.Tensor:
  """Weighted softmax cross-entropy of every prediction (the batch's mean).

  Args:
    class_logits: float [B, N, C + 1].
    assignment: float [B, K, N] one-hot matches.
    gt_classes: int32 [B, K] in [0, C).
    no_object_weight: weight of a prediction whose target is "no object".

  Returns:
    float32 [B]: its mean over the batch is sum_{b,n} w ce / sum_{b,n} w
    (PyTorch's weighted cross_entropy, reduction "mean").
  """
  num_logits = class_logits.shape[-1]
  matched = tf.reduce_sum(assignment, axis=1)  # [B, N] in {0, 1}.
  target = (tf.einsum("bkn,bkc->bnc", assignment,
                      tf.one_hot(gt_classes, num_logits, dtype=assignment.dtype)) +
            (1.0 - matched)[..., tf.newaxis] *
            tf.one_hot(num_logits - 1, num_logits, dtype=assignment.dtype))
  cross_entropy = -tf.reduce_sum(
      target * tf.nn.log_softmax(class_logits, axis=-1), axis=-1)
  weight = matched + no_object_weight * (1.0 - matched)
  return batch_share(tf.reduce_sum(weight * cross_entropy, axis=-1),
                     tf.reduce_sum(weight, axis=-1))


def point_bce(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """float32 [...]: mean over the last axis of BCE-with-logits (points)."""
  return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
      labels=labels, logits=logits), axis=-1)


def point_dice(logits: tf.Tensor, labels: tf.Tensor,
               smooth: float) -> tf.Tensor:
  """float32 [...]: 1 - (2 sum p g + s) / (sum p + sum g + s) over points."""
  probs = tf.math.sigmoid(logits)
  numerator = 2.0 * tf.reduce_sum(probs * labels, axis=-1) + smooth
  denominator = (tf.reduce_sum(probs, axis=-1) +
                 tf.reduce_sum(labels, axis=-1) + smooth)
  return 1.0 - numerator / denominator


def pairwise_point_bce(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
  """Mean-over-points BCE of every (ground truth, prediction) pair.

  BCE(x, y) = softplus(x) - x y, so the pairs need one matrix product.

  Args:
    logits: float [B, S, N].
    labels: float [B, S, K] in [0, 1].

  Returns:
    float32 [B, K, N].
  """
  num_points = tf.cast(tf.shape(logits)[1], logits.dtype)
  positive_part = tf.reduce_sum(tf.math.softplus(logits), axis=1)
  return (positive_part[:, tf.newaxis, :] -
          tf.einsum("bsk,bsn->bkn", labels, logits)) / num_points


def image_fingerprints(mask_id: tf.Tensor, gt_classes: tf.Tensor) -> tf.Tensor:
  """uint32 [B]: a hash of each image's ground truth (mask ids and classes).

  Args:
    mask_id: int [B, H, W] in [-1, K).
    gt_classes: int [B, K] in [-1, C).
  """
  def mixed_sum(values: tf.Tensor) -> tf.Tensor:
    flat = tf.reshape(tf.cast(values, tf.int32) + 2, [tf.shape(values)[0], -1])
    position = tf.range(tf.shape(flat)[1]) % _POSITION_MODULUS
    mixed = sampling.fmix32(tf.bitwise.bitwise_xor(
        tf.cast(flat, tf.uint32),
        sampling.fmix32(tf.cast(position, tf.uint32))[tf.newaxis]))
    total = tf.reduce_sum(tf.cast(mixed, tf.int64), axis=-1)
    low = tf.cast(tf.bitwise.bitwise_and(total, 0xFFFFFFFF), tf.uint32)
    high = tf.cast(tf.bitwise.right_shift(total, 32), tf.uint32)
    return tf.bitwise.bitwise_xor(low, sampling.fmix32(high))
  return tf.bitwise.bitwise_xor(mixed_sum(mask_id),
                                sampling.fmix32(mixed_sum(gt_classes)))


@gin.configurable
class PointSampler:
  """Where the mask terms and the matching cost read masks (section 3.3).

  The points are a pure function of `seed`, the image's ground truth (a hash
  of its mask ids and classes), the decoder stage and the use: the compiled
  train step draws what the eager one draws, a resumed run what the
  uninterrupted one drew, and each image of a batch (and each replica) its
  own points; a different crop or flip of an image gives new points.

  Args:
    num_points: S (Mask2Former: 12544 = 112 x 112).
    oversample_ratio: candidates drawn per point kept (3).
    importance_ratio: share of the S points chosen by uncertainty (0.75).
    seed: folded into every image's seed.
  """

  def __init__(self, num_points: int = 12544, oversample_ratio: float = 3.0,
               importance_ratio: float = 0.75, seed: int = 0):
    sampling.check_sampling("PointSampler", num_points, oversample_ratio,
                            importance_ratio)
    self.num_points = num_points
    self.oversample_ratio = oversample_ratio
    self.importance_ratio = importance_ratio
    self.seed = seed

  def _key(self) -> Tuple:
    return ("point_sampler", self.num_points, self.oversample_ratio,
            self.importance_ratio, self.seed)

  def seeds(self, inputs: criterion_lib.LossInputs, stage_index: int,
            stream: int) -> tf.Tensor:
    """uint32 [B] seeds of one stage's stream."""
    base = inputs.cached(self._key() + ("seeds",), lambda: tf.bitwise.bitwise_xor(
        image_fingerprints(inputs.gt(common.GT_MASK_ID),
                           inputs.gt(common.GT_CLASSES)),
        tf.constant(self.seed % (1 << 32), tf.uint32)))
    return sampling.stream_seeds(base, stage_index * _NUM_STREAMS + stream)

  def stage_logits(self, inputs: criterion_lib.LossInputs,
                   stage: criterion_lib.Stage) -> tf.Tensor:
    """float32 [B, h, w, N] mask logits of a stage at the loss grid."""
    height, width = inputs.size
    return tf.reshape(stage.mask_logits,
                      [-1, height, width, stage.mask_logits.shape[-1]])

  def matching_sample(self, inputs: criterion_lib.LossInputs,
                      stage: criterion_lib.Stage
                      ) -> Tuple[tf.Tensor, tf.Tensor]:
    """(logits [B, S, N], labels [B, S, K]) on S uniform points per image."""
    def compute():
      points = sampling.uniform_points(
          self.seeds(inputs, stage.index, _MATCHING_STREAM), (self.num_points,))
      logits = sampling.point_sample(self.stage_logits(inputs, stage), points)
      labels = sampling.sample_all_labels(
          inputs.gt(common.GT_MASK_ID), points,
          inputs.targets.present.shape[-1])
      return logits, labels
    return stage.cached(self._key() + ("matching",), compute)

  def loss_sample(self, inputs: criterion_lib.LossInputs,
                  stage: criterion_lib.Stage) -> Tuple[tf.Tensor, tf.Tensor]:
    """(logits [B, K, S], labels [B, K, S]) of each slot's matched prediction
    on its importance-sampled points (rows of unmatched slots: prediction 0)."""
    def compute():
      logits = self.stage_logits(inputs, stage)
      matched = tf.argmax(stage.assignment, axis=-1, output_type=tf.int32)
      points = sampling.importance_points(
          logits, matched,
          (self.seeds(inputs, stage.index, _CANDIDATE_STREAM),
           self.seeds(inputs, stage.index, _EXTRA_STREAM)),
          self.num_points, self.oversample_ratio, self.importance_ratio)
      return (sampling.point_sample_channels(logits, points, matched),
              sampling.sample_slot_labels(inputs.gt(common.GT_MASK_ID), points))
    return stage.cached(self._key() + ("loss",), compute)


def _mask_share(inputs: criterion_lib.LossInputs, stage: criterion_lib.Stage,
                per_mask: tf.Tensor) -> tf.Tensor:
  """float32 [B] share of sum over matched masks / the batch's mask count."""
  matched = tf.reduce_sum(stage.assignment, axis=-1)  # [B, K] in {0, 1}.
  count = tf.reduce_sum(tf.cast(inputs.targets.present, tf.float32), axis=-1)
  return batch_share(tf.reduce_sum(matched * per_mask, axis=-1), count)


@gin.configurable
class ClassCrossEntropy(criterion_lib.StageLossTerm):
  """common.LOSS_CLASS_CE: softmax cross-entropy with a "no object" weight.

  Args:
    weight: lambda_cls (Mask2Former: 2.0).
    no_object_weight: weight of predictions matched to nothing (0.1).
  """

  name = common.LOSS_CLASS_CE
  needs_matching = True

  def __init__(self, weight: float = 2.0, no_object_weight: float = 0.1):
    super().__init__(weight)
    if not no_object_weight >= 0:
      raise ValueError("ClassCrossEntropy.no_object_weight must be >= 0, got "
                       f"{no_object_weight}.")
    self.no_object_weight = no_object_weight

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    return class_cross_entropy(stage.class_logits, stage.assignment,
                               inputs.targets.classes, self.no_object_weight)


@gin.configurable
class PointMaskBCE(criterion_lib.StageLossTerm):
  """common.LOSS_MASK_BCE: point-sampled binary cross-entropy of the matches.

  Args:
    weight: lambda_ce (Mask2Former: 5.0).
    sampler: the `PointSampler` (terms with equal samplers share the points).
  """

  name = common.LOSS_MASK_BCE
  needs_matching = True

  def __init__(self, weight: float = 5.0, sampler: Optional[PointSampler] = None):
    super().__init__(weight)
    self.sampler = sampler or PointSampler()

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    logits, labels = self.sampler.loss_sample(inputs, stage)
    return _mask_share(inputs, stage, point_bce(logits, labels))


@gin.configurable
class PointMaskDice(criterion_lib.StageLossTerm):
  """common.LOSS_DICE: point-sampled Dice loss of the matches.

  Args:
    weight: lambda_dice (Mask2Former: 5.0).
    smooth: added to numerator and denominator (1).
    sampler: the `PointSampler` (terms with equal samplers share the points).
  """

  name = common.LOSS_DICE
  needs_matching = True

  def __init__(self, weight: float = 5.0, smooth: float = 1.0,
               sampler: Optional[PointSampler] = None):
    super().__init__(weight)
    self.smooth = smooth
    self.sampler = sampler or PointSampler()

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    logits, labels = self.sampler.loss_sample(inputs, stage)
    return _mask_share(inputs, stage, point_dice(logits, labels, self.smooth))


@gin.configurable
class PointMaskCost(criterion_lib.MatchingCost):
  """Hungarian cost class_weight (-p(c)) + mask_weight BCE + dice_weight Dice.

  The mask parts on uniformly random points (the same for every pair of an
  image), as Mask2Former's matcher.

  Args:
    class_weight: 2.0.
    mask_weight: 5.0.
    dice_weight: 5.0.
    dice_smooth: 1.0.
    sampler: the `PointSampler` (its num_points and seed are used).
  """

  def __init__(self, class_weight: float = 2.0, mask_weight: float = 5.0,
               dice_weight: float = 5.0, dice_smooth: float = 1.0,
               sampler: Optional[PointSampler] = None):
    self.class_weight = class_weight
    self.mask_weight = mask_weight
    self.dice_weight = dice_weight
    self.dice_smooth = dice_smooth
    self.sampler = sampler or PointSampler()

  def __call__(self, inputs: criterion_lib.LossInputs,
               stage: criterion_lib.Stage) -> tf.Tensor:
    logits, labels = self.sampler.matching_sample(inputs, stage)
    probs = tf.nn.softmax(stage.class_logits, axis=-1)
    class_probs = tf.einsum("bnc,bkc->bkn", probs, tf.one_hot(
        inputs.targets.classes, probs.shape[-1], dtype=probs.dtype))
    cost = (-self.class_weight * class_probs +
            self.mask_weight * pairwise_point_bce(logits, labels) +
            self.dice_weight * psf.pairwise_dice_loss(
                labels, tf.math.sigmoid(logits), self.dice_smooth))
    return tf.stop_gradient(cost)
