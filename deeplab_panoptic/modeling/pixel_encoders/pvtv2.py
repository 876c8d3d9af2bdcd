"""PVTv2 pixel encoders (Wang et al., "PVT v2", 2022): B0, B2, B5.

Overlapping patch embeddings (7x7 stride 4, then 3x3 stride 2, each + LN),
pre-norm transformer blocks whose attention reduces keys/values spatially (conv
with kernel = stride = SR ratio, then LN), and a convolutional feed-forward
network (fc -> 3x3 depthwise conv -> GELU -> fc). No layer scale; linear drop path.
"""

from typing import Dict, List, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.layers.drop_path import DropPath

# Widths, depths, heads, SR ratios and MLP ratios of the released models
# (whai362/PVT classification/pvt_v2.py).
VARIANTS = {
    "b0": dict(embed_dims=(32, 64, 160, 256), depths=(2, 2, 2, 2),
               mlp_ratios=(8, 8, 4, 4)),
    "b1": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 2, 2),
               mlp_ratios=(8, 8, 4, 4)),
    "b2": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 6, 3),
               mlp_ratios=(8, 8, 4, 4)),
    "b3": dict(embed_dims=(64, 128, 320, 512), depths=(3, 4, 18, 3),
               mlp_ratios=(8, 8, 4, 4)),
    "b4": dict(embed_dims=(64, 128, 320, 512), depths=(3, 8, 27, 3),
               mlp_ratios=(8, 8, 4, 4)),
    "b5": dict(embed_dims=(64, 128, 320, 512), depths=(3, 6, 40, 3),
               mlp_ratios=(4, 4, 4, 4)),
}


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

  def __init__(self, dim: int, num_heads: int, sr_ratio: int, **kwargs):
    super().__init__(**kwargs)
    if dim % num_heads:
      raise ValueError(f"PVTv2: width {dim} is not divisible by {num_heads} heads.")
    self._heads = num_heads
    self._head_dim = dim // num_heads
    self._q = _dense(dim, "q")
    self._kv = _dense(2 * dim, "kv")
    self._proj = _dense(dim, "proj")
    self._sr_ratio = sr_ratio
    if sr_ratio > 1:
      self._sr = keras.layers.Conv2D(dim, sr_ratio, sr_ratio, padding="valid", name="sr")
      self._sr_norm = keras.layers.LayerNormalization(epsilon=1e-5, name="sr_norm")

  def call(self, x: tf.Tensor) -> tf.Tensor:
    _, height, width, dim = x.shape
    heads, head_dim = self._heads, self._head_dim
    q = tf.reshape(self._q(x), [-1, height * width, heads, head_dim])
    kv_in = self._sr_norm(self._sr(x)) if self._sr_ratio > 1 else x
    kv = self._kv(kv_in)
    num_kv = kv.shape[1] * kv.shape[2]
    kv = tf.reshape(kv, [-1, num_kv, 2, heads, head_dim])
    k, v = kv[:, :, 0], kv[:, :, 1]
    logits = tf.einsum("bnhd,bmhd->bhnm", q, k) * (head_dim ** -0.5)
    attention = tf.nn.softmax(logits, axis=-1)
    out = tf.einsum("bhnm,bmhd->bnhd", attention, v)
    return self._proj(tf.reshape(out, [-1, height, width, dim]))


class ConvFFN(keras.layers.Layer):
  """fc -> 3x3 depthwise conv -> GELU -> fc on ``[batch, H, W, dim]``."""

  def __init__(self, dim: int, hidden_dim: int, **kwargs):
    super().__init__(**kwargs)
    self._fc1 = _dense(hidden_dim, "fc1")
    self._dw = keras.layers.DepthwiseConv2D(3, padding="same", name="dwconv")
    self._fc2 = _dense(dim, "fc2")

  def call(self, x: tf.Tensor) -> tf.Tensor:
    return self._fc2(tf.nn.gelu(self._dw(self._fc1(x)), approximate=False))


class PVTv2Block(keras.layers.Layer):
  """Pre-norm block: x + DropPath(SRA(LN(x))); x + DropPath(ConvFFN(LN(x)))."""

  def __init__(self, dim: int, num_heads: int, sr_ratio: int, mlp_ratio: int,
               drop_path_rate: float, **kwargs):
    super().__init__(**kwargs)
    self._norm1 = _layer_norm("norm1")
    self._attn = SpatialReductionAttention(dim, num_heads, sr_ratio, name="attn")
    self._norm2 = _layer_norm("norm2")
    self._mlp = ConvFFN(dim, dim * mlp_ratio, name="mlp")
    self._drop_path = DropPath(drop_path_rate)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    x = x + self._drop_path(self._attn(self._norm1(x)), training=training)
    return x + self._drop_path(self._mlp(self._norm2(x)), training=training)


@gin.configurable
class PVTv2Encoder(keras.layers.Layer):
  """PVTv2 backbone with endpoints named by stride.

  Input: images ``[batch, height, width, 3]``.
  Output: ``{"stride4", "stride8", "stride16", "stride32"}`` maps
  ``[batch, ~height / s, ~width / s, embed_dims[i]]``.

  Args:
    variant: "b0" ... "b5"; fills the widths, depths and MLP ratios below
      that are left as None.
    embed_dims, depths, mlp_ratios: per stage; override the variant.
    num_heads: per stage (1, 2, 5, 8 in every variant).
    sr_ratios: spatial-reduction ratio per stage (8, 4, 2, 1).
    drop_path_rate: drop path of the last block (linear from 0).
  """

  def __init__(self, variant: str = "b2", embed_dims: Optional[Sequence[int]] = None,
               depths: Optional[Sequence[int]] = None,
               mlp_ratios: Optional[Sequence[int]] = None,
               num_heads: Sequence[int] = (1, 2, 5, 8),
               sr_ratios: Sequence[int] = (8, 4, 2, 1),
               drop_path_rate: float = 0.1, **kwargs):
    super().__init__(**kwargs)
    if variant not in VARIANTS:
      raise ValueError(f"PVTv2Encoder.variant must be one of {sorted(VARIANTS)}, "
                       f"got {variant!r}.")
    spec = VARIANTS[variant]
    embed_dims = tuple(embed_dims or spec["embed_dims"])
    depths = tuple(depths or spec["depths"])
    mlp_ratios = tuple(mlp_ratios or spec["mlp_ratios"])
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
                                 rates[index], name=f"block{stage + 1}_{j}"))
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
