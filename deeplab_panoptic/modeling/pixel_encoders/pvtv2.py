"""PVTv2 pixel encoders (Wang et al., "PVT v2", 2022): B0-B5 and B2-Li.

Overlapping patch embeddings (7x7 stride 4, then 3x3 stride 2, each + LN),
pre-norm transformer blocks whose attention reduces keys/values spatially (conv
with kernel = stride = SR ratio, then LN), and a convolutional feed-forward
network (fc -> 3x3 depthwise conv -> GELU -> fc). No layer scale; linear drop path.

The "linear" models (PVTv2-B2-Li) reduce keys/values in every stage by adaptive
average pooling to a fixed 7x7 grid, a 1x1 conv, LN and GELU (attention cost
linear in the number of pixels), and put a ReLU after the FFN's first fc.
"""

from typing import Dict, List, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.drop_path import DropPath
from deeplab_panoptic.modeling.layers.multi_head import check_head_widths

# Widths, depths, heads, SR ratios and MLP ratios of the released models
# (whai362/PVT classification/pvt_v2.py).
_WIDTHS = (64, 128, 320, 512)
VARIANTS = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4)),
    "b1": dict(embed_dims=_WIDTHS, depths=(2, 2, 2, 2), mlp_ratios=(8, 8, 4, 4)),
    "b2": dict(embed_dims=_WIDTHS, depths=(3, 4, 6, 3), mlp_ratios=(8, 8, 4, 4)),
    "b3": dict(embed_dims=_WIDTHS, depths=(3, 4, 18, 3), mlp_ratios=(8, 8, 4, 4)),
    "b4": dict(embed_dims=_WIDTHS, depths=(3, 8, 27, 3), mlp_ratios=(8, 8, 4, 4)),
    "b5": dict(embed_dims=_WIDTHS, depths=(3, 6, 40, 3), mlp_ratios=(4, 4, 4, 4)),
    "b2_li": dict(embed_dims=_WIDTHS, depths=(3, 4, 6, 3), mlp_ratios=(8, 8, 4, 4),
                  linear=True),
}


def adaptive_average_pooling_matrix(in_size: int, out_size: int) -> np.ndarray:
  """``[out_size, in_size]`` averaging weights of PyTorch's adaptive average pooling.

  Output cell i averages inputs ``floor(i * in / out) <= j < ceil((i + 1) * in / out)``
  (cells may overlap when ``out`` does not divide ``in``; an input smaller than
  ``out`` is repeated).
  """
  weights = np.zeros([out_size, in_size], np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_average_pool2d(x: tf.Tensor, output_size: int) -> tf.Tensor:
  """``[batch, H, W, C]`` -> ``[batch, output_size, output_size, C]``, static H, W.

  Two small matmuls with the pooling matrices of each axis (no loop, XLA-friendly).
  """
  _, height, width, _ = x.shape
  rows = tf.constant(adaptive_average_pooling_matrix(height, output_size), x.dtype)
  cols = tf.constant(adaptive_average_pooling_matrix(width, output_size), x.dtype)
  return tf.einsum("ph,bhwc,qw->bpqc", rows, x, cols)


def _layer_norm(name: str, epsilon: float = 1e-6) -> keras.layers.LayerNormalization:
  return keras.layers.LayerNormalization(epsilon=epsilon, name=name)


def _dense(units: int, name: str) -> keras.layers.Dense:
  return keras.layers.Dense(
      units, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02), name=name)


class OverlapPatchEmbed(keras.layers.Layer):
  """Conv (kernel k, stride s, zero padding k // 2) + LN.

  Input ``[batch, H, W, c]``; output ``[batch, H', W', dim]``.
  """

  def __init__(self, dim: int, patch_size: int, stride: int, **kwargs):
    super().__init__(**kwargs)
    self._pad = keras.layers.ZeroPadding2D(patch_size // 2)
    self._conv = keras.layers.Conv2D(dim, patch_size, stride, padding="valid", name="proj")
    self._norm = keras.layers.LayerNormalization(epsilon=1e-5, name="norm")

  def call(self, x: tf.Tensor) -> tf.Tensor:
    return self._norm(self._conv(self._pad(x)))


class SpatialReductionAttention(keras.layers.Layer):
  """Multi-head attention whose keys/values come from a spatially reduced map.

  Input ``[batch, H, W, dim]``; output the same shape.
  """

  def __init__(self, dim: int, num_heads: int, sr_ratio: int, linear: bool = False,
               pool_size: int = 7, **kwargs):
    super().__init__(**kwargs)
    check_head_widths("PVTv2 SpatialReductionAttention", num_heads, width=dim)
    self._heads = num_heads
    self._head_dim = dim // num_heads
    self._q = _dense(dim, "q")
    self._kv = _dense(2 * dim, "kv")
    self._proj = _dense(dim, "proj")
    self._sr_ratio = sr_ratio
    self._linear = linear
    self._pool_size = pool_size
    if linear:
      self._sr = keras.layers.Conv2D(dim, 1, name="sr")
      self._sr_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="sr_norm")
    elif sr_ratio > 1:
      self._sr = keras.layers.Conv2D(dim, sr_ratio, sr_ratio, padding="valid", name="sr")
      self._sr_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="sr_norm")

  def _reduce(self, x: tf.Tensor) -> tf.Tensor:
    """The keys'/values' input: ``[batch, h', w', dim]``."""
    if self._linear:
      pooled = adaptive_average_pool2d(x, self._pool_size)
      return tf.nn.gelu(self._sr_norm(self._sr(pooled)), approximate=False)
    if self._sr_ratio > 1:
      return self._sr_norm(self._sr(x))
    return x

  def call(self, x: tf.Tensor) -> tf.Tensor:
    _, height, width, dim = x.shape
    heads, head_dim = self._heads, self._head_dim
    q = tf.reshape(self._q(x), [-1, height * width, heads, head_dim])
    kv = self._kv(self._reduce(x))
    num_kv = kv.shape[1] * kv.shape[2]
    kv = tf.reshape(kv, [-1, num_kv, 2, heads, head_dim])
    k, v = kv[:, :, 0], kv[:, :, 1]
    logits = tf.einsum("bnhd,bmhd->bhnm", q, k) * (head_dim ** -0.5)
    attention = tf.nn.softmax(logits, axis=-1)
    out = tf.einsum("bhnm,bmhd->bnhd", attention, v)
    return self._proj(tf.reshape(out, [-1, height, width, dim]))


