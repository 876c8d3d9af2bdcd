"""Semantic inference of per-pixel classifiers (DeepLabV3+ and its relatives).

The per-pixel class logits are bilinearly resized to the model input size and
each pixel takes its argmax class (DeepLabV3+, Chen et al., ECCV 2018,
arXiv 1802.02611, Sec. 3; the resize-then-argmax order of its public code,
tensorflow/models ``research/deeplab``). Static shapes: it XLA-compiles and
runs inside the evaluation step.
"""

from typing import Dict, Mapping, Sequence, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess import base
from deeplab_panoptic.postprocess.panoptic import resize_mask_logits


@gin.configurable
class SemanticPostprocessor(base.Postprocessor):
  """Per-pixel argmax of ``common.PRED_SEMANTIC_LOGITS``; declares semantic results.

  Example::

      post = SemanticPostprocessor(is_thing=info.is_thing, label_divisor=256,
                                   ignore_label=255)
      post({common.PRED_SEMANTIC_LOGITS: logits}, (512, 512))[common.SEMANTIC]
      # int32 [B, 512, 512]
  """

  results = frozenset({base.SEMANTIC})
  required_outputs = (common.PRED_SEMANTIC_LOGITS,)

  def __init__(self, is_thing: Sequence[bool] = gin.REQUIRED,
               label_divisor: int = gin.REQUIRED, ignore_label: int = gin.REQUIRED,
               align_corners: bool = False):
    """Initialises the postprocessor.

    Args:
      is_thing: per train id (length ``num_classes``); only its length is used.
      label_divisor: the dataset's label divisor (checked, unused).
      ignore_label: the void label (checked, unused: every pixel gets a class).
      align_corners: resize with align_corners=True (inputs of ``k * stride + 1``
        pixels, as deeplab2 and the TF DeepLab crop them) instead of half-pixel
        centres.
    """
    super().__init__(is_thing, label_divisor, ignore_label)
    self._align_corners = bool(align_corners)

  def predicted_classes(self, outputs: Mapping[str, tf.Tensor]) -> int:
    return int(outputs[common.PRED_SEMANTIC_LOGITS].shape[-1])

  def __call__(self, outputs: Mapping[str, tf.Tensor],
               target_size: Tuple[int, int]) -> Dict[str, tf.Tensor]:
    """Semantic prediction at ``target_size``.

    Args:
      outputs: ``common.PRED_SEMANTIC_LOGITS`` float ``[B, h, w, num_classes]``.
      target_size: (H, W) python ints, the model input size.

    Returns:
      ``{common.SEMANTIC: int32 [B, H, W]}`` train ids.
    """
    logits = tf.cast(outputs[common.PRED_SEMANTIC_LOGITS], tf.float32)
    if logits.shape[-1] != self._num_classes:
      raise ValueError(f"SemanticPostprocessor: {common.PRED_SEMANTIC_LOGITS} has "
                       f"{logits.shape[-1]} classes, expected {self._num_classes}.")
    size = (int(target_size[0]), int(target_size[1]))
    logits = resize_mask_logits(logits, size, self._align_corners)
    return {common.SEMANTIC: tf.argmax(logits, axis=-1, output_type=tf.int32)}
