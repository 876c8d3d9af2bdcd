"""ResNet-50/101 in torchvision's layout, so PyTorch-trained weights give the same numbers.

He et al., arXiv 1512.03385 (Table 1), as torchvision (torchvision/models/resnet.py),
detectron2 with ``STRIDE_IN_1X1: False`` (Mask2Former's ResNet, arXiv 2112.01527)
and Hugging Face transformers' ``ResNetBackbone`` build it:

* stem: 7x7/2 conv, batch norm, ReLU, 3x3/2 max-pool;
* bottleneck blocks 1x1 -> 3x3 -> 1x1 (width / 4 inside), the stride on the 3x3
  conv (``stride_in_1x1`` moves it to the first 1x1, as MSRA's original models),
  a 1x1 conv + batch norm projection shortcut where the width or stride changes;
* every conv pads ``k // 2`` on all four sides, as PyTorch does.

Why not Model Garden's ResNet (``resnet.py`` beside this file): its convs pad
'same', i.e. a stride-2 conv on an even size pads one pixel less on the top /
left than on the bottom / right, so every stride-2 layer samples positions
shifted by one pixel from PyTorch's and imported weights do not reproduce the
reference. Here each conv is an explicit symmetric zero padding + a 'valid' conv.
"""

from typing import Dict, List, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.input_normalization import InputNormalization

# Blocks per stage of the published depths (arXiv 1512.03385, Table 1).
DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
STEM_KERNEL = 7
POOL_KERNEL = 3
# The first stage runs after the stem conv (/2) and the max-pool (/2).
FIRST_STRIDE = 4


class ConvBN(keras.layers.Layer):
  """Symmetric zero padding ``k // 2``, bias-free conv, batch norm, optional ReLU.

  ``[B, H, W, C_in]`` -> ``[B, floor((H + 2 (k // 2) - k) / s) + 1, ..., filters]``
  (PyTorch's output size).
  """

  def __init__(self, filters: int, kernel_size: int, strides: int, relu: bool,
               epsilon: float, momentum: float, **kwargs):
    super().__init__(**kwargs)
    self._pad = kernel_size // 2
    self._relu = relu
    self.conv = keras.layers.Conv2D(
        filters, kernel_size, strides, padding="valid", use_bias=False, name="conv",
        kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "normal"))
    self.bn = keras.layers.BatchNormalization(epsilon=epsilon, momentum=momentum, name="bn")

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    if self._pad:
      x = tf.pad(x, [[0, 0], [self._pad, self._pad], [self._pad, self._pad], [0, 0]])
    x = self.bn(self.conv(x), training=training)
    return tf.nn.relu(x) if self._relu else x


class Bottleneck(keras.layers.Layer):
  """``relu(shortcut(x) + conv3(conv2(conv1(x))))`` on ``[B, H, W, C_in]``.

  Returns ``[B, ceil(H / stride), ceil(W / stride), width]``; the convs inside are
  ``width // ratio`` wide.
  """

  def __init__(self, in_width: int, width: int, stride: int, ratio: int,
               stride_in_1x1: bool, epsilon: float, momentum: float, **kwargs):
    super().__init__(**kwargs)
    inner = width // ratio
    norm = dict(epsilon=epsilon, momentum=momentum)
    self.conv1 = ConvBN(inner, 1, stride if stride_in_1x1 else 1, True, name="conv1", **norm)
    self.conv2 = ConvBN(inner, 3, 1 if stride_in_1x1 else stride, True, name="conv2", **norm)
    self.conv3 = ConvBN(width, 1, 1, False, name="conv3", **norm)
    self.shortcut = None
    if in_width != width or stride != 1:
      self.shortcut = ConvBN(width, 1, stride, False, name="shortcut", **norm)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    residual = x if self.shortcut is None else self.shortcut(x, training=training)
    out = self.conv3(self.conv2(self.conv1(x, training=training), training=training),
                     training=training)
    return tf.nn.relu(out + residual)


