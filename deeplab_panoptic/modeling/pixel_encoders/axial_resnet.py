"""Axial-ResNet pixel encoder of MaX-DeepLab, carrying the memory path.

The encoder is a ResNet whose blocks become axial-attention blocks from a given
original stride on, and whose blocks from another stride on are each followed by
a dual-path transformer layer (MaX-DeepLab-S: axial from stride 16, dual-path
after every stride-32 block, the last stage kept at stride 16). The memory (N
learned slots) starts from a learned tensor and is updated by every dual-path
layer; it leaves the encoder in the endpoint dict under ``MEMORY`` so the pixel
decoder can keep updating it and the transformer-decoder part can read it.
"""

import math
from typing import Dict, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.layers.axial_attention import ResidualBlock, block_widths
from deeplab_panoptic.modeling.layers.dual_path import DualPathConfig

# Endpoint key of the memory path: ``[batch, N, memory_dim]``, activated.
MEMORY = common.MEMORY


def drop_path_rate_at(stride: int, keep_prob: float, schedule: str,
                      beyond_stride: int) -> float:
  """Drop rate of a block by its *original ResNet* stride (deeplab2's schedule).

  ``linear``: keep = 1 - (1 - keep_prob) * (log2(stride) - 1) / 4, i.e. keep_prob
  at stride 32; ``constant``: keep_prob. Blocks below ``beyond_stride`` keep all.
  """
  if stride < beyond_stride or keep_prob >= 1.0:
    return 0.0
  if schedule == "constant":
    return 1.0 - keep_prob
  if schedule == "linear":
    return (1.0 - keep_prob) * (math.log2(stride) - 1) / 4.0
  raise ValueError(f"Unknown drop path schedule {schedule!r}; use 'linear' or 'constant'.")


