"""Swin Transformer pixel encoders (Liu et al., arXiv 2103.14030): Swin-T/S/B/L.

The backbone as Mask2Former uses it (Cheng et al., arXiv 2112.01527;
facebookresearch/Mask2Former mask2former/modeling/backbone/swin.py, and Hugging
Face transformers' ``SwinBackbone``, which its Mask2Former port loads):

* patch embedding: 4x4 conv with stride 4, then LayerNorm (the input is zero
  padded at the bottom / right to a multiple of 4);
* per stage, blocks of window attention (W-MSA) and shifted-window attention
  (SW-MSA, every second block: cyclic shift by half a window, with an attention
  mask that keeps tokens from attending across the wrap-around), each with a
  learned relative position bias ``[(2w - 1)^2, heads]`` (Sec. 3.2), and an MLP
  of ratio 4 with exact GELU; pre-norm residuals with drop path (linear over the
  depth). Each block zero pads its normalised input at the bottom / right to a
  multiple of the window and crops after attention, at every resolution (no
  window clamping, unlike the ImageNet classifiers at 224);
* patch merging between stages: 2x2 neighbours concatenated, LayerNorm(4C),
  bias-free linear to 2C (an odd size is zero padded first);
* one LayerNorm per output stage (Mask2Former's ``norm{i}``), applied to the
  stage's output before merging. The classifier's final norm and head are absent.

Outputs at strides 4 / 8 / 16 / 32, widths C, 2C, 4C, 8C.
"""

from typing import Dict, List, Optional, Sequence

import gin
import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.drop_path import DropPath
from deeplab_panoptic.modeling.layers.input_normalization import InputNormalization
from deeplab_panoptic.modeling.layers.multi_head import check_head_widths

