"""CMT-DeepLab loss terms (Yu et al., CVPR 2022, arXiv 2206.08948, eq. 13-14).

  * Pixel-wise contrastive instance discrimination (eq. 14): |A| pixels are
    sampled per image with a bias towards small masks, and every sampled pixel
    is classified among the sampled pixels, the ones of its own mask being the
    positives (supervised contrastive loss with several positives).
  * Mask-approximation location loss (eq. 13): the extreme points and the mean
    of each centre's M reference points are pulled (L1) to those of its
    Hungarian-matched ground-truth mask.

Facts the paper leaves open, taken from deeplab2's implementation of the same
pixel-wise loss (google-research/deeplab2 model/loss/max_deeplab_loss.py,
pixel-wise instance discrimination of kMaX-DeepLab): tau = 0.3; sampling is a
Gumbel top-k over labelled pixels with logits T * log(P / area(own mask)), i.e.
without replacement and p proportional to area^-T (T = 1.5 COCO/ADE, 0.6
Cityscapes); the anchor itself is one of its positives and one of the
denominator's terms; the per-anchor losses are averaged (eq. 14 sums them).

Shapes: B batch, P pixels, K ground-truth slots, N predictions, D embedding
channels, S sampled pixels, M reference points.
"""

from typing import Optional, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion as criterion_lib
from deeplab_panoptic.losses import geometry

# Logit that keeps a pixel out of a softmax / top-k (finite, so no NaN from
# inf - inf, and far below every real logit).
_EXCLUDED = -1e9


def mask_size_sampling_logits(gt_masks: tf.Tensor,
                              temperature: float) -> tf.Tensor:
  """Sampling logits T * log(P / area(own mask)) of every pixel.

  Args:
    gt_masks: float [B, P, K] one-hot ground-truth masks (all-zero rows at
      void, crowd and padding pixels, which are never sampled).
    temperature: T >= 0; 0 samples uniformly, larger T favours small masks.

  Returns:
    float [B, P]; `_EXCLUDED` at pixels without a mask.
  """
  gt_masks = tf.stop_gradient(gt_masks)
  num_pixels = gt_masks.shape[1]
  area = tf.reduce_sum(gt_masks, axis=1)  # [B, K]
  own_area = tf.einsum("bpk,bk->bp", gt_masks, area)
  labelled = own_area > 0
  logits = temperature * tf.math.log(
      float(num_pixels) / tf.maximum(own_area, 1.0))
  return tf.where(labelled, logits, tf.cast(_EXCLUDED, logits.dtype))


