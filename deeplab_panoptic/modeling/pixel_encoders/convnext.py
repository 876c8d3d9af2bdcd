"""ConvNeXt pixel encoders (Liu et al., "A ConvNet for the 2020s", CVPR 2022): T/S/B/L.

Stem: 4x4 stride-4 conv + LN. Each later stage starts with LN + 2x2 stride-2 conv.
Block: 7x7 depthwise conv -> LN -> dense x4 -> GELU -> dense -> layer scale ->
drop path -> residual add. No final norm and no classifier: the kMaX pixel
decoder layer-normalises every endpoint it uses itself.
"""

from typing import Dict, List, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.drop_path import DropPath

# Widths and depths of the released models (facebookresearch/ConvNeXt).
VARIANTS = {
    "tiny": dict(dims=(96, 192, 384, 768), depths=(3, 3, 9, 3)),
    "small": dict(dims=(96, 192, 384, 768), depths=(3, 3, 27, 3)),
    "base": dict(dims=(128, 256, 512, 1024), depths=(3, 3, 27, 3)),
    "large": dict(dims=(192, 384, 768, 1536), depths=(3, 3, 27, 3)),
    "xlarge": dict(dims=(256, 512, 1024, 2048), depths=(3, 3, 27, 3)),
}


def _init():
  return keras.initializers.TruncatedNormal(stddev=0.02)


def _layer_norm(name: str) -> keras.layers.LayerNormalization:
  return keras.layers.LayerNormalization(epsilon=1e-6, name=name)


class ConvNeXtBlock(keras.layers.Layer):
  """x + DropPath(gamma * fc2(GELU(fc1(LN(dw7x7(x)))))).

  Input and output ``[batch, h, w, dim]``.

  Args:
    dim: width.
    drop_path_rate: probability of dropping the residual branch.
    layer_scale_init: initial value of the per-channel scale gamma (0: no scale).
    mlp_ratio: hidden width of the MLP / ``dim``.
  """

  def __init__(self, dim: int, drop_path_rate: float = 0.0,
               layer_scale_init: float = 1e-6, mlp_ratio: int = 4, **kwargs):
    super().__init__(**kwargs)
    self._dim = dim
    self._layer_scale_init = layer_scale_init
    self._dw = keras.layers.DepthwiseConv2D(7, padding="same", depthwise_initializer=_init(),
                                            name="dwconv")
    self._norm = _layer_norm("norm")
    self._fc1 = keras.layers.Dense(mlp_ratio * dim, kernel_initializer=_init(), name="fc1")
    self._fc2 = keras.layers.Dense(dim, kernel_initializer=_init(), name="fc2")
    self._drop_path = DropPath(drop_path_rate)

  def build(self, input_shape):
    # The tiny initial scale (1e-6) keeps every block near the identity at the start,
    # which is what lets the deep variants train.
    self._gamma = None
    if self._layer_scale_init > 0:
      self._gamma = self.add_weight(
          "layer_scale", shape=[self._dim],
          initializer=keras.initializers.Constant(self._layer_scale_init), trainable=True)
    super().build(input_shape)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    y = self._fc1(self._norm(self._dw(x)))
    # Exact GELU, as the ImageNet checkpoints were trained with.
    y = self._fc2(tf.nn.gelu(y, approximate=False))
    if self._gamma is not None:
      y = y * self._gamma
    return x + self._drop_path(y, training=training)


@gin.configurable
class ConvNeXtEncoder(base.PixelEncoder):
  """ConvNeXt backbone with endpoints named by stride.

  Input: images ``[batch, height, width, 3]`` normalised to [-1, 1].
  Output: ``{"stride4", "stride8", "stride16", "stride32"}``: the outputs of the
  four stages, ``[batch, h_s, w_s, dims[i]]`` (non-activated, no norm). With
  ``zero_padding_for_downstream`` (deeplab2), the stem pads 1 pixel top/left and 2
  bottom/right and each downsampling pads 1 bottom/right, so odd crop sizes
  ``k * 32 + 1`` give ``h_s = (height - 1) / s + 1`` (1281 -> 321, 161, 81, 41),
  aligned with the other backbones; else ``h_s = floor(height / s)``.

  Args:
    variant: "tiny", "small", "base", "large" or "xlarge"; fills ``dims`` and
      ``depths`` when those are None.
    dims, depths: per-stage widths and block counts; override the variant.
    drop_path_rate: drop path of the last block; linear from 0 at the first block
      (deeplab2's keep probability 1 -> ``1 - drop_path_rate``).
    layer_scale_init: initial layer scale.
    zero_padding_for_downstream: pad before each strided conv (see above).
  """

  def __init__(self, variant: str = "tiny", dims: Optional[Sequence[int]] = None,
               depths: Optional[Sequence[int]] = None, drop_path_rate: float = 0.0,
               layer_scale_init: float = 1e-6, zero_padding_for_downstream: bool = True,
               **kwargs):
    super().__init__(**kwargs)
    if variant not in VARIANTS:
      raise ValueError(f"ConvNeXtEncoder.variant must be one of {sorted(VARIANTS)}, "
                       f"got {variant!r}.")
    dims = tuple(dims or VARIANTS[variant]["dims"])
    depths = tuple(depths or VARIANTS[variant]["depths"])
    if len(dims) != 4 or len(depths) != 4:
      raise ValueError(f"ConvNeXtEncoder needs 4 stages, got dims {dims}, depths {depths}.")
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    self._downsamples: List[List[keras.layers.Layer]] = []
    self._stages: List[List[ConvNeXtBlock]] = []
    index = 0
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
      if stage == 0:
        layers = [keras.layers.Conv2D(dim, 4, 4, kernel_initializer=_init(), name="stem_conv"),
                  _layer_norm("stem_norm")]
        padding = ((1, 2), (1, 2))
      else:
        layers = [_layer_norm(f"downsample{stage}_norm"),
                  keras.layers.Conv2D(dim, 2, 2, kernel_initializer=_init(),
                                      name=f"downsample{stage}_conv")]
        padding = ((0, 1), (0, 1))
      if zero_padding_for_downstream:
        layers.insert(0, keras.layers.ZeroPadding2D(padding))
      self._downsamples.append(layers)
      self._stages.append([ConvNeXtBlock(dim, rates[index + j], layer_scale_init,
                                         name=f"stage{stage + 1}_block{j}")
                           for j in range(depth)])
      index += depth
    self.output_channels = {f"stride{4 * 2 ** i}": d for i, d in enumerate(dims)}

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    x = images
    endpoints = {}
    for stage, (downsample, blocks) in enumerate(zip(self._downsamples, self._stages)):
      for layer in downsample:
        x = layer(x)
      for block in blocks:
        x = block(x, training=training)
      endpoints[f"stride{4 * 2 ** stage}"] = x
    return endpoints