class ConvFFN(keras.layers.Layer):
  """fc -> (ReLU if linear) -> 3x3 depthwise conv -> GELU -> fc on ``[batch, H, W, dim]``."""

  def __init__(self, dim: int, hidden_dim: int, linear: bool = False, **kwargs):
    super().__init__(**kwargs)
    self._fc1 = _dense(hidden_dim, "fc1")
    self._dw = keras.layers.DepthwiseConv2D(3, padding="same", name="dwconv")
    self._fc2 = _dense(dim, "fc2")
    self._linear = linear

  def call(self, x: tf.Tensor) -> tf.Tensor:
    hidden = self._fc1(x)
    if self._linear:
      hidden = tf.nn.relu(hidden)
    return self._fc2(tf.nn.gelu(self._dw(hidden), approximate=False))


class PVTv2Block(keras.layers.Layer):
  """Pre-norm block: x + DropPath(SRA(LN(x))); x + DropPath(ConvFFN(LN(x)))."""

  def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int,
               drop_path_rate: float, linear: bool = False, **kwargs):
    super().__init__(**kwargs)
    self._norm1 = _layer_norm("norm1")
    self._attn = SpatialReductionAttention(dim, num_heads, sr_ratio, linear=linear,
                                           name="attn")
    self._norm2 = _layer_norm("norm2")
    self._mlp = ConvFFN(dim, dim * mlp_ratio, linear=linear, name="mlp")
    self._drop_path = DropPath(drop_path_rate)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    x = x + self._drop_path(self._attn(self._norm1(x)), training=training)
    return x + self._drop_path(self._mlp(self._norm2(x)), training=training)


@gin.configurable
class PVTv2Encoder(base.PixelEncoder):
  """PVTv2 backbone with endpoints named by stride.

  Input: images ``[batch, height, width, 3]``.
  Output: ``{"stride4", "stride8", "stride16", "stride32"}`` maps
  ``[batch, ~height / s, ~width / s, embed_dims[i]]``.

  Args:
    variant: "b0" ... "b5" or "b2_li"; fills the widths, depths, MLP ratios
      and `linear` below that are left as None.
    embed_dims, depths, mlp_ratios: per stage; override the variant.
    linear: linear spatial-reduction attention (7x7 adaptive pooling in every
      stage) and the FFN's ReLU, as PVTv2-B2-Li; overrides the variant.
    num_heads: per stage (1, 2, 5, 8 in every variant).
    sr_ratios: spatial-reduction ratio per stage (8, 4, 2, 1).
    drop_path_rate: drop path of the last block (linear from 0).
  """

  def __init__(self, variant: str = "b2", embed_dims: Optional[Sequence[int]] = None,
               depths: Optional[Sequence[int]] = None,
               mlp_ratios: Optional[Sequence[int]] = None,
               num_heads: Sequence[int] = (1, 2, 5, 8),
               sr_ratios: Sequence[int] = (8, 4, 2, 1),
               drop_path_rate: float = 0.1, linear: Optional[bool] = None, **kwargs):
    super().__init__(**kwargs)
    if variant not in VARIANTS:
      raise ValueError(f"PVTv2Encoder.variant must be one of {sorted(VARIANTS)}, "
                       f"got {variant!r}.")
    spec = VARIANTS[variant]
    embed_dims = tuple(embed_dims or spec["embed_dims"])
    depths = tuple(depths or spec["depths"])
    mlp_ratios = tuple(mlp_ratios or spec["mlp_ratios"])
    linear = spec.get("linear", False) if linear is None else bool(linear)
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    self._embeds: List[OverlapPatchEmbed] = []
    self._stages: List[List[PVTv2Block]] = []
    self._norms: List[keras.layers.Layer] = []
    index = 0
    for stage, (dim, depth) in enumerate(zip(embed_dims, depths)):
      self._embeds.append(OverlapPatchEmbed(dim, 7 if stage == 0 else 3,
                                            4 if stage == 0 else 2,
                                            name=f"patch_embed{stage + 1}"))
      blocks = []
      for j in range(depth):
        blocks.append(PVTv2Block(dim, num_heads[stage], sr_ratios[stage], mlp_ratios[stage],
                                 rates[index], linear=linear, name=f"block{stage + 1}_{j}"))
        index += 1
      self._stages.append(blocks)
      self._norms.append(_layer_norm(f"norm{stage + 1}"))
    self.output_channels = {f"stride{4 * 2 ** i}": d for i, d in enumerate(embed_dims)}

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    x = images
    endpoints = {}
    for stage, (embed, blocks, norm) in enumerate(zip(self._embeds, self._stages,
                                                      self._norms)):
      x = embed(x)
      for block in blocks:
        x = block(x, training=training)
      x = norm(x)
      endpoints[f"stride{4 * 2 ** stage}"] = x
    return endpoints
