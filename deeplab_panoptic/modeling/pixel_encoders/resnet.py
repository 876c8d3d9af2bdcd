"""ResNet pixel encoders from Model Garden, with endpoints named by stride."""

from typing import Dict

import gin
import tensorflow as tf
import tf_keras as keras
from official.vision.modeling.backbones import resnet as mg_resnet

from deeplab_panoptic.modeling import base


@gin.configurable
class ResNetEncoder(base.PixelEncoder):
  """Model Garden ResNet (``official.vision.modeling.backbones.ResNet``).

  Input: images ``[batch, height, width, 3]`` normalised to [-1, 1].
  Output: ``{"stride4", "stride8", "stride16", "stride32"}`` feature maps
  ``[batch, ceil(height / s), ceil(width / s), channels_s]``, plus ``"stride2"``
  (the stem's activated output before its max-pool) with ``stride2_endpoint``.

  Args:
    model_id: ResNet depth (18, 26, 34, 50, 101, 152, 200).
    depth_multiplier: channel width multiplier (0.25 gives a CPU-sized net).
    stem_type: "v0" (7x7 conv + max-pool) or "v1" (ResNet-D stem).
    init_stochastic_depth_rate: drop path rate of the last block.
    activation: activation of the blocks.
    use_sync_bn: synchronized batch norm across replicas.
    norm_momentum: batch-norm momentum (Keras convention).
    frozen_stages: 0 trains everything; k >= 1 freezes the stem and the first k
      residual stages (mmdet's ``frozen_stages``; Panoptic SegFormer and
      Deformable DETR freeze the stem and stage 1). Frozen layers are
      non-trainable, so they leave ``trainable_variables`` (the optimizer never
      sees them) and their batch norms run on the moving statistics.
    freeze_batch_norm: every batch norm of the backbone is frozen (mmdet's
      ``norm_cfg.requires_grad=False`` + ``norm_eval=True``, torchvision's
      FrozenBatchNorm2d): gamma/beta are not trained and the moving statistics
      are used and never updated, in training too.
    stride2_endpoint: also return the stem's stride-2 feature, for decoders with
      a stride-2 stage (kMaX-DeepLab / ReMaX on Cityscapes; deeplab2's ResNet
      gives it as its first endpoint). The same layers and weights: the
      endpoint adds no parameters and no computation.
  """

  def __init__(self, model_id: int = 50, depth_multiplier: float = 1.0,
               stem_type: str = "v0", init_stochastic_depth_rate: float = 0.0,
               activation: str = "relu", use_sync_bn: bool = False,
               norm_momentum: float = 0.99, frozen_stages: int = 0,
               freeze_batch_norm: bool = False, stride2_endpoint: bool = False, **kwargs):
    super().__init__(**kwargs)
    self._backbone = mg_resnet.ResNet(
        model_id=model_id, input_specs=keras.layers.InputSpec(shape=[None, None, None, 3]),
        depth_multiplier=depth_multiplier, stem_type=stem_type,
        init_stochastic_depth_rate=init_stochastic_depth_rate, activation=activation,
        use_sync_bn=use_sync_bn, norm_momentum=norm_momentum,
        # A non-trainable Keras BatchNormalization normalises with its moving
        # statistics and leaves them unchanged, even when called with training=True.
        bn_trainable=not freeze_batch_norm)
    specs = self._backbone.output_specs
    self.output_channels = {f"stride{2 ** int(k)}": int(v[-1]) for k, v in specs.items()}
    self._with_stride2 = None
    if stride2_endpoint:
      # The functional model's layers in order: the stem ends at its first max-pool.
      layers = self._backbone.layers
      pool = next(i for i, l in enumerate(layers)
                  if isinstance(l, keras.layers.MaxPooling2D))
      stem = layers[pool - 1].output
      outputs = {f"stride{2 ** int(k)}": v for k, v in self._backbone.output.items()}
      outputs["stride2"] = stem
      # A second view over the same layers; kept out of attribute tracking so
      # checkpoints see the weights only through ``_backbone``, as without it.
      self.__dict__["_with_stride2"] = keras.Model(self._backbone.inputs, outputs)
      self.output_channels["stride2"] = int(stem.shape[-1])
    num_stages = len(specs)
    if not 0 <= frozen_stages <= num_stages:
      raise ValueError(f"ResNetEncoder.frozen_stages must be in [0, {num_stages}], "
                       f"got {frozen_stages}.")
    if frozen_stages:
      # The functional model lists its layers in topological order: the stem,
      # then each stage's blocks up to the stage's 'block_group_l<k+1>' marker.
      last = f"block_group_l{frozen_stages + 1}"
      for layer in self._backbone.layers:
        layer.trainable = False
        if layer.name == last:
          break

  @property
  def model_garden_backbone(self) -> keras.Model:
    """The wrapped Model Garden ResNet: what a Model Garden checkpoint's ``backbone`` holds."""
    return self._backbone

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    if self._with_stride2 is not None:
      return dict(self._with_stride2(images, training=training))
    features = self._backbone(images, training=training)
    return {f"stride{2 ** int(k)}": v for k, v in features.items()}