def sample_pixels_by_mask_size(gt_masks: tf.Tensor,
                               num_samples: int,
                               temperature: float,
                               uniform_noise: Optional[tf.Tensor] = None
                               ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Samples labelled pixels without replacement, p proportional to area^-T.

  Gumbel top-k: adding Gumbel noise to the logits and keeping the k largest
  draws k pixels without replacement from softmax(logits) (static shapes, XLA).

  Args:
    gt_masks: float [B, P, K].
    num_samples: |A| (CMT: 4096); at most P are taken.
    temperature: T of `mask_size_sampling_logits`.
    uniform_noise: optional float [B, P] in (0, 1) to make the draw
      reproducible; drawn with tf.random.uniform when None.

  Returns:
    (indices int32 [B, S], valid float [B, S]) with S = min(num_samples, P);
    valid is 0 for slots that fell on unlabelled pixels because the image has
    fewer than S labelled pixels.
  """
  num_pixels = gt_masks.shape[1]
  count = min(num_samples, num_pixels)
  logits = mask_size_sampling_logits(gt_masks, temperature)
  if uniform_noise is None:
    uniform_noise = tf.random.uniform(tf.shape(logits), minval=1e-6,
                                      maxval=1.0 - 1e-6, dtype=logits.dtype)
  gumbel = -tf.math.log(-tf.math.log(tf.cast(uniform_noise, logits.dtype)))
  _, indices = tf.math.top_k(logits + gumbel, k=count, sorted=False)
  labelled = tf.cast(tf.reduce_sum(gt_masks, axis=-1) > 0, gt_masks.dtype)
  valid = tf.gather(labelled, indices, batch_dims=1)
  return indices, tf.stop_gradient(valid)


def pixel_contrastive_loss(pixel_embedding: tf.Tensor,
                           gt_masks: tf.Tensor,
                           indices: tf.Tensor,
                           valid: tf.Tensor,
                           temperature: float) -> tf.Tensor:
  """Pixel-wise instance discrimination, CMT-DeepLab eq. 14.

  For every valid sampled anchor a: -1/|P(a)| sum_{p in P(a)} log softmax_b(
  f_a . f_b / tau)[p], b over the valid samples, P(a) the valid samples of a's
  mask (a included).

  Args:
    pixel_embedding: float [B, P, D], L2-normalised.
    gt_masks: float [B, P, K].
    indices: int32 [B, S] sampled pixels (`sample_pixels_by_mask_size`).
    valid: float [B, S] 1 for samples on labelled pixels.
    temperature: tau (0.3).

  Returns:
    float [B], mean over valid anchors (0 for an image without any).
  """
  features = tf.gather(pixel_embedding, indices, batch_dims=1)  # [B, S, D]
  ids = tf.gather(tf.stop_gradient(gt_masks), indices, batch_dims=1)
  ids *= valid[..., tf.newaxis]
  same = tf.einsum("bsk,btk->bst", ids, ids)  # [B, S, S] in {0, 1}.
  target = same / tf.maximum(tf.reduce_sum(same, axis=-1, keepdims=True), 1.0)
  logits = tf.einsum("bsd,btd->bst", features, features) / temperature
  logits = tf.where(valid[:, tf.newaxis, :] > 0, logits,
                    tf.cast(_EXCLUDED, logits.dtype))
  per_anchor = -tf.reduce_sum(target * tf.nn.log_softmax(logits, axis=-1),
                              axis=-1)
  count = tf.reduce_sum(valid, axis=-1)
  return tf.reduce_sum(per_anchor * valid, axis=-1) / tf.maximum(count, 1.0)


def mask_approximation_loss(reference_points: tf.Tensor,
                            gt_masks: tf.Tensor,
                            assignment: tf.Tensor,
                            size: Tuple[int, int]) -> tf.Tensor:
  """Mask-approximation location loss, CMT-DeepLab eq. 13 (L_ext + L_cen).

  For each matched pair (ground-truth mask i, prediction sigma(i)):
  L_ext = mean of the 4 L1 gaps between (min, max) of the M predicted y and x
  and (min, max) of the ground-truth pixels' y and x; L_cen = mean of the 2 L1
  gaps between the mean of the predicted points and the mask centroid ("avg";
  the extracted eq. 13 text prints "exp"). Ground-truth pixels are pixel
  centres of the prediction grid (`geometry.pixel_coordinates`).

  Args:
    reference_points: float [B, N, M, 2] (y, x) in [0, 1].
    gt_masks: float [B, P, K] at the grid `size`.
    assignment: float [B, K, N] one-hot matches (zero rows: unmatched).
    size: static (h, w) of the ground-truth grid.

  Returns:
    float [B]: sum over matched pairs of L_ext + L_cen, over the number of
    matched pairs (1/(4K) and 1/(2K) of eq. 13); 0 for an image without any.
  """
  target = geometry.mask_geometry(gt_masks, size)
  points = tf.einsum("bkn,bnmc->bkmc", tf.stop_gradient(assignment),
                     reference_points)  # [B, K, M, 2]
  extreme = (tf.abs(tf.reduce_min(points, axis=2) - target.minimum) +
             tf.abs(tf.reduce_max(points, axis=2) - target.maximum))
  centre = tf.abs(tf.reduce_mean(points, axis=2) - target.centre)
  per_mask = (tf.reduce_sum(extreme, axis=-1) / 4.0 +
              tf.reduce_sum(centre, axis=-1) / 2.0)
  matched = tf.reduce_sum(assignment, axis=-1)  # [B, K] in {0, 1}.
  return (tf.reduce_sum(per_mask * matched, axis=-1) /
          tf.maximum(tf.reduce_sum(matched, axis=-1), 1.0))


@gin.configurable
class PixelContrastive(criterion_lib.StageLossTerm):
  """Pixel-wise instance discrimination (eq. 14), on every stage's
  common.PRED_PIXEL_EMBEDDING; common.LOSS_INSTANCE_DISCRIMINATION.

  One draw of pixels per call serves every stage, so the stages are compared
  on the same pixels.

  Args:
    weight: CMT-DeepLab: 1.0.
    temperature: tau (0.3).
    num_samples: |A| (CMT-DeepLab: 4096; deeplab2's ADE20K 641: 1024).
    sample_temperature: T of the p ~ area^-T sampling (deeplab2: 1.5 COCO /
      ADE20K, 0.6 Cityscapes).
  """

  name = common.LOSS_INSTANCE_DISCRIMINATION

  def __init__(self, weight: float = 1.0, temperature: float = 0.3,
               num_samples: int = 4096, sample_temperature: float = 1.5):
    super().__init__(weight)
    if temperature <= 0:
      raise ValueError(f"PixelContrastive.temperature must be > 0, got "
                       f"{temperature}.")
    if num_samples < 1:
      raise ValueError(f"PixelContrastive.num_samples must be >= 1, got "
                       f"{num_samples}.")
    self.temperature = temperature
    self.num_samples = num_samples
    self.sample_temperature = sample_temperature

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    masks = inputs.targets.masks
    indices, valid = inputs.cached(
        ("pixel_contrastive_samples", self.num_samples,
         self.sample_temperature),
        lambda: sample_pixels_by_mask_size(masks, self.num_samples,
                                           self.sample_temperature))
    return pixel_contrastive_loss(stage.pixel_embedding, masks, indices, valid,
                                  self.temperature)


@gin.configurable
class MaskApproximation(criterion_lib.StageLossTerm):
  """Mask-approximation location loss (eq. 13), common.LOSS_MASK_APPROXIMATION.

  On the final output (which must hold common.PRED_REFERENCE_POINTS) and on
  every auxiliary stage that holds them; a weight of 0 turns it off (no entry).

  Args:
    weight: CMT-DeepLab: 1.0.
  """

  name = common.LOSS_MASK_APPROXIMATION
  needs_matching = True

  def __init__(self, weight: float = 1.0):
    super().__init__(weight)

  def applies(self, inputs: criterion_lib.LossInputs,
              stage: criterion_lib.Stage) -> bool:
    return bool(self.weight) and (
        stage.is_final or common.PRED_REFERENCE_POINTS in stage.output)

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    if common.PRED_REFERENCE_POINTS not in stage.output:
      raise KeyError(
          f"MaskApproximation.weight is {self.weight} but the model predicts "
          f"no {common.PRED_REFERENCE_POINTS!r} (CMT-DeepLab's reference masks:"
          " CMTLayerConfig.location = True); drop the term (or set its weight "
          "to 0) for a model without them.")
    return mask_approximation_loss(
        stage.require(common.PRED_REFERENCE_POINTS), inputs.targets.masks,
        stage.assignment, inputs.size)
