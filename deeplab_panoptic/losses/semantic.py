"""Per-pixel semantic cross-entropy terms.

  * `SemanticCrossEntropy`: the semantic head's logits
    (common.PRED_SEMANTIC_LOGITS), the whole loss of a per-pixel model
    (DeepLabV3+) and the auxiliary semantic loss of MaX-DeepLab
    (arXiv 2012.00759, section 3.4) and its successors.
  * `AuxiliarySemanticCrossEntropy`: the same on a per-pixel model's
    training-only auxiliary head (common.PRED_AUX_SEMANTIC_LOGITS; the FCN
    head of mmsegmentation's DeepLabV3+ configs, weight 0.4).
  * `StageSemanticCrossEntropy`: ReMaX's per-stage semantic loss on the
    ReMask heads' logits (arXiv 2306.17319, section 3.1).

Both are a pixel-weighted softmax cross-entropy with optional hard-pixel
mining (keep the top-k % losses of each image), as deeplab2's
`model/loss/base_loss.py` TopKCrossEntropyLoss.
"""

from typing import Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import criterion as criterion_lib
from deeplab_panoptic.losses import targets as targets_lib
from deeplab_panoptic.ops import resize as resize_lib

RESIZE_MODES = ("labels", "logits")


def semantic_loss(semantic_logits: tf.Tensor,
                  gt_semantic: tf.Tensor,
                  gt_weight: tf.Tensor,
                  top_k_percent: float = 1.0) -> tf.Tensor:
  """Weighted softmax cross-entropy, labels resized to the logits.

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
  _check_top_k(top_k_percent, "semantic_loss")
  height, width = semantic_logits.shape[1:3]
  num_classes = semantic_logits.shape[-1]
  labels = tf.reshape(resize_lib.resize_nearest(gt_semantic, (height, width)),
                      [-1, height * width])
  weights = tf.reshape(
      resize_lib.resize_nearest(tf.cast(gt_weight, semantic_logits.dtype),
                                 (height, width)),
      [-1, height * width])
  # Void labels (e.g. 255) are out of range for the op; their weight is 0.
  labels = tf.where(weights > 0, labels, tf.zeros_like(labels))
  logits = tf.reshape(semantic_logits, [-1, height * width, num_classes])
  cross_entropy = tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=labels, logits=logits)
  if top_k_percent == 1.0:
    return targets_lib.masked_mean(cross_entropy, weights)
  num_kept = max(1, int(round(top_k_percent * height * width)))
  weighted = cross_entropy * weights
  kept, indices = tf.math.top_k(weighted, k=num_kept, sorted=False)
  kept_weights = tf.gather(weights, indices, batch_dims=1)
  count = tf.reduce_sum(tf.cast(kept_weights > 0, kept.dtype), axis=-1)
  return tf.reduce_sum(kept, axis=-1) / tf.maximum(count, 1.0)


def _check_top_k(top_k_percent: float, owner: str) -> None:
  if not 0.0 < top_k_percent <= 1.0:
    raise ValueError(f"{owner}: top_k_percent must be in (0, 1], got "
                     f"{top_k_percent}.")


@gin.configurable
class SemanticCrossEntropy(criterion_lib.LossTerm):
  """Cross-entropy of common.PRED_SEMANTIC_LOGITS against the semantic labels.

  Reads outputs[common.PRED_SEMANTIC_LOGITS] float [B, hs, ws, C] (logits at
  any stride), batch[common.GT_SEMANTIC] int [B, H, W] and
  batch[common.GT_SEMANTIC_WEIGHT] float [B, H, W] (0 at void and padding).
  Reports common.LOSS_SEMANTIC.

  Args:
    weight: the term's weight (MaX-DeepLab: 1.0).
    top_k_percent: hard-pixel fraction in (0, 1] (deeplab2: 1.0 COCO / ADE20K,
      0.2 Cityscapes).
    resize: "labels": nearest-resize the labels and weights to the logits'
      size (the mask-transformer models, deeplab2's MaX loss); "logits":
      bilinearly upsample the logits to the labels' size first.
    align_corners: with resize="logits", align corner pixels (inputs of
      k * stride + 1 pixels, as deeplab2's crops) instead of half-pixel
      centres.
  """

  name = common.LOSS_SEMANTIC
  logits_key = common.PRED_SEMANTIC_LOGITS

  def __init__(self, weight: float = 1.0, top_k_percent: float = 1.0,
               resize: str = "labels", align_corners: bool = False):
    super().__init__(weight)
    owner = type(self).__name__
    _check_top_k(top_k_percent, owner)
    if resize not in RESIZE_MODES:
      raise ValueError(f"{owner}.resize must be one of {RESIZE_MODES}, got "
                       f"{resize!r}.")
    self.top_k_percent = top_k_percent
    self.resize = resize
    self.align_corners = align_corners

  def _logits(self, inputs: criterion_lib.LossInputs) -> tf.Tensor:
    logits = inputs.pred(self.logits_key)
    if logits.shape.rank != 4:
      raise ValueError(f"{type(self).__name__}: outputs[{self.logits_key!r}] "
                       f"must be [B, h, w, C], got {logits.shape}.")
    if self.resize == "logits":
      size: Tuple[int, int] = tuple(inputs.gt_semantic.shape[1:3])
      logits = resize_lib.resize_bilinear(logits, size, self.align_corners)
    return logits

  def per_image(self, inputs: criterion_lib.LossInputs) -> tf.Tensor:
    return semantic_loss(self._logits(inputs), inputs.gt_semantic,
                         inputs.gt_semantic_weight, self.top_k_percent)


@gin.configurable
class AuxiliarySemanticCrossEntropy(SemanticCrossEntropy):
  """`SemanticCrossEntropy` of common.PRED_AUX_SEMANTIC_LOGITS, a per-pixel
  model's training-only auxiliary head; common.LOSS_AUX_SEMANTIC.

  Same arguments as `SemanticCrossEntropy`; mmsegmentation's DeepLabV3+
  configs (configs/_base_/models/deeplabv3plus_r50-d8.py) weight its FCN
  head 0.4.
  """

  name = common.LOSS_AUX_SEMANTIC
  logits_key = common.PRED_AUX_SEMANTIC_LOGITS

  def __init__(self, weight: float = 0.4, top_k_percent: float = 1.0,
               resize: str = "labels", align_corners: bool = False):
    super().__init__(weight, top_k_percent, resize, align_corners)


@gin.configurable
class StageSemanticCrossEntropy(criterion_lib.StageLossTerm):
  """ReMaX's per-stage semantic loss, common.LOSS_STAGE_SEMANTIC.

  The cross-entropy of common.PRED_STAGE_SEMANTIC_LOGITS [B, hs, ws, C] of
  each of the first `num_stages` decoder stages (their ReMask heads), labels
  resized to the logits. Not multiplied by `Criterion.aux_weight`.

  Args:
    weight: ReMaX: 0.5.
    top_k_percent: hard-pixel fraction (as `SemanticCrossEntropy`).
    num_stages: stages [0, num_stages) (bind it to `ReMask.num_stages`; 0:
      no entry).
  """

  name = common.LOSS_STAGE_SEMANTIC
  aux_weighted = False

  def __init__(self, weight: float = 0.5, top_k_percent: float = 1.0,
               num_stages: int = 4):
    super().__init__(weight)
    _check_top_k(top_k_percent, "StageSemanticCrossEntropy")
    if num_stages < 0:
      raise ValueError(f"StageSemanticCrossEntropy.num_stages must be >= 0, "
                       f"got {num_stages}.")
    self.top_k_percent = top_k_percent
    self.num_stages = num_stages

  def applies(self, inputs: criterion_lib.LossInputs,
              stage: criterion_lib.Stage) -> bool:
    return bool(self.weight) and stage.index < self.num_stages

  def per_image(self, inputs: criterion_lib.LossInputs,
                stage: criterion_lib.Stage) -> tf.Tensor:
    logits = stage.require(
        common.PRED_STAGE_SEMANTIC_LOGITS,
        f"stage {stage.index} < StageSemanticCrossEntropy.num_stages="
        f"{self.num_stages}")
    return semantic_loss(logits, inputs.gt_semantic, inputs.gt_semantic_weight,
                         self.top_k_percent)
