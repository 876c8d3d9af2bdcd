"""MobileNetV3 pixel encoder: deeplab2's endpoints and parameter counts."""

import pytest
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_encoders.mobilenet import MobileNetEncoder
from deeplab_panoptic.training import model_summary


@pytest.mark.parametrize("model_id,channels,params", [
    # deeplab2 endpoints and counts (google-research/deeplab2,
    # model/encoder/mobilenet.py): no global pooling and
    # no 1x1 classifier conv (576 -> 1024 / 960 -> 1280) after the stride-32 feature.
    ("MobileNetV3Small", (16, 16, 88, 144, 576), 939_120),
    ("MobileNetV3Large", (16, 72, 120, 672, 960), 2_996_352),
])
def test_endpoints_and_parameter_counts(model_id, channels, params):
  encoder = MobileNetEncoder(model_id=model_id)
  size = 65
  outputs = encoder(tf.zeros([1, size, size, 3]), training=False)
  assert sorted(outputs) == ["stride16", "stride2", "stride32", "stride4", "stride8"]
  for s, c in zip((2, 4, 8, 16, 32), channels):
    assert outputs[f"stride{s}"].shape == (1, -(-size // s), -(-size // s), c)
    assert encoder.output_channels[f"stride{s}"] == c
  count = model_summary.count_params(encoder.weights)
  assert count == params

