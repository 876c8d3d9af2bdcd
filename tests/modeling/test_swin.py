"""Swin pixel encoder: parameter counts, window bookkeeping, XLA.

The outputs against Hugging Face transformers' SwinBackbone are checked in
tests/tools/test_import_swin.py (golden fixture).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_encoders import swin
from deeplab_panoptic.modeling.pixel_encoders.swin import SwinEncoder
from deeplab_panoptic.training import model_summary

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "swin")


def _closed_form_params(embed_dim, depths, num_heads, window, mlp_ratio=4):
  """Mask2Former's Swin backbone counted from the architecture (arXiv 2103.14030).

  Block of width C: two LayerNorms (4C), qkv (3C^2 + 3C), output projection
  (C^2 + C), MLP (2 r C^2 + r C + C), bias table ((2w - 1)^2 heads). Patch
  embedding: 4x4x3 conv to C with bias + LN. Merging a width-C stage: LN(4C) and
  a bias-free 4C -> 2C linear. One LN per output stage; no final norm, no head.
  """
  total = 16 * 3 * embed_dim + embed_dim + 2 * embed_dim
  for i, (depth, heads) in enumerate(zip(depths, num_heads)):
    c = embed_dim * 2 ** i
    block = (4 * c + 3 * c * c + 3 * c + c * c + c + 2 * mlp_ratio * c * c
             + mlp_ratio * c + c + (2 * window - 1) ** 2 * heads)
    total += depth * block + 2 * c
    if i + 1 < len(depths):
      total += 8 * c + 8 * c * c
  return total


def _zeros_creator(next_creator, **kwargs):
  """Creates every variable as zeros: the count needs shapes, not the (slow) draws."""
  shape, dtype = kwargs["shape"], kwargs.get("dtype") or tf.float32
  kwargs["initial_value"] = lambda: tf.zeros(shape, dtype)
  return next_creator(**kwargs)


def _reference_params():
  with open(os.path.join(FIXTURE, "metadata.json")) as f:
    return json.load(f)["reference_params"]


@pytest.mark.parametrize("variant,window,params", [
    # The Swin paper's Tab. 1 counts (28M / 50M / 88M / 197M) hold the 1000-class
    # head and the final norm; e.g. Swin-T: 28,288,354 - 769,000 - 1,536 + 2,880
    # (the four stage norms) = 27,520,698.
    ("t", 7, 27_520_698),
    ("s", 7, 48_838_602),
    ("b", 7, 86_745_016),
    ("b", 12, 86_880_376),
    ("l", 7, 194_998_164),
    ("l", 12, 195_201_204),
])
def test_parameter_counts(variant, window, params):
  with tf.variable_creator_scope(_zeros_creator):
    encoder = SwinEncoder(variant=variant, window_size=window)
    outputs = encoder(tf.zeros([1, 32, 32, 3]))
  ours = model_summary.count_params(encoder.weights)
  spec = swin.VARIANTS[variant]
  assert ours == params
  assert ours == _closed_form_params(spec["embed_dim"], spec["depths"], spec["num_heads"],
                                     window)
  assert ours == _reference_params()[f"{variant}_w{window}"]
  assert encoder.output_channels == {f"stride{4 * 2 ** i}": spec["embed_dim"] * 2 ** i
                                     for i in range(4)}
  for s, c in encoder.output_channels.items():
    assert outputs[s].shape[-1] == c


def test_relative_position_index_hand_worked():
  # Window 2: tokens (0,0) (0,1) (1,0) (1,1); offset (dy, dx) -> (dy + 1) * 3 + dx + 1.
  want = [[4, 3, 1, 0],
          [5, 4, 2, 1],
          [7, 6, 4, 3],
          [8, 7, 5, 4]]
  np.testing.assert_array_equal(swin.relative_position_index(2), want)


def _brute_force_mask(height, width, window, shift):
  """Two tokens of a window may attend iff the shift did not separate them.

  After ``roll(-shift)`` the token at (y, x) came from ((y + s) % H, (x + s) % W);
  a pair is a true neighbour pair iff its original offset equals its offset now.
  """
  ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
  masks = []
  for wy in range(0, height, window):
    for wx in range(0, width, window):
      y = ys[wy:wy + window, wx:wx + window].ravel()
      x = xs[wy:wy + window, wx:wx + window].ravel()
      oy, ox = (y + shift) % height, (x + shift) % width
      same = ((oy[:, None] - oy[None]) == (y[:, None] - y[None])) & (
          (ox[:, None] - ox[None]) == (x[:, None] - x[None]))
      masks.append(np.where(same, 0.0, swin.SHIFT_MASK_VALUE))
  return np.stack(masks)


@pytest.mark.parametrize("height,width,window", [(8, 12, 4), (14, 7, 7), (6, 6, 3)])
def test_shifted_window_mask_against_brute_force(height, width, window):
  got = swin.shifted_window_mask(height, width, window, window // 2)
  np.testing.assert_array_equal(got, _brute_force_mask(height, width, window, window // 2))


def test_window_partition_and_merge():
  x = np.random.default_rng(0).normal(size=(2, 6, 9, 5)).astype(np.float32)
  windows = swin.window_partition(tf.constant(x), 3).numpy()
  assert windows.shape == (2, 6, 9, 5)
  # Window 4 is rows 3-5, columns 3-5 (row-major windows, row-major tokens).
  np.testing.assert_array_equal(windows[:, 4], x[:, 3:6, 3:6].reshape(2, 9, 5))
  np.testing.assert_array_equal(swin.window_merge(tf.constant(windows), 3, 6, 9).numpy(), x)


def _tiny(**kwargs):
  return SwinEncoder(embed_dim=8, depths=(2, 2, 1, 1), num_heads=(1, 2, 2, 4),
                     window_size=3, **kwargs)


def test_any_input_size_and_xla():
  encoder = _tiny(drop_path_rate=0.0)
  images = tf.random.stateless_uniform([2, 41, 53, 3], seed=[1, 2], minval=-1, maxval=1)
  eager = encoder(images, training=False)
  for s, size in ((4, (11, 14)), (8, (6, 7)), (16, (3, 4)), (32, (2, 2))):
    assert eager[f"stride{s}"].shape[1:3] == size
  compiled = tf.function(lambda x: encoder(x, training=False), jit_compile=True)(images)
  for key, value in eager.items():
    np.testing.assert_allclose(compiled[key].numpy(), value.numpy(), rtol=1e-5, atol=1e-5)


def test_drop_path_is_linear_over_depth_and_only_in_training():
  encoder = _tiny(drop_path_rate=0.5)
  rates = [b._drop_path.drop_rate for blocks in encoder.stages for b in blocks]
  np.testing.assert_allclose(rates, np.linspace(0.0, 0.5, 6))
  images = tf.random.stateless_uniform([4, 24, 24, 3], seed=[3, 4], minval=-1, maxval=1)
  first = encoder(images, training=False)["stride32"]
  np.testing.assert_array_equal(encoder(images, training=False)["stride32"].numpy(),
                                first.numpy())
  assert not np.allclose(encoder(images, training=True)["stride32"].numpy(), first.numpy())


def test_bad_configuration_is_one_clear_error():
  with pytest.raises(ValueError, match="SwinEncoder.variant must be one of"):
    SwinEncoder(variant="h")
  with pytest.raises(ValueError, match="one entry per stage"):
    SwinEncoder(depths=(2, 2, 6, 2), num_heads=(3, 6, 12))
  with pytest.raises(ValueError, match="divisible by num_heads"):
    SwinEncoder(embed_dim=10, num_heads=(3, 6, 12, 24))
