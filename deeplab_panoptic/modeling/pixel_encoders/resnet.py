"""ResNet pixel encoders from Model Garden, with endpoints named by stride."""

from typing import Dict

import gin
import tensorflow as tf
import tf_keras as keras
from official.vision.modeling.backbones import resnet as mg_resnet


@gin.configurable
class ResNetEncoder(keras.layers.Layer):
  """Model Garden ResNet (``official.vision.modeling.backbones.ResNet``).

  Input: images ``[batch, height, width, 3]`` normalised to [-1, 1].
  Output: ``{"stride4", "stride8", "stride16", "stride32"}`` feature maps
  ``[batch, ceil(height / s), ceil(width / s), channels_s]``.

  Args:
    model_id: ResNet depth (18, 26, 34, 50, 101, 152, 200).
    depth_multiplier: channel width multiplier (0.25 gives a CPU-sized net).
    stem_type: "v0" (7x7 conv + max-pool) or "v1" (ResNet-D stem).
    init_stochastic_depth_rate: drop path rate of the last block.
    activation: activation of the blocks.
    use_sync_bn: synchronized batch norm across replicas.
    norm_momentum: batch-norm momentum (Keras convention).
  """

  def __init__(self, model_id: int = 50, depth_multiplier: float = 1.0,
               stem_type: str = "v0", init_stochastic_depth_rate: float = 0.0,
               activation: str = "relu", use_sync_bn: bool = False,
               norm_momentum: float = 0.99, **kwargs):
    super().__init__(**kwargs)
    self._backbone = mg_resnet.ResNet(
        model_id=model_id,
        input_specs=keras.layers.InputSpec(shape=[None, None, None, 3]),
        depth_multiplier=depth_multiplier,
        stem_type=stem_type,
        init_stochastic_depth_rate=init_stochastic_depth_rate,
        activation=activation,
        use_sync_bn=use_sync_bn,
        norm_momentum=norm_momentum)
    specs = self._backbone.output_specs
    self.output_channels = {f"stride{2 ** int(k)}": int(v[-1]) for k, v in specs.items()}

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    features = self._backbone(images, training=training)
    return {f"stride{2 ** int(k)}": v for k, v in features.items()}
