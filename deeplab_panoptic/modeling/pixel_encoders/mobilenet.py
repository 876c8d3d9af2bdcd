"""MobileNetV3 pixel encoders from Model Garden, with endpoints named by stride."""

from typing import Dict

import gin
import tensorflow as tf
import tf_keras as keras
from official.vision.modeling.backbones import mobilenet as mg_mobilenet

from deeplab_panoptic.modeling import base


@gin.configurable
class MobileNetEncoder(base.PixelEncoder):
  """Model Garden MobileNetV3 (``official.vision.modeling.backbones.MobileNet``).

  The endpoints are deeplab2's (google-research/deeplab2, model/encoder/mobilenet.py):
  at strides 4, 8 and 16 the *expanded depthwise output* of the last block of that
  stride (wider than the block output: MobileNetV3-Small 16 / 88 / 144, -Large 72 /
  120 / 672 channels), at stride 32 the 1x1 conv after the last block (576 / 960),
  and at stride 2 the stem. The global pooling and the 1x1 classifier conv after it are
  not part of the encoder (their weights are never created).

  Input: images ``[batch, height, width, 3]`` normalised to [-1, 1].
  Output: ``{"stride2", "stride4", "stride8", "stride16", "stride32"}`` feature
  maps ``[batch, ceil(height / s), ceil(width / s), channels_s]`` (activated).

  Args:
    model_id: "MobileNetV3Small" or "MobileNetV3Large" (any Model Garden MobileNet
      with inverted-bottleneck blocks and a 1x1 conv before global pooling).
    filter_size_scale: channel multiplier.
    stochastic_depth_drop_rate: drop path rate of the inverted bottlenecks.
    use_sync_bn: synchronized batch norm across replicas.
    norm_momentum: batch-norm momentum (Keras convention).
    norm_epsilon: batch-norm epsilon.
  """

  def __init__(self, model_id: str = "MobileNetV3Large", filter_size_scale: float = 1.0,
               stochastic_depth_drop_rate: float = 0.0, use_sync_bn: bool = False,
               norm_momentum: float = 0.99, norm_epsilon: float = 1e-3, **kwargs):
    super().__init__(**kwargs)
    full = mg_mobilenet.MobileNet(
        model_id=model_id, filter_size_scale=filter_size_scale,
        input_specs=keras.layers.InputSpec(shape=[None, None, None, 3]),
        stochastic_depth_drop_rate=stochastic_depth_drop_rate, use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        output_intermediate_endpoints=True)
    outputs = {}
    outputs_by_name = dict(full.output)  # Model Garden's {"<level>[/depthwise]": tensor}.
    for level in range(2, 5):
      key = f"{level}/depthwise"
      if key not in outputs_by_name:
        raise ValueError(f"MobileNetEncoder: Model Garden {model_id} has no endpoint "
                         f"{key!r} (has {sorted(outputs_by_name)}).")
      outputs[f"stride{2 ** level}"] = outputs_by_name[key]
    # The layers are named block_group_<fn>_<index>: the stem is the first convbn,
    # the stride-32 feature is the convbn right before global pooling.
    layer_names = [layer.name for layer in full.layers]
    pooling = [n for n in layer_names if n.startswith("block_group_gpooling_")]
    if not pooling:
      raise ValueError(f"MobileNetEncoder: {model_id} has no global pooling block.")
    last_index = int(pooling[0].rsplit("_", 1)[1]) - 1
    outputs["stride32"] = full.get_layer(f"block_group_convbn_{last_index}").output
    outputs["stride2"] = full.get_layer("block_group_convbn_0").output
    # A functional model over the wanted tensors only: layers after them (pooling,
    # classifier conv) are dropped together with their weights.
    self._backbone = keras.Model(full.inputs, outputs, name=model_id)
    self.output_channels = {k: int(v.shape[-1]) for k, v in outputs.items()}

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    return dict(self._backbone(images, training=training))
