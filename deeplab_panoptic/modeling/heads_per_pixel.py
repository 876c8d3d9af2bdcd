"""Per-pixel classification heads from Model Garden (``SemanticSegmenter``'s heads).

Both wrap ``official.vision.modeling.heads.SegmentationHead``:

* ``DeepLabV3PlusHead``: the DeepLabV3+ decoder (Chen et al., arXiv 1802.02611
  Sec. 3.1, Fig. 2): the low-level encoder feature reduced by a 1x1 convolution
  (48 channels), concatenated with the bilinearly upsampled encoder output (the
  ASPP feature), refined by 3x3 convolutions (two of 256) and classified by a
  1x1 convolution, at the low-level feature's stride (4).
* ``FCNHead``: 3x3 convolution(s) and a 1x1 classifier on one feature; the
  auxiliary head mmsegmentation's DeepLabV3+ recipes train on ResNet stage 4
  (open-mmlab/mmsegmentation ``configs/_base_/models/deeplabv3plus_r50-d8.py``,
  ``auxiliary_head``).
"""

from typing import Dict, Optional

import gin
import tensorflow as tf
import tf_keras as keras
from official.vision.modeling.heads import segmentation_heads as mg_heads

from deeplab_panoptic.modeling import base


def _l2_regularizer(weight_decay: float) -> Optional[keras.regularizers.Regularizer]:
  return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


def _require(owner: str, features: Dict[str, tf.Tensor], key: str, setting: str) -> tf.Tensor:
  """``features[key]``, or a ValueError naming the head, the key and the setting."""
  if key not in features:
    raise ValueError(f"{owner} reads {key!r} but its input has {sorted(features)}: "
                     f"set {owner}.{setting}.")
  return features[key]


@gin.configurable
class DeepLabV3PlusHead(base.PixelHead):
  """Model Garden's segmentation head with DeepLabV3+ low-level feature fusion.

  Input: a ``Features`` dict holding ``"stride<input_stride>"`` (the ASPP output,
  ``[batch, h, w, c]``) and ``"stride<low_level_stride>"`` (the encoder's
  low-level feature ``[batch, h_l, w_l, c_l]``).
  Output: logits ``[batch, h_l, w_l, num_classes]`` (stride ``low_level_stride``).

  Args:
    num_classes: classes of the dataset (no void class).
    input_stride: stride of the decoder feature that is upsampled and fused.
    low_level_stride: stride of the encoder feature it is fused with (4).
    low_level_num_filters: channels of the reduced low-level feature (48).
    num_convs: 3x3 convolutions after the fusion (2).
    num_filters: their channels (256).
    use_depthwise_convolution: depthwise separable 3x3 convolutions (arXiv
      1802.02611 Sec. 3.2).
    prediction_kernel_size: kernel of the classifier convolution (1).
    activation: activation after every batch norm.
    use_sync_bn: synchronized batch norm across replicas.
    norm_momentum: batch-norm momentum (Keras convention).
    norm_epsilon: batch-norm epsilon.
    l2_weight_decay: L2 penalty on the convolution kernels (a
      ``regularizers.L2(l2_weight_decay / 2)`` loss, Model Garden's way); 0: none.
  """

  def __init__(self, num_classes: int = gin.REQUIRED, input_stride: int = 8,
               low_level_stride: int = 4, low_level_num_filters: int = 48,
               num_convs: int = 2, num_filters: int = 256,
               use_depthwise_convolution: bool = False, prediction_kernel_size: int = 1,
               activation: str = "relu", use_sync_bn: bool = False,
               norm_momentum: float = 0.99, norm_epsilon: float = 1e-3,
               l2_weight_decay: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    if low_level_stride > input_stride:
      raise ValueError(f"DeepLabV3PlusHead.low_level_stride ({low_level_stride}) must "
                       f"not exceed input_stride ({input_stride}).")
    self._key = base.stride_key(input_stride)
    self._low_level_key = base.stride_key(low_level_stride)
    self.output_stride = int(low_level_stride)
    # The levels only name dict entries; this part hands the head tensors.
    self._head = mg_heads.SegmentationHead(
        num_classes=num_classes, level=self._key, num_convs=num_convs,
        num_filters=num_filters, use_depthwise_convolution=use_depthwise_convolution,
        prediction_kernel_size=prediction_kernel_size, feature_fusion="deeplabv3plus",
        low_level=self._low_level_key, low_level_num_filters=low_level_num_filters,
        activation=activation, use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
        norm_epsilon=norm_epsilon, kernel_regularizer=_l2_regularizer(l2_weight_decay))

  @property
  def model_garden_layer(self) -> mg_heads.SegmentationHead:
    """The wrapped Model Garden SegmentationHead."""
    return self._head

  def call(self, features: Dict[str, tf.Tensor], training=None) -> tf.Tensor:
    owner = type(self).__name__
    high = _require(owner, features, self._key, "input_stride")
    low = _require(owner, features, self._low_level_key, "low_level_stride")
    # SegmentationHead takes (backbone feature, decoder feature); its batch norms
    # read the training flag of this call, which Keras passes down.
    return self._head((low, high))


@gin.configurable
class FCNHead(base.PixelHead):
  """Model Garden's segmentation head without fusion, on one feature.

  Input: a ``Features`` dict holding ``input_key`` ``[batch, h, w, c]``.
  Output: logits ``[batch, h, w, num_classes]``.

  Args:
    num_classes: classes of the dataset (no void class).
    input_key: the feature it reads, e.g. ``"stage4"`` (``DilatedResNetEncoder``
      with ``stage_endpoints``) or ``"stride16"``.
    num_convs: 3x3 convolutions before the classifier (mmsegmentation's
      auxiliary head: 1).
    num_filters: their channels (mmsegmentation: 256).
    activation, use_sync_bn, norm_momentum, norm_epsilon, l2_weight_decay: as
      ``DeepLabV3PlusHead``'s.
  """

  def __init__(self, num_classes: int = gin.REQUIRED, input_key: str = "stage4",
               num_convs: int = 1, num_filters: int = 256, activation: str = "relu",
               use_sync_bn: bool = False, norm_momentum: float = 0.99,
               norm_epsilon: float = 1e-3, l2_weight_decay: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self._key = str(input_key)
    self._head = mg_heads.SegmentationHead(
        num_classes=num_classes, level=self._key, num_convs=num_convs,
        num_filters=num_filters, feature_fusion=None, activation=activation,
        use_sync_bn=use_sync_bn, norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        kernel_regularizer=_l2_regularizer(l2_weight_decay))

  @property
  def model_garden_layer(self) -> mg_heads.SegmentationHead:
    """The wrapped Model Garden SegmentationHead."""
    return self._head

  def call(self, features: Dict[str, tf.Tensor], training=None) -> tf.Tensor:
    feature = _require(type(self).__name__, features, self._key, "input_key")
    return self._head((feature, feature))
