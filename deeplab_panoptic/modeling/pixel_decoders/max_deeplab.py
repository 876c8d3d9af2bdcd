"""MaX-DeepLab pixel decoder: extra stages after the encoder, memory carried along.

Each stage runs at one stride: it fuses the running feature with the last (up to
two) features already produced at that stride (encoder endpoints count), then
applies residual blocks, each optionally followed by a dual-path transformer
layer that keeps updating the memory. MaX-DeepLab-S is the stages
(16: axial + dual-path, 8: bottleneck, 4: bottleneck); MaX-DeepLab-L's stacked
hourglass is a longer list of strides (8, 4, 8, 16, 16, 8, 4 ...), where the
second stride-16 stage continues the first without a fusion (``fuse``), as
deeplab2's extra decoder continues its backbone decoder.
"""

from typing import Dict, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.axial_attention import ResidualBlock, block_widths
from deeplab_panoptic.modeling.layers.dual_path import DualPathConfig
from deeplab_panoptic.ops import resize

MEMORY = common.MEMORY
# Output key of the feature kept apart for the semantic head (``semantic_stage``);
# bind ``SemanticHead.input_key`` to it.
SEMANTIC_FEATURE = common.SEMANTIC_FEATURE


class MaXResizedFuse(keras.layers.Layer):
  """Sums inputs of different size and width at a target size and width.

  An input whose width differs from ``filters`` is activated and projected by a
  1x1 conv + BN, strided by 2 when it is exactly twice the target size; any
  remaining size difference is closed by bilinear (aligned-corner) resizing.

  Inputs: list of ``[batch, h_i, w_i, c_i]`` and the target ``(h, w)``; output
  ``[batch, h, w, filters]`` (non-activated).
  """

  def __init__(self, filters: int, activation: str, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self._act = conv.get_activation(activation)
    self._projections = None

  def _make_projections(self, features: Sequence[tf.Tensor], size) -> None:
    projections = []
    for i, x in enumerate(features):
      if int(x.shape[-1]) == self.filters:
        projections.append(None)
        continue
      # A 2x larger input (2n or 2n - 1 for aligned corners) is strided by the conv.
      strided = tuple(x.shape[1:3]) in ((2 * size[0], 2 * size[1]),
                                        (2 * size[0] - 1, 2 * size[1] - 1))
      projections.append(conv.ConvBN(self.filters, 1, 2 if strided else 1,
                                     name=f"proj{i}"))
    self._projections = projections

  def call(self, features: Sequence[tf.Tensor], size=None, training=None) -> tf.Tensor:
    if self._projections is None:
      self._make_projections(features, size)
    out = 0.0
    for x, proj in zip(features, self._projections):
      if proj is not None:
        x = proj(self._act(x), training=training)
      # Aligned corners, deeplab2's choice (exact for sizes 2^k n + 1).
      out = out + resize.resize_bilinear(x, size, align_corners=True)
    return out


@gin.configurable
class MaXPixelDecoder(base.PixelDecoder):
  """Extra decoder stages of MaX-DeepLab (stacked hourglass when strides repeat).

  Input: encoder endpoints ``{"stride<s>": ..., MEMORY: [batch, N, c]}``.
  Output: ``{"stride<s>": [batch, H/s, W/s, c_s]}`` with the last (non-activated)
  output at each stride, ``MEMORY`` updated by the stages' dual-path layers, and
  ``SEMANTIC_FEATURE`` (the output of stage ``semantic_stage``) when that is set.

  Args:
    strides: stride of each stage, in order.
    num_blocks: blocks per stage.
    filters: base width per stage (see ``layers/axial_attention.block_widths``).
    block_kinds: "bottleneck", "axial" or "basic" per stage.
    transformer: whether each block of a stage is followed by a dual-path layer.
    expansion: output width = base width * expansion.
    num_heads: axial attention heads.
    axial_key_expansion, axial_value_expansion: axial widths (``block_widths``).
    dual_path: widths of the dual-path layers (must match the encoder's memory).
    drop_path_rates: drop path per stage.
    activation: activation function.
    semantic_stage: index of the stage whose output is also returned as
      ``SEMANTIC_FEATURE`` (MaX-DeepLab-L: the first extra-decoder stride-4 stage,
      deeplab2's ``feature_semantic``, kept apart from the panoptic feature).
    fuse: per stage, whether it starts by fusing (``MaXResizedFuse``). False: the
      stage has no fusion layer; it takes the running feature as it is, which must
      be at the stage's stride (the encoder output, or the previous stage's), and
      its output takes that feature's place among the features kept at the stride
      for later fusions. deeplab2 builds its first extra-decoder stage so: MaX-L's
      ``_decoder_stage4_extra`` continues the backbone decoder's stride-16 stage
      (and MaX-S's ``_stage5_extra`` the encoder output, where a fusion of the one
      running feature is the identity). None: all True.
    fuse_skips: per stage with a fusion, whether it fuses the last (up to two)
      features already produced at its stride with the running feature (MaX) or
      resizes / projects the running feature alone (CMT-DeepLab's second
      stride-16 stage, ``cmt_deeplab.py``). None: all True.
  """

  def __init__(self, strides: Sequence[int] = (16, 8, 4),
               num_blocks: Sequence[int] = (1, 1, 1),
               filters: Sequence[int] = (512, 128, 64),
               block_kinds: Sequence[str] = ("axial", "bottleneck", "bottleneck"),
               transformer: Sequence[bool] = (True, False, False),
               expansion: int = 4, num_heads: int = 8,
               axial_key_expansion: float = 1.0, axial_value_expansion: float = 2.0,
               dual_path: Optional[DualPathConfig] = None,
               drop_path_rates: Optional[Sequence[float]] = None,
               activation: str = "relu", semantic_stage: Optional[int] = None,
               fuse: Optional[Sequence[bool]] = None,
               fuse_skips: Optional[Sequence[bool]] = None, **kwargs):
    super().__init__(**kwargs)
    n = len(strides)
    if semantic_stage is not None and not 0 <= semantic_stage < n:
      raise ValueError(f"MaXPixelDecoder.semantic_stage={semantic_stage} is not a stage "
                       f"index (0..{n - 1}).")
    self.semantic_stage = semantic_stage
    drop_path_rates = drop_path_rates or (0.0,) * n
    fuse = tuple(bool(f) for f in fuse) if fuse is not None else (True,) * n
    fuse_skips = (tuple(bool(f) for f in fuse_skips) if fuse_skips is not None
                  else (True,) * n)
    if not all(len(a) == n for a in (num_blocks, filters, block_kinds, transformer,
                                      drop_path_rates, fuse, fuse_skips)):
      raise ValueError("MaXPixelDecoder: strides, num_blocks, filters, block_kinds, "
                       "transformer, drop_path_rates, fuse and fuse_skips need one entry "
                       "per stage.")
    for i in range(1, n):
      if not fuse[i] and strides[i] != strides[i - 1]:
        raise ValueError(f"MaXPixelDecoder: stage {i} has fuse=False, so it continues the "
                         f"previous stage and needs its stride ({strides[i - 1]}), got "
                         f"{strides[i]}.")
    self.fuse = fuse
    self.fuse_skips = fuse_skips
    self.strides = tuple(strides)
    dual_path = dual_path if dual_path is not None else DualPathConfig()
    self._stages = []
    self.output_channels = {}  # the last stage at each stride gives its output
    for i, (s, nb, f, kind, tr, rate, fuses) in enumerate(zip(
        strides, num_blocks, filters, block_kinds, transformer, drop_path_rates, fuse)):
      widths, key_dim = block_widths(kind, f, expansion, axial_key_expansion,
                                     axial_value_expansion)
      fuse_layer = (MaXResizedFuse(widths[-1], activation, name=f"stage{i}_s{s}_fuse")
                    if fuses else None)
      blocks = []
      for j in range(nb):
        block = ResidualBlock(widths, kind, 1, key_dim, num_heads, activation, rate,
                              name=f"stage{i}_s{s}_block{j + 1}")
        dpt = (dual_path.make_layer(activation, rate, name=f"stage{i}_s{s}_dual_path{j + 1}")
               if tr else None)
        blocks.append((block, dpt))
      self._stages.append((s, fuse_layer, blocks))
      self.output_channels[base.stride_key(s)] = widths[-1]

  def call(self, endpoints: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    produced = {}
    for key, value in endpoints.items():
      if key.startswith("stride"):
        produced.setdefault(int(key[len("stride"):]), []).append(value)
    memory = endpoints.get(MEMORY)
    x = endpoints[f"stride{max(produced)}"]
    outputs = {}
    for index, ((s, fuse, blocks), skips) in enumerate(zip(self._stages, self.fuse_skips)):
      if s not in produced:
        raise ValueError(f"{type(self).__name__} stage at stride {s} has no encoder endpoint "
                         f"'stride{s}' to size it; the encoder gives {sorted(endpoints)}.")
      if fuse is None:
        if produced[s][-1] is not x:
          raise ValueError(f"MaXPixelDecoder stage {index} (fuse=False) continues the "
                           f"running feature, which is not at its stride {s}.")
      else:
        size = tuple(produced[s][-1].shape[1:3])
        # The running feature and the last (up to two) features made at this stride.
        others = [f for f in produced[s][-2:] if f is not x] if skips else []
        x = fuse([x] + others, size=size, training=training)
      for block, dpt in blocks:
        x = block(x, training=training)
        if dpt is not None:
          if memory is None:
            raise ValueError(f"{type(self).__name__} has dual-path layers but the encoder "
                             f"gives no {MEMORY!r} endpoint (AxialResNet.learn_memory).")
          x, memory = dpt((x, memory), training=training)
      if fuse is None:
        produced[s][-1] = x  # takes the place of the feature it continued
      else:
        produced[s].append(x)
      outputs[f"stride{s}"] = x
      if index == self.semantic_stage:
        outputs[SEMANTIC_FEATURE] = x
    if memory is not None:
      outputs[MEMORY] = memory
    return outputs
