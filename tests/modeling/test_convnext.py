"""ConvNeXt pixel encoder: block maths, endpoint sizes, drop-path schedule, params."""

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_encoders.convnext import ConvNeXtBlock, ConvNeXtEncoder
from deeplab_panoptic.training import model_summary


def _expected_params(dims, depths):
  """Closed-form ConvNeXt parameter count (no head, no final norm)."""
  total = 4 * 4 * 3 * dims[0] + dims[0] + 2 * dims[0]           # stem conv + LN
  for i in range(1, 4):                                          # LN + 2x2 conv
    total += 2 * dims[i - 1] + 2 * 2 * dims[i - 1] * dims[i] + dims[i]
  for d, n in zip(dims, depths):
    block = (49 * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + d
    total += n * block
  return total


def test_block_matches_numpy():
  dim, size = 4, 6
  block = ConvNeXtBlock(dim, layer_scale_init=0.5)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, size, size, dim)).astype(np.float32)
  y = block(tf.constant(x)).numpy()
  dw, dw_b = block._dw.depthwise_kernel.numpy()[..., 0], block._dw.bias.numpy()
  w1, b1 = block._fc1.kernel.numpy(), block._fc1.bias.numpy()
  w2, b2 = block._fc2.kernel.numpy(), block._fc2.bias.numpy()
  padded = np.pad(x[0], ((3, 3), (3, 3), (0, 0)))
  conv = np.zeros((size, size, dim), np.float32)
  for i in range(size):
    for j in range(size):
      conv[i, j] = np.sum(padded[i:i + 7, j:j + 7] * dw, axis=(0, 1)) + dw_b
  norm = (conv - conv.mean(-1, keepdims=True)) / np.sqrt(conv.var(-1, keepdims=True) + 1e-6)
  hidden = norm @ w1 + b1
  from scipy.special import erf  # pylint: disable=g-import-not-at-top
  hidden = 0.5 * hidden * (1 + erf(hidden / np.sqrt(2)))        # exact GELU
  expected = x[0] + 0.5 * (hidden @ w2 + b2)
  np.testing.assert_allclose(y[0], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("padding,size,expected", [
    (True, 65, (17, 9, 5, 3)),     # (size - 1) / s + 1, as 1281 -> 321 / 161 / 81 / 41
    (False, 64, (16, 8, 4, 2)),
])
def test_endpoints(padding, size, expected):
  dims = (8, 16, 24, 32)
  encoder = ConvNeXtEncoder(dims=dims, depths=(1, 1, 2, 1),
                            zero_padding_for_downstream=padding)
  outputs = encoder(tf.zeros([2, size, size, 3]))
  assert sorted(outputs) == ["stride16", "stride32", "stride4", "stride8"]
  for s, h, d in zip((4, 8, 16, 32), expected, dims):
    assert outputs[f"stride{s}"].shape == (2, h, h, d)
  assert encoder.output_channels == {"stride4": 8, "stride8": 16, "stride16": 24,
                                     "stride32": 32}
  assert model_summary.count_params(encoder.weights) == _expected_params(dims, (1, 1, 2, 1))


def test_drop_path_is_linear_over_blocks():
  encoder = ConvNeXtEncoder(dims=(8, 8, 8, 8), depths=(1, 2, 1, 1), drop_path_rate=0.4)
  rates = [block._drop_path.drop_rate for stage in encoder._stages for block in stage]
  np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3, 0.4])


@pytest.mark.parametrize("variant,params", [
    # facebookresearch/ConvNeXt convnext_tiny is 28,589,128 params with its head
    # (LN 768 + 768 x 1000 linear): 28,589,128 - 1,536 - 769,000 = 27,818,592, the
    # deeplab2 encoder count (google-research/deeplab2, model/encoder/convnext.py),
    # as are S / B / L.
    ("tiny", 27_818_592), ("small", 49_453_152), ("base", 87_564_416),
    ("large", 196_227_264),
])
def test_variant_parameter_counts(variant, params):
  # The closed form is checked against built encoders above; here the variant's
  # layers (read from the unbuilt encoder: creating 28-196M weights is slow) give
  # the published counts.
  encoder = ConvNeXtEncoder(variant=variant)
  dims = [stage[0]._dim for stage in encoder._stages]
  depths = [len(stage) for stage in encoder._stages]
  assert _expected_params(dims, depths) == params


def test_unknown_variant():
  with pytest.raises(ValueError, match="variant"):
    ConvNeXtEncoder(variant="huge")
