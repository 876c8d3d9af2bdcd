"""PVTv2 pixel encoders: endpoints and parameter counts of the released models."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_encoders.pvtv2 import PVTv2Encoder
from deeplab_panoptic.modeling.pixel_encoders.pvtv2 import adaptive_average_pool2d
from deeplab_panoptic.training import model_summary


@pytest.mark.parametrize("variant,params", [
    # whai362/PVT pvt_v2_b0 / b2 without the 1000-class head (3.67M / 25.36M with it).
    ("b0", 3_409_760),
    ("b2", 24_849_856),
    # pvt_v2_b2_li: 22.55M with the 513,000-weight head (published 22.6M). By hand
    # from B2: per block, the k x k SR conv (stages 1-3) becomes a 1x1 conv, and
    # stage 4 gains a 1x1 conv + LN: -774,144 - 983,040 - 1,843,200 + 791,040.
    ("b2_li", 22_040_512),
])
def test_parameter_counts_and_endpoints(variant, params):
  encoder = PVTv2Encoder(variant=variant)
  outputs = encoder(tf.zeros([1, 64, 96, 3]))
  dims = (32, 64, 160, 256) if variant == "b0" else (64, 128, 320, 512)
  for i, s in enumerate((4, 8, 16, 32)):
    assert outputs[f"stride{s}"].shape == (1, 64 // s, 96 // s, dims[i])
  assert model_summary.count_params(encoder.weights) == params


def test_unknown_variant():
  with pytest.raises(ValueError, match="variant"):
    PVTv2Encoder(variant="b9")


def test_adaptive_average_pool_hand_worked():
  # PyTorch's bins for 5 -> 3: [0, 2), [1, 4), [3, 5); for 3 -> 4: [0,1), [0,2), [1,3), [2,3).
  x = tf.constant(np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1))
  x = tf.tile(x, [1, 1, 3, 1])  # [1, 5, 3, 1], constant along W
  y = adaptive_average_pool2d(x, 3).numpy()[0, :, :, 0]
  np.testing.assert_allclose(y, [[0.5] * 3, [2.0] * 3, [3.5] * 3], rtol=1e-6)
  z = adaptive_average_pool2d(tf.constant([[[[1.0], [2.0], [4.0]]]]), 4)  # [1, 1, 3, 1]
  np.testing.assert_allclose(z.numpy()[0, 0, :, 0], [1.0, 1.5, 3.0, 4.0], rtol=1e-6)


def test_adaptive_average_pool_equals_avg_pool_when_divisible():
  x = tf.random.stateless_normal([2, 14, 21, 5], seed=[1, 2])
  expected = tf.nn.avg_pool2d(x, ksize=(2, 3), strides=(2, 3), padding="VALID")
  np.testing.assert_allclose(adaptive_average_pool2d(x, 7).numpy(), expected.numpy(),
                             rtol=1e-5, atol=1e-6)


def test_linear_attention_keys_do_not_grow_with_the_image():
  """B2-Li: keys/values are a 7x7 grid at every stage, so the logits are [.., 7 * 7]."""
  encoder = PVTv2Encoder(variant="b2_li", depths=(1, 1, 1, 1))
  images = tf.random.stateless_uniform([1, 96, 128, 3], seed=[3, 4])
  outputs = encoder(images)
  assert outputs["stride32"].shape == (1, 3, 4, 512)
  attention = encoder._stages[0][0]._attn
  reduced = attention._reduce(tf.zeros([1, 24, 32, 64]))
  assert reduced.shape == (1, 7, 7, 64)
  # The FFN of a linear block has the ReLU: negative fc1 outputs cannot pass.
  ffn = encoder._stages[0][0]._mlp
  x = tf.random.stateless_normal([1, 4, 4, 64], seed=[5, 6])
  hidden = tf.nn.relu(ffn._fc1(x))
  manual = ffn._fc2(tf.nn.gelu(ffn._dw(hidden), approximate=False))
  np.testing.assert_allclose(ffn(x).numpy(), manual.numpy(), rtol=1e-5, atol=1e-6)
