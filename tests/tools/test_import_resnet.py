"""import_resnet: torchvision / timm-named ResNet weights -> TorchvisionResNetEncoder.

tests/fixtures/resnet_timm (tools/golden/resnet_golden.py, timm 1.0.31) holds a tiny
random timm ``ResNet`` (torchvision's names and layout; stages of 1, 2, 1, 1
bottlenecks, outputs 16, 24, 32, 40, a 7-class head) and its four stage outputs on a
61 x 77 image. The transformers naming is checked end to end by
tests/modeling/test_torchvision_resnet.py on the Mask2Former fixture.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from safetensors.numpy import load_file

from deeplab_panoptic.modeling.layers.input_normalization import InputNormalization
from deeplab_panoptic.modeling.pixel_encoders.torchvision_resnet import (
    TorchvisionResNetEncoder)
from deeplab_panoptic.tools import import_resnet

FIXTURE = os.path.join(os.path.dirname(__file__), "..", "fixtures", "resnet_timm")
STRIDES = (4, 8, 16, 32)


@pytest.fixture(name="setup", scope="module")
def _setup():
  with open(os.path.join(FIXTURE, "metadata.json")) as f:
    metadata = json.load(f)
  config = metadata["config"]
  encoder = TorchvisionResNetEncoder(
      depths=config["layers"], stem_width=metadata["stem_width"],
      widths=[4 * c for c in config["channels"]])
  encoder(tf.zeros([1, 32, 32, 3]))
  weights = load_file(os.path.join(FIXTURE, "model.safetensors"))
  with np.load(os.path.join(FIXTURE, "golden.npz")) as data:
    golden = {k: data[k] for k in data.files}
  normalize = InputNormalization(mean=metadata["image_mean"], std=metadata["image_std"])
  return encoder, weights, golden, normalize


def test_features_equal_timm(setup):
  encoder, weights, golden, normalize = setup
  used = import_resnet.load_resnet_state(encoder, weights)   # naming found: torchvision
  outputs = encoder(normalize(tf.constant(golden["image"])), training=False)
  for i, stride in enumerate(STRIDES):
    want = golden[f"stage{i + 1}"]
    got = outputs[f"stride{stride}"].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-5, err_msg=f"stride {stride}")
  left = set(weights) - set(used)
  assert left == {"fc.weight", "fc.bias"} | {k for k in weights
                                               if k.endswith(".num_batches_tracked")}


def test_prefix_and_errors_are_named(setup):
  encoder, weights, _, _ = setup
  prefixed = {"backbone." + k: v for k, v in weights.items()}
  assert import_resnet.detect_naming(prefixed, "backbone.") == "torchvision"
  with pytest.raises(ValueError, match=r"neither embedder.embedder.convolution.weight .*"
                     r"nor conv1.weight"):
    import_resnet.load_resnet_state(encoder, prefixed)
  broken = dict(weights)
  del broken["layer2.1.bn3.running_var"]
  with pytest.raises(ValueError, match="layer2.1.bn3.running_var is missing"):
    import_resnet.load_resnet_state(encoder, broken)
  broken = dict(weights, **{"layer2.1.conv2.weight": weights["layer2.1.conv2.weight"][:, :1]})
  with pytest.raises(ValueError, match=r"layer2.1.conv2.weight \(6, 1, 3, 3\) does not fit"):
    import_resnet.load_resnet_state(encoder, broken)
  broken = dict(weights, **{"layer5.0.conv1.weight": np.zeros([1, 1, 1, 1], np.float32)})
  with pytest.raises(ValueError, match=r"no place in the encoder.*layer5.0.conv1.weight"):
    import_resnet.load_resnet_state(encoder, broken)
  with pytest.raises(ValueError, match="embedder.embedder.convolution.weight is missing"):
    import_resnet.load_resnet_state(encoder, weights, naming="hf")
