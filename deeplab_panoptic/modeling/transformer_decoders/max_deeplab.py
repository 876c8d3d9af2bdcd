"""MaX-DeepLab memory head: the memory path's final class and mask embeddings.

In MaX-DeepLab the transformer (the memory path) lives inside the pixel encoder
and decoder as dual-path layers; this part only turns the final memory into the
class and mask embeddings the predictor reads (two-layer FFNs, the second layer
being the predictor's class / mask-kernel projection).
"""

from typing import Dict

import gin
import tensorflow as tf

from deeplab_panoptic.common import MEMORY
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers.dual_path import DenseBN


@gin.configurable
class MaXMemoryHead(base.TransformerDecoder):
  """Memory -> (class embedding, mask embedding): 1x1 + BN + activation each.

  Input: pixel-decoder features holding ``MEMORY``: ``[batch, N, c]``.
  Output: ``(class_embedding [batch, N, dim], mask_embedding [batch, N, dim], [])``;
  MaX-DeepLab has no per-layer auxiliary predictions.

  Args:
    dim: width of both embeddings (deeplab2: 256 for MaX-S, 512 for MaX-L).
    activation: activation function.
  """

  def __init__(self, dim: int = 256, activation: str = "relu", **kwargs):
    super().__init__(**kwargs)
    self._class = DenseBN(dim, activation, name="class_ffn")
    self._mask = DenseBN(dim, activation, name="mask_ffn")

  def call(self, features: Dict[str, tf.Tensor], training=None):
    if MEMORY not in features:
      raise ValueError(f"MaXMemoryHead needs the {MEMORY!r} output of a MaX pixel "
                       f"encoder/decoder; the pixel decoder gives {sorted(features)}.")
    memory = features[MEMORY]
    return (self._class(memory, training=training), self._mask(memory, training=training),
            [])
