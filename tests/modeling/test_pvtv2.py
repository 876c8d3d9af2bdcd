"""PVTv2 pixel encoders: endpoints and parameter counts of the released models."""

import pytest
import tensorflow as tf

from deeplab_panoptic.modeling.pixel_encoders.pvtv2 import PVTv2Encoder
from deeplab_panoptic.training import model_summary


@pytest.mark.parametrize("variant,params", [
    # whai362/PVT pvt_v2_b0 / b2 without the 1000-class head (3.67M / 25.36M with it).
    ("b0", 3_409_760),
    ("b2", 24_849_856),
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