# Widths, depths and heads of the released models (arXiv 2103.14030, Sec. 3.3).
VARIANTS = {
    "t": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "s": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "b": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "l": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
PATCH_SIZE = 4
# The logit added between tokens of different regions of a shifted window (the
# reference's value: large enough to give them ~0 weight, finite in bfloat16).
SHIFT_MASK_VALUE = -100.0


def relative_position_index(window: int) -> np.ndarray:
  """``[w * w, w * w]`` int32: the bias-table row of each (query, key) pair.

  Tokens are numbered row-major in the window; the pair's offset (dy, dx), each in
  [-(w - 1), w - 1], is row ``(dy + w - 1) * (2w - 1) + (dx + w - 1)``.
  """
  rows, cols = np.meshgrid(np.arange(window), np.arange(window), indexing="ij")
  coords = np.stack([rows.ravel(), cols.ravel()])                 # [2, w * w]
  offsets = coords[:, :, None] - coords[:, None, :] + window - 1   # [2, N, N]
  return (offsets[0] * (2 * window - 1) + offsets[1]).astype(np.int32)


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
  """``[num_windows, w * w, w * w]`` float32: 0 within a region, SHIFT_MASK_VALUE across.

  After a cyclic shift by ``-shift``, the last window of each axis holds tokens
  from the far side of the (padded) map; each axis splits into the regions
  ``[0, size - w)``, ``[size - w, size - shift)``, ``[size - shift, size)``, and a
  token attends only to tokens of its own region pair. ``height`` and ``width``
  are the padded sizes (multiples of ``window``); windows are numbered row-major.
  """
  def regions(size):
    index = np.arange(size)
    return (index >= size - window).astype(np.int32) + (index >= size - shift)

  labels = regions(height)[:, None] * 3 + regions(width)[None, :]   # [H, W]
  labels = labels.reshape(height // window, window, width // window, window)
  labels = labels.transpose(0, 2, 1, 3).reshape(-1, window * window)
  different = labels[:, :, None] != labels[:, None, :]
  return np.where(different, SHIFT_MASK_VALUE, 0.0).astype(np.float32)


def window_partition(x: tf.Tensor, window: int) -> tf.Tensor:
  """``[B, H, W, C]`` (H, W multiples of ``window``) -> ``[B, nh * nw, w * w, C]``."""
  _, height, width, channels = x.shape
  x = tf.reshape(x, [-1, height // window, window, width // window, window, channels])
  x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
  return tf.reshape(x, [-1, (height // window) * (width // window), window * window,
                        channels])


def window_merge(windows: tf.Tensor, window: int, height: int, width: int) -> tf.Tensor:
  """Inverse of ``window_partition``: ``[B, nh * nw, w * w, C]`` -> ``[B, H, W, C]``."""
  channels = windows.shape[-1]
  x = tf.reshape(windows, [-1, height // window, width // window, window, window, channels])
  x = tf.transpose(x, [0, 1, 3, 2, 4, 5])
  return tf.reshape(x, [-1, height, width, channels])


def _dense(units: int, name: str, use_bias: bool = True) -> keras.layers.Dense:
  return keras.layers.Dense(
      units, use_bias=use_bias, name=name,
      kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02))


class WindowAttention(keras.layers.Layer):
  """Multi-head self-attention inside windows, with a relative position bias.

  ``call(windows, mask)``: windows ``[B, num_windows, w * w, dim]``; mask None or
  ``[num_windows, w * w, w * w]`` added to the logits. Returns the same shape.
  """

  def __init__(self, dim: int, num_heads: int, window: int, **kwargs):
    super().__init__(**kwargs)
    check_head_widths("Swin WindowAttention", num_heads, dim=dim)
    self._heads = num_heads
    self._head_dim = dim // num_heads
    self._window = window
    self.qkv = _dense(3 * dim, "qkv")
    self.proj = _dense(dim, "proj")

  def build(self, input_shape):
    self.relative_position_bias_table = self.add_weight(
        "relative_position_bias_table", [(2 * self._window - 1) ** 2, self._heads],
        initializer=keras.initializers.TruncatedNormal(stddev=0.02))
    super().build(input_shape)

  def relative_position_bias(self) -> tf.Tensor:
    """``[heads, w * w, w * w]``: the table gathered at ``relative_position_index``."""
    index = tf.constant(relative_position_index(self._window))
    bias = tf.gather(self.relative_position_bias_table, index)   # [N, N, heads]
    return tf.transpose(bias, [2, 0, 1])

  def call(self, windows: tf.Tensor, mask: Optional[tf.Tensor] = None) -> tf.Tensor:
    _, num_windows, tokens, dim = windows.shape
    qkv = tf.reshape(self.qkv(windows),
                     [-1, num_windows, tokens, 3, self._heads, self._head_dim])
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    logits = tf.einsum("bwnhd,bwmhd->bwhnm", q * self._head_dim ** -0.5, k)
    logits += tf.cast(self.relative_position_bias(), logits.dtype)
    if mask is not None:
      logits += tf.cast(mask[:, None], logits.dtype)   # [num_windows, 1, N, N]
    attention = tf.nn.softmax(logits, axis=-1)
    out = tf.einsum("bwhnm,bwmhd->bwnhd", attention, v)
    return self.proj(tf.reshape(out, [-1, num_windows, tokens, dim]))


class SwinBlock(keras.layers.Layer):
  """x + DropPath((S)W-MSA(LN(x))); x + DropPath(MLP(LN(x))) on ``[B, H, W, dim]``.

  Args:
    shift: the cyclic shift (0: W-MSA; ``window // 2``: SW-MSA).
  """

  def __init__(self, dim: int, num_heads: int, window: int, shift: int, mlp_ratio: float,
               drop_path_rate: float, epsilon: float, **kwargs):
    super().__init__(**kwargs)
    self._window = window
    self._shift = shift
    self.norm1 = keras.layers.LayerNormalization(epsilon=epsilon, name="norm1")
    self.attn = WindowAttention(dim, num_heads, window, name="attn")
    self.norm2 = keras.layers.LayerNormalization(epsilon=epsilon, name="norm2")
    self.fc1 = _dense(int(dim * mlp_ratio), "fc1")
    self.fc2 = _dense(dim, "fc2")
    self._drop_path = DropPath(drop_path_rate)

  def _attention(self, x: tf.Tensor) -> tf.Tensor:
    """(S)W-MSA on a normalised ``[B, H, W, dim]``, padded to whole windows and cropped."""
    _, height, width, _ = x.shape
    w, shift = self._window, self._shift
    padded_h, padded_w = -(-height // w) * w, -(-width // w) * w
    x = tf.pad(x, [[0, 0], [0, padded_h - height], [0, padded_w - width], [0, 0]])
    mask = None
    if shift:
      x = tf.roll(x, shift=[-shift, -shift], axis=[1, 2])
      mask = tf.constant(shifted_window_mask(padded_h, padded_w, w, shift))
    x = window_merge(self.attn(window_partition(x, w), mask), w, padded_h, padded_w)
    if shift:
      x = tf.roll(x, shift=[shift, shift], axis=[1, 2])
    return x[:, :height, :width]

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    x = x + self._drop_path(self._attention(self.norm1(x)), training=training)
    hidden = tf.nn.gelu(self.fc1(self.norm2(x)), approximate=False)
    return x + self._drop_path(self.fc2(hidden), training=training)


class PatchEmbed(keras.layers.Layer):
  """``[B, H, W, 3]`` -> ``[B, ceil(H / 4), ceil(W / 4), dim]``: padded 4x4 conv + LN."""

  def __init__(self, dim: int, epsilon: float, **kwargs):
    super().__init__(**kwargs)
    self.proj = keras.layers.Conv2D(dim, PATCH_SIZE, PATCH_SIZE, padding="valid", name="proj")
    self.norm = keras.layers.LayerNormalization(epsilon=epsilon, name="norm")

  def call(self, images: tf.Tensor) -> tf.Tensor:
    _, height, width, _ = images.shape
    images = tf.pad(images, [[0, 0], [0, -height % PATCH_SIZE], [0, -width % PATCH_SIZE],
                             [0, 0]])
    return self.norm(self.proj(images))


class PatchMerging(keras.layers.Layer):
  """``[B, H, W, C]`` -> ``[B, ceil(H / 2), ceil(W / 2), 2C]``.

  The 2x2 neighbours are concatenated in the order (0, 0), (1, 0), (0, 1), (1, 1)
  as (row, column) offsets (the reference's, which the imported weights assume).
  """

  def __init__(self, dim: int, epsilon: float, **kwargs):
    super().__init__(**kwargs)
    self.norm = keras.layers.LayerNormalization(epsilon=epsilon, name="norm")
    self.reduction = _dense(2 * dim, "reduction", use_bias=False)

  def call(self, x: tf.Tensor) -> tf.Tensor:
    _, height, width, _ = x.shape
    x = tf.pad(x, [[0, 0], [0, height % 2], [0, width % 2], [0, 0]])
    x = tf.concat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                  axis=-1)
    return self.reduction(self.norm(x))


@gin.configurable
class SwinEncoder(base.PixelEncoder):
  """Swin backbone with endpoints named by stride (see the module docstring).

  Input: images ``[batch, height, width, 3]``, any static size.
  Output: ``{"stride4", "stride8", "stride16", "stride32"}`` maps
  ``[batch, ceil(height / s), ceil(width / s), embed_dim * 2^i]``, each after its
  stage's LayerNorm.

  Args:
    variant: "t", "s", "b" or "l"; fills ``embed_dim``, ``depths`` and
      ``num_heads`` left as None.
    embed_dim, depths, num_heads: stage-1 width; blocks and heads per stage.
    window_size: 7 (the ImageNet-1K 224 models), 12 (the ImageNet-22K 384 ones).
    mlp_ratio: MLP hidden width / width.
    drop_path_rate: drop path of the last block (linear from 0 over all blocks);
      0.3 is Mask2Former's for every Swin (cfg.MODEL.SWIN.DROP_PATH_RATE in
      facebookresearch/Mask2Former mask2former/config.py).
    layer_norm_epsilon: of every LayerNorm (PyTorch's default, as the reference).
    input_normalization: convert the [-1, 1] images to ImageNet-normalised ones
      first (``InputNormalization``, values from gin), as the ImageNet and
      Mask2Former weights were trained on.
  """

  def __init__(self, variant: str = "t", embed_dim: Optional[int] = None,
               depths: Optional[Sequence[int]] = None,
               num_heads: Optional[Sequence[int]] = None, window_size: int = 7,
               mlp_ratio: float = 4.0, drop_path_rate: float = 0.3,
               layer_norm_epsilon: float = 1e-5, input_normalization: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if variant not in VARIANTS:
      raise ValueError(f"SwinEncoder.variant must be one of {sorted(VARIANTS)}, "
                       f"got {variant!r}.")
    spec = VARIANTS[variant]
    embed_dim = embed_dim or spec["embed_dim"]
    depths = tuple(depths or spec["depths"])
    num_heads = tuple(num_heads or spec["num_heads"])
    if len(depths) != len(num_heads):
      raise ValueError(f"SwinEncoder: depths {depths} and num_heads {num_heads} must "
                       "have one entry per stage.")
    total = sum(depths)
    rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
    eps = layer_norm_epsilon
    self.input_normalization = (InputNormalization(name="input_normalization")
                                if input_normalization else None)
    self.patch_embed = PatchEmbed(embed_dim, eps, name="patch_embed")
    self.stages: List[List[SwinBlock]] = []
    self.downsamples: List[PatchMerging] = []
    self.norms: List[keras.layers.LayerNormalization] = []
    dims = [embed_dim * 2 ** i for i in range(len(depths))]
    for i, (dim, depth, heads) in enumerate(zip(dims, depths, num_heads)):
      self.stages.append([
          SwinBlock(dim, heads, window_size, (j % 2) * (window_size // 2), mlp_ratio,
                    rates[sum(depths[:i]) + j], eps, name=f"stage{i}_block{j}")
          for j in range(depth)])
      self.norms.append(keras.layers.LayerNormalization(epsilon=eps, name=f"norm{i}"))
      if i + 1 < len(depths):
        self.downsamples.append(PatchMerging(dim, eps, name=f"downsample{i}"))
    self.output_channels = {base.stride_key(PATCH_SIZE * 2 ** i): d
                            for i, d in enumerate(dims)}

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    if self.input_normalization is not None:
      images = self.input_normalization(images)
    x = self.patch_embed(images)
    endpoints = {}
    for i, (blocks, norm) in enumerate(zip(self.stages, self.norms)):
      if i:
        x = self.downsamples[i - 1](x)
      for block in blocks:
        x = block(x, training=training)
      endpoints[base.stride_key(PATCH_SIZE * 2 ** i)] = norm(x)
    return endpoints