@gin.configurable
class TorchvisionResNetEncoder(base.PixelEncoder):
  """ResNet with PyTorch's padding (see the module docstring), endpoints by stride.

  Input: images ``[batch, height, width, 3]`` in [-1, 1].
  Output: ``{"stride4", "stride8", "stride16", "stride32"}`` maps
  ``[batch, ~height / s, ~width / s, widths[i]]`` (PyTorch's sizes: e.g. 65 ->
  33 -> 17 -> 9 -> 5 -> 3), each after its stage's last block.

  Args:
    model_id: 50, 101 or 152; fills ``depths`` when it is None.
    depths: blocks per stage (overrides ``model_id``).
    stem_width: output width of the 7x7 stem conv.
    widths: output width of each stage (bottleneck expansion included).
    bottleneck_ratio: stage width / width of the convs inside a bottleneck.
    stride_in_1x1: the stride on the first 1x1 conv of a block instead of its
      3x3 (MSRA's original models; Hugging Face's ``downsample_in_bottleneck``).
    batch_norm_epsilon: of every batch norm (PyTorch's default, as the weights').
    batch_norm_momentum: Keras convention (PyTorch's 0.1 is 0.9 here).
    freeze_batch_norm: every batch norm uses its moving statistics and is not
      trained, in training too (detectron2's / torchvision's FrozenBatchNorm2d,
      which Mask2Former's ResNet recipes use).
    frozen_stages: 0 trains everything; k >= 1 makes the stem and the first k
      stages non-trainable (detectron2's ``FREEZE_AT = k + 1``).
    input_normalization: convert the [-1, 1] images to ImageNet-normalised ones
      first (``InputNormalization``, values from gin) — what weights trained with
      torchvision's preprocessing expect.
  """

  def __init__(self, model_id: int = 50, depths: Optional[Sequence[int]] = None,
               stem_width: int = 64, widths: Sequence[int] = (256, 512, 1024, 2048),
               bottleneck_ratio: int = 4, stride_in_1x1: bool = False,
               batch_norm_epsilon: float = 1e-5, batch_norm_momentum: float = 0.9,
               freeze_batch_norm: bool = False, frozen_stages: int = 0,
               input_normalization: bool = False, **kwargs):
    super().__init__(**kwargs)
    if depths is None:
      if model_id not in DEPTHS:
        raise ValueError(f"TorchvisionResNetEncoder.model_id must be one of "
                         f"{sorted(DEPTHS)} (or give depths), got {model_id!r}.")
      depths = DEPTHS[model_id]
    depths, widths = tuple(depths), tuple(widths)
    if len(depths) != len(widths) or len(depths) != 4:
      raise ValueError(f"TorchvisionResNetEncoder: depths {depths} and widths {widths} "
                       "must have 4 entries each (strides 4, 8, 16, 32).")
    if not 0 <= frozen_stages <= len(depths):
      raise ValueError(f"TorchvisionResNetEncoder.frozen_stages must be in "
                       f"[0, {len(depths)}], got {frozen_stages}.")
    self.input_normalization = (InputNormalization(name="input_normalization")
                                if input_normalization else None)
    norm = dict(epsilon=batch_norm_epsilon, momentum=batch_norm_momentum)
    self.stem = ConvBN(stem_width, STEM_KERNEL, 2, True, name="stem", **norm)
    self.stages: List[List[Bottleneck]] = []
    in_width = stem_width
    for i, (depth, width) in enumerate(zip(depths, widths)):
      self.stages.append([
          Bottleneck(in_width if j == 0 else width, width, 2 if (i and j == 0) else 1,
                     bottleneck_ratio, stride_in_1x1, name=f"stage{i + 1}_block{j}", **norm)
          for j in range(depth)])
      in_width = width
    self._freeze(freeze_batch_norm, frozen_stages)
    self.output_channels = {base.stride_key(FIRST_STRIDE * 2 ** i): w for i, w in enumerate(widths)}

  def conv_bns(self) -> List[ConvBN]:
    """Every conv + batch norm of the encoder, the stem first, blocks in order."""
    blocks = [block for stage in self.stages for block in stage]
    return [self.stem] + [c for b in blocks for c in (b.conv1, b.conv2, b.conv3, b.shortcut)
                          if c is not None]

  def _freeze(self, freeze_batch_norm: bool, frozen_stages: int) -> None:
    """Non-trainable batch norms (which then use their moving statistics) / stages."""
    if freeze_batch_norm:
      for conv_bn in self.conv_bns():
        conv_bn.bn.trainable = False
    if frozen_stages:
      self.stem.trainable = False
      for blocks in self.stages[:frozen_stages]:
        for block in blocks:
          block.trainable = False

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    x = images
    if self.input_normalization is not None:
      x = self.input_normalization(x)
    x = self.stem(x, training=training)
    # PyTorch pads the max-pool with -inf: padding never wins the max.
    pad = POOL_KERNEL // 2
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]], constant_values=float("-inf"))
    x = tf.nn.max_pool2d(x, POOL_KERNEL, 2, "VALID")
    endpoints = {}
    for i, blocks in enumerate(self.stages):
      for block in blocks:
        x = block(x, training=training)
      endpoints[base.stride_key(FIRST_STRIDE * 2 ** i)] = x
    return endpoints
