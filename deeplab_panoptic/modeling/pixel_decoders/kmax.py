"""kMaX-DeepLab pixel decoder: a feature pyramid from stride 32 down to stride 4."""

from typing import Dict, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling import utils
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.axial_attention import ResidualBlock
from deeplab_panoptic.modeling.layers.coord_conv import CoordConv


class ResizedFuse(keras.layers.Layer):
  """Sums features of different size and width at one target size and width.

  Each input is activated, projected by 1x1 conv + BN to ``filters`` and
  bilinearly resized to the first input's spatial size; an input that already
  has ``filters`` channels is only resized (neither activated nor projected), as
  in deeplab2.

  Inputs: list of ``[batch, h_i, w_i, c_i]``; output ``[batch, h_0, w_0, filters]``.
  """

  def __init__(self, filters: int, num_inputs: int, activation: str, **kwargs):
    super().__init__(**kwargs)
    self._act = conv.get_activation(activation)
    self._filters = filters
    self._projections = [conv.ConvBN(filters, 1, name=f"proj{i}") for i in range(num_inputs)]

  def build(self, input_shape):
    # Only inputs of another width are projected (their ConvBN never builds otherwise).
    self._projections = [None if int(shape[-1]) == self._filters else proj
                         for shape, proj in zip(input_shape, self._projections)]
    super().build(input_shape)

  def call(self, inputs: Sequence[tf.Tensor], size, training=None) -> tf.Tensor:
    out = 0.0
    for x, proj in zip(inputs, self._projections):
      if proj is not None:
        x = proj(self._act(x), training=training)
      out = out + utils.resize_bilinear(x, size)
    return out


@gin.configurable
class KMaXPixelDecoder(base.PixelDecoder):
  """Pixel decoder of kMaX-DeepLab (ReMaX Tab. 12: block counts per stride).

  Stage ``i`` runs at ``strides[i]``: it fuses the previous (coarser) stage's output
  with the layer-normalised encoder endpoint at that stride, then applies
  ``num_blocks[i]`` residual blocks of width ``filters[i] * expansion``.

  Input: encoder endpoints ``{"stride<s>": [batch, H/s, W/s, c_s]}``.
  Output: ``{"stride<s>": [batch, H/s, W/s, filters_s * expansion]}`` for each stage,
  non-activated (consumers activate).

  Args:
    strides: decoder strides, coarse to fine, e.g. (32, 16, 8, 4).
    num_blocks: residual blocks per stage.
    filters: bottleneck width per stage (output width is ``filters * expansion``).
    block_types: "bottleneck" or "axial" per stage. An axial block (deeplab2's
      kMaX decoder at strides 32 and 16) has a 1x1 conv to ``2 * filters``,
      position-sensitive axial attention with ``filters`` key and ``2 * filters``
      value width, and a 1x1 conv to ``filters * expansion``.
    expansion: bottleneck expansion.
    activation: activation function.
    drop_path_rate: drop path of the residual blocks.
    coord_conv: pass every stage output through a coord-conv (CMT-DeepLab eq. 12),
      giving the transformer decoder absolute position; off in kMaX-DeepLab.
    num_heads: heads of the axial attention blocks.
    fuse_expanded: the skip fusion of stage ``i`` sums at the stage's output width
      ``filters[i] * expansion``; False (deeplab2, e.g. 256 channels at stride 16
      for R50, 788,480 params) sums at ``filters[i]`` and the stage's first block
      expands with a projection shortcut.
    bottleneck_dilation: atrous rate of the 3x3 convs of the bottleneck stages.
      deeplab2 builds them as blocks of an output-stride-16 network at original
      stride 32, which gives rate 2; the paper does not say.
  """

  def __init__(self, strides: Sequence[int] = (32, 16, 8, 4),
               num_blocks: Sequence[int] = (1, 5, 1, 1),
               filters: Sequence[int] = (512, 256, 128, 64),
               block_types: Sequence[str] = ("bottleneck",) * 4,
               expansion: int = 4, activation: str = "gelu",
               drop_path_rate: float = 0.0, coord_conv: bool = False,
               num_heads: int = 8, fuse_expanded: bool = False, bottleneck_dilation: int = 2,
               **kwargs):
    super().__init__(**kwargs)
    if not len(strides) == len(num_blocks) == len(filters) == len(block_types):
      raise ValueError("KMaXPixelDecoder: strides, num_blocks, filters and block_types "
                       f"must have one entry per stage, got {strides}, {num_blocks}, "
                       f"{filters}, {block_types}.")
    self.strides = tuple(strides)
    self._norms = [keras.layers.LayerNormalization(epsilon=1e-6, name=f"skip_norm_s{s}")
                   for s in strides]
    self._fuses = []
    self._stages = []
    for i, (s, n, f, t) in enumerate(zip(strides, num_blocks, filters, block_types)):
      if t not in ("bottleneck", "axial"):
        raise ValueError(f"KMaXPixelDecoder: unknown block type {t!r} at stride {s}; "
                         "supported: 'bottleneck', 'axial'.")
      self._fuses.append(None if i == 0 else
                         ResizedFuse(f * expansion if fuse_expanded else f, 2, activation,
                                     name=f"fuse_s{s}"))
      if t == "axial":
        self._stages.append([
            ResidualBlock((2 * f, 2 * f, f * expansion), "axial", key_dim=f,
                          num_heads=num_heads, activation=activation,
                          drop_path_rate=drop_path_rate, name=f"stage_s{s}_axial{j}")
            for j in range(n)])
      else:
        self._stages.append([
            conv.BottleneckBlock(f, expansion, activation, drop_path_rate,
                                 dilation_rate=bottleneck_dilation,
                                 name=f"stage_s{s}_block{j}") for j in range(n)])
    self._coord_convs = [CoordConv(name=f"coord_conv_s{s}") if coord_conv else None
                         for s in strides]
    self.output_channels = {f"stride{s}": f * expansion for s, f in zip(strides, filters)}

  def call(self, endpoints: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    outputs = {}
    x = None
    for s, norm, fuse, blocks, coord in zip(self.strides, self._norms, self._fuses,
                                            self._stages, self._coord_convs):
      key = f"stride{s}"
      if key not in endpoints:
        raise ValueError(f"KMaXPixelDecoder needs the encoder endpoint {key!r}; "
                         f"the encoder gives {sorted(endpoints)}.")
      skip = norm(endpoints[key])
      x = skip if fuse is None else fuse([skip, x], utils.spatial_size(skip), training=training)
      for block in blocks:
        x = block(x, training=training)
      if coord is not None:
        x = coord(x, training=training)
      outputs[key] = x
    return outputs
