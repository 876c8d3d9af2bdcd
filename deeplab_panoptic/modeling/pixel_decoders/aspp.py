"""Atrous Spatial Pyramid Pooling from Model Garden as a pixel decoder.

DeepLabV3's ASPP (Chen et al., arXiv 1706.05587 Sec. 3.3), the encoder head of
DeepLabV3+ (arXiv 1802.02611 Sec. 3.1, Fig. 2): a 1x1 convolution, three 3x3
atrous convolutions and image-level pooling in parallel on the encoder's last
feature, concatenated and projected by a 1x1 convolution. Model Garden builds it
(``official.vision.modeling.decoders.ASPP``); this part reads and writes the
library's ``"stride<s>"`` features.
"""

import math
from typing import Dict, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras
from official.vision.modeling.decoders import aspp as mg_aspp

from deeplab_panoptic.modeling import base


@gin.configurable
class ASPPPixelDecoder(base.PixelDecoder):
  """Model Garden's ASPP on the encoder feature at ``input_stride``.

  Input: the encoder's features; reads ``"stride<input_stride>"``
  ``[batch, h, w, c]``.
  Output: ``{"stride<input_stride>": [batch, h, w, num_filters]}`` (after the
  projection's batch norm, activation and dropout).

  Args:
    input_stride: stride of the feature ASPP runs on (the encoder's output
      stride: 16 or 8 in arXiv 1802.02611 Sec. 3.1).
    dilation_rates: rates of the three 3x3 atrous branches ((6, 12, 18) at
      output stride 16, doubled at 8: arXiv 1706.05587 Sec. 3.3).
    num_filters: channels of every branch and of the output (256 in the paper).
    pool_kernel_size: (H, W) input-image size of the average-pooling window of
      the image-level branch (divided by the stride); None: global pooling.
    dropout_rate: dropout after the projection.
    use_depthwise_convolution: atrous separable convolutions (arXiv 1802.02611
      Sec. 3.2) in the atrous branches.
    activation: activation of every branch.
    use_sync_bn: synchronized batch norm across replicas.
    norm_momentum: batch-norm momentum (Keras convention).
    norm_epsilon: batch-norm epsilon.
    l2_weight_decay: L2 penalty on the convolution kernels (a
      ``regularizers.L2(l2_weight_decay / 2)`` loss, Model Garden's way); 0: none.
  """

  def __init__(self, input_stride: int = 8, dilation_rates: Sequence[int] = (12, 24, 36),
               num_filters: int = 256, pool_kernel_size: Optional[Sequence[int]] = None,
               dropout_rate: float = 0.0, use_depthwise_convolution: bool = False,
               activation: str = "relu", use_sync_bn: bool = False,
               norm_momentum: float = 0.99, norm_epsilon: float = 1e-3,
               l2_weight_decay: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    level = int(round(math.log2(input_stride))) if input_stride > 0 else -1
    if level < 0 or 2 ** level != input_stride:
      raise ValueError(f"ASPPPixelDecoder.input_stride must be a power of 2, got "
                       f"{input_stride}.")
    self._key = base.stride_key(input_stride)
    self._aspp = mg_aspp.ASPP(
        level=level, dilation_rates=list(dilation_rates), num_filters=num_filters,
        pool_kernel_size=None if pool_kernel_size is None else list(pool_kernel_size),
        use_sync_bn=use_sync_bn, norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        activation=activation, dropout_rate=dropout_rate,
        use_depthwise_convolution=use_depthwise_convolution, output_tensor=True,
        kernel_regularizer=(keras.regularizers.L2(l2_weight_decay / 2.0)
                            if l2_weight_decay else None))
    self.output_channels = {self._key: int(num_filters)}

  @property
  def model_garden_layer(self) -> mg_aspp.ASPP:
    """The wrapped Model Garden ASPP."""
    return self._aspp

  def call(self, endpoints: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    if self._key not in endpoints:
      raise ValueError(f"ASPPPixelDecoder reads {self._key!r} but the pixel encoder "
                       f"gives {sorted(endpoints)}: set ASPPPixelDecoder.input_stride.")
    # Model Garden's ASPP takes no `training` argument; its batch norms and
    # dropout read the training flag of this call, which Keras passes down.
    return {self._key: self._aspp(endpoints[self._key])}
