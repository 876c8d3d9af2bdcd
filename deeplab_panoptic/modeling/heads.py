"""Per-pixel heads: the Panoptic-DeepLab semantic decoder and head.

The mask-transformer prediction head and ReMaX's per-stage semantic head are
building blocks shared by several families, in ``layers/mask_predictor.py`` and
``layers/aspp.py``; they are re-exported here under their public names.
"""

from typing import Dict, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling import utils
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.aspp import ASPP
# Public names (re-exported, see the module docstring).
from deeplab_panoptic.modeling.layers.aspp import ReMaXSemanticHead  # pylint: disable=unused-import
from deeplab_panoptic.modeling.layers.mask_predictor import (  # pylint: disable=unused-import
    MaskTransformerPredictor)


@gin.configurable
class SemanticHead(base.PixelHead):
  """Panoptic-DeepLab style semantic decoder and head (training-only auxiliary).

  ASPP on the coarsest encoder feature, then for each low-level endpoint: project it
  (1x1 conv), upsample the running feature to it, concatenate and fuse with a 5x5
  depthwise-separable conv; finally a 5x5 separable conv and a 1x1 conv to classes.

  Input: encoder endpoints ``{"stride<s>": [batch, H/s, W/s, c]}`` (or the pixel
  decoder's features, see ``MaskTransformer.semantic_head_input``).
  Output: semantic logits ``[batch, H/s_min, W/s_min, num_classes]``.

  Args:
    num_classes: number of semantic classes.
    input_stride: stride of the ASPP input.
    input_key: the input's key; default ``"stride<input_stride>"``.
    aspp: False: no ASPP (and no ``low_level_strides``): the activated input goes
      straight to the 5x5 separable head, as MaX-DeepLab-L's semantic branch on a
      stride-4 decoder feature.
    low_level_strides: strides of the low-level skips, coarse to fine.
    low_level_dims: projection width of each skip.
    aspp_dim: width of ASPP and the decoder.
    atrous_rates: ASPP atrous rates.
    head_dim: width of the last separable conv.
    dropout: dropout after ASPP.
    activation: activation function.
  """

  def __init__(self, num_classes: int = gin.REQUIRED, input_stride: int = 32,
               low_level_strides: Sequence[int] = (8, 4),
               low_level_dims: Sequence[int] = (64, 32), aspp_dim: int = 256,
               atrous_rates: Sequence[int] = (6, 12, 18), head_dim: int = 256,
               dropout: float = 0.1, activation: str = "gelu",
               input_key: Optional[str] = None, aspp: bool = True, **kwargs):
    super().__init__(**kwargs)
    self._input_key = input_key or f"stride{input_stride}"
    self._act = conv.get_activation(activation)
    if not aspp and low_level_strides:
      raise ValueError("SemanticHead: aspp=False reads one feature; set "
                       "low_level_strides = ().")
    self._aspp = (ASPP(aspp_dim, atrous_rates, activation, dropout, name="aspp")
                  if aspp else None)
    self._low_keys = [f"stride{s}" for s in low_level_strides]
    self._low_proj = [conv.ConvBN(d, 1, activation=activation, name=f"low_proj_s{s}")
                      for s, d in zip(low_level_strides, low_level_dims)]
    self._fuse = [conv.ConvBN(aspp_dim, 5, separable=True, activation=activation,
                              name=f"fuse_s{s}") for s in low_level_strides]
    self._head = conv.ConvBN(head_dim, 5, separable=True, activation=activation, name="head")
    self._logits = keras.layers.Conv2D(
        num_classes, 1, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        name="logits")

  def call(self, endpoints: Dict[str, tf.Tensor], training=None) -> tf.Tensor:
    if self._input_key not in endpoints:
      raise ValueError(f"SemanticHead reads {self._input_key!r}; its input has "
                       f"{sorted(endpoints)}.")
    x = self._act(endpoints[self._input_key])
    if self._aspp is not None:
      x = self._aspp(x, training=training)
    for key, proj, fuse in zip(self._low_keys, self._low_proj, self._fuse):
      low = proj(self._act(endpoints[key]), training=training)
      x = utils.resize_bilinear(x, utils.spatial_size(low))
      x = fuse(tf.concat([x, low], axis=-1), training=training)
    return self._logits(self._head(x, training=training))