@gin.configurable
class AxialResNet(base.PixelEncoder):
  """Axial-ResNet (MaX-DeepLab-S backbone) with dual-path transformer layers.

  Stem: 3x3 convs of ``stem_filters`` (the first strided), the last not activated.
  Stage ``i`` has ``num_blocks[i]`` residual blocks of base width ``filters[i]``,
  its first block strided by ``stage_strides[i]``. A block is axial
  when its original input stride is >= ``axial_beyond_stride``; a dual-path layer
  follows a block when its original output stride is >= ``transformer_beyond_stride``.
  Strides beyond ``output_stride`` are suppressed (axial attention is global, so
  no dilation is needed).

  Input: images ``[batch, height, width, 3]`` in [-1, 1] (static size).
  Output: ``{"stride<s>": [batch, H/s, W/s, c]}``, the last (non-activated) feature
  at each stride, and ``MEMORY``: ``[batch, N, memory_dim]`` when dual-path layers
  are present.

  Args:
    num_blocks: blocks per stage.
    filters: base width per stage.
    stem_filters: widths of the stem convs (MaX-S: three, Wide-ResNet: one).
    stage_strides: stride of each stage's first block (Wide-ResNet-41: (1, 2, 2,
      2, 2) with its extra stride-2 stage).
    block_kind: kind of the non-axial blocks ("bottleneck" or "basic").
    expansion: output width = base width * expansion.
    axial_beyond_stride: original stride from which blocks are axial (0: none).
    transformer_beyond_stride: original stride from which blocks are followed by
      a dual-path layer (0: none).
    output_stride: largest actual stride.
    num_heads: axial attention heads.
    axial_key_expansion, axial_value_expansion: axial widths (``block_widths``).
    dual_path: widths of the dual-path layers and memory.
    stage_dual_paths: optional per-stage override of ``dual_path`` (None entries
      use it); MaX-L's stride-16 stage has half-width layers.
    drop_path_keep_prob, drop_path_schedule, drop_path_beyond_stride: see
      ``drop_path_rate_at``.
    activation: activation function.
    stem_kernel_size: kernel of the stem convs (MaX-S: 3; deeplab2's ResNet-50 of
      kMaX: one 7x7 conv, no max-pool).
    learn_memory: whether the encoder owns the learned initial memory; None: only
      when it has dual-path layers (CMT-DeepLab: True, its transformer layers all
      follow the encoder; the second network of an RFN: False, it continues the
      first network's memory).

  ``call`` also takes ``feedback`` (``{"stride<s>": [batch, H/s, W/s, c]}``, added
  to the output of the last block at that stride: the RFN connection) and
  ``initial_memory`` (used instead of the learned memory and passed through when
  the encoder has no dual-path layers); both default to None (no change).
  """

  def __init__(self, num_blocks: Sequence[int] = (3, 4, 6, 3),
               filters: Sequence[int] = (64, 128, 256, 512),
               stem_filters: Sequence[int] = (64, 64, 128),
               stage_strides: Optional[Sequence[int]] = None,
               block_kind: str = "bottleneck", expansion: int = 4,
               axial_beyond_stride: int = 16, transformer_beyond_stride: int = 32,
               output_stride: int = 16, num_heads: int = 8,
               axial_key_expansion: float = 1.0, axial_value_expansion: float = 2.0,
               dual_path: Optional[DualPathConfig] = None,
               stage_dual_paths: Optional[Sequence[Optional[DualPathConfig]]] = None,
               drop_path_keep_prob: float = 1.0, drop_path_schedule: str = "linear",
               drop_path_beyond_stride: int = 16, activation: str = "relu",
               learn_memory: Optional[bool] = None, stem_kernel_size: int = 3, **kwargs):
    super().__init__(**kwargs)
    self._act = conv.get_activation(activation)
    last = len(stem_filters) - 1
    self._stem = [conv.ConvBN(f, stem_kernel_size, 2 if i == 0 else 1,
                              None if i == last else activation, name=f"stem_conv{i + 1}")
                  for i, f in enumerate(stem_filters)]
    self.dual_path = dual_path if dual_path is not None else DualPathConfig()
    stage_strides = tuple(stage_strides or (2,) * len(num_blocks))
    stage_dual_paths = tuple(stage_dual_paths or (None,) * len(num_blocks))
    if not len(num_blocks) == len(filters) == len(stage_strides) == len(stage_dual_paths):
      raise ValueError("AxialResNet: num_blocks, filters, stage_strides and "
                       "stage_dual_paths need one entry per stage, got "
                       f"{num_blocks}, {filters}, {stage_strides}, {stage_dual_paths}.")
    self._blocks = []  # (block, dual-path layer or None, actual stride after it)
    # The last feature at each stride is the endpoint: the stem's, then the blocks'.
    self.output_channels = {base.stride_key(2): int(stem_filters[-1])}
    original, actual = 2, 2
    any_transformer = False
    for i, (n, f, stage_stride, stage_dp) in enumerate(zip(
        num_blocks, filters, stage_strides, stage_dual_paths)):
      dp = stage_dp if stage_dp is not None else self.dual_path
      stage_name = f"stage{i + 6 - len(num_blocks)}"  # ResNet naming: the last is stage5.
      for j in range(n):
        in_original = original
        strides = stage_stride if j == 0 else 1
        if strides > 1:
          original *= strides
          if actual < output_stride:
            actual *= strides
          else:
            strides = 1
        kind = ("axial" if axial_beyond_stride and in_original >= axial_beyond_stride
                else block_kind)
        widths, key_dim = block_widths(kind, f, expansion, axial_key_expansion,
                                       axial_value_expansion)
        rate = drop_path_rate_at(in_original, drop_path_keep_prob, drop_path_schedule,
                                 drop_path_beyond_stride)
        block = ResidualBlock(widths, kind, strides, key_dim, num_heads, activation, rate,
                              name=f"{stage_name}_block{j + 1}")
        dpt = None
        if transformer_beyond_stride and original >= transformer_beyond_stride:
          dpt = dp.make_layer(activation, rate, name=f"{stage_name}_dual_path{j + 1}")
          any_transformer = True
        self._blocks.append((block, dpt, actual))
        self.output_channels[base.stride_key(actual)] = widths[-1]
    self._memory = None
    if (any_transformer if learn_memory is None else learn_memory):
      self._memory = self.add_weight(
          "memory", shape=[1, self.dual_path.num_memory, self.dual_path.memory_dim],
          initializer=keras.initializers.TruncatedNormal(stddev=1.0))

  def call(self, images: tf.Tensor, training=None, feedback=None,
           initial_memory=None) -> Dict[str, tf.Tensor]:
    x = images
    for layer in self._stem:
      x = layer(x, training=training)
    outputs = {"stride2": x}
    memory = initial_memory
    if memory is None and self._memory is not None:
      memory = tf.tile(self._memory, [tf.shape(images)[0], 1, 1])
    last_at_stride = {stride: i for i, (_, _, stride) in enumerate(self._blocks)}
    for i, (block, dpt, stride) in enumerate(self._blocks):
      x = block(x, training=training)
      if dpt is not None:
        x, memory = dpt((x, memory), training=training)
      if feedback and last_at_stride[stride] == i and f"stride{stride}" in feedback:
        x = x + feedback[f"stride{stride}"]
      outputs[f"stride{stride}"] = x
    if memory is not None:
      outputs[MEMORY] = memory
    return outputs
