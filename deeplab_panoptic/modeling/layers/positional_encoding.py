"""Sine positional encodings (DETR / Deformable DETR), static per feature size."""

import math
from typing import Sequence, Tuple

import numpy as np
import tensorflow as tf


def sine_positional_encoding(height: int, width: int, num_features: int = 128,
                             temperature: float = 10000.0, normalize: bool = True,
                             offset: float = -0.5, scale: float = 2.0 * math.pi,
                             eps: float = 1e-6) -> tf.Tensor:
  """2-D sine encoding of an unpadded ``height x width`` map.

  As Deformable DETR's ``PositionEmbeddingSine(normalize=True)``: the 1-based
  running index along each axis, offset by ``offset`` and divided by its last value
  (+ eps), times ``scale``; then sin/cos at ``num_features`` frequencies per axis,
  interleaved; y features first, then x.

  The library pads images only at the bottom/right with a fixed crop, so the
  encoding is computed for the whole map (a constant, which keeps shapes static).

  Args:
    height, width: python ints, the map size.
    num_features: features per axis (128: 256 in all).
    temperature: frequency base.
    normalize: normalise the positions to [0, scale].
    offset: added to the 1-based index before normalising (-0.5: pixel centres).
    scale: range of the normalised positions.
    eps: added to the denominator.

  Returns:
    float32 [height, width, 2 * num_features].
  """
  y = np.arange(1, height + 1, dtype=np.float64)
  x = np.arange(1, width + 1, dtype=np.float64)
  if normalize:
    y = (y + offset) / (height + eps) * scale
    x = (x + offset) / (width + eps) * scale
  dim_t = temperature ** (2 * (np.arange(num_features) // 2) / num_features)
  pos_y = y[:, None] / dim_t                                  # [H, F]
  pos_x = x[:, None] / dim_t                                  # [W, F]
  pos_y = np.stack([np.sin(pos_y[:, 0::2]), np.cos(pos_y[:, 1::2])], axis=2).reshape(
      height, num_features)
  pos_x = np.stack([np.sin(pos_x[:, 0::2]), np.cos(pos_x[:, 1::2])], axis=2).reshape(
      width, num_features)
  encoding = np.concatenate([
      np.broadcast_to(pos_y[:, None, :], (height, width, num_features)),
      np.broadcast_to(pos_x[None, :, :], (height, width, num_features))], axis=-1)
  return tf.constant(encoding.astype(np.float32))


def level_positional_encodings(shapes: Sequence[Tuple[int, int]], dim: int,
                               offset: float = -0.5) -> tf.Tensor:
  """Sine encodings of every level, flattened and concatenated: ``[S, dim]``.

  ``offset`` as in :func:`sine_positional_encoding` (-0.5: Deformable DETR; 0:
  Mask2Former's pixel decoder, which normalises the 1-based index itself).
  """
  return tf.concat([tf.reshape(sine_positional_encoding(h, w, dim // 2, offset=offset),
                               [h * w, dim])
                    for h, w in shapes], axis=0)
