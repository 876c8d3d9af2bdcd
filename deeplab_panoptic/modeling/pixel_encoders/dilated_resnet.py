"""Dilated ResNet pixel encoder from Model Garden, with endpoints named by stride.

DeepLabV3 / DeepLabV3+ (Chen et al., arXiv 1706.05587 Sec. 3.1 and arXiv
1802.02611 Sec. 3.1) keep the last residual stages at a fixed output stride by
replacing their strides with atrous (dilated) convolutions. Model Garden builds
that network (``official.vision.modeling.backbones.DilatedResNet``); this part
only renames its endpoints to the library's ``"stride<s>"`` keys.
"""

from typing import Dict, Optional, Sequence

import gin
import tensorflow as tf
import tf_keras as keras
from official.vision.modeling.backbones import resnet_deeplab as mg_resnet_deeplab

from deeplab_panoptic.modeling import base

STAGE_PREFIX = "stage"
OUTPUT_STRIDES = (8, 16, 32)


def stage_key(stage: int) -> str:
  """The endpoint key of residual stage ``stage`` (2..5): ``"stage<k>"``."""
  return f"{STAGE_PREFIX}{int(stage)}"


def _l2_regularizer(weight_decay: float) -> Optional[keras.regularizers.Regularizer]:
  return keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None


@gin.configurable
class DilatedResNetEncoder(base.PixelEncoder):
  """Model Garden's DeepLab ResNet (bottleneck ResNet-50/101/152/200, dilated).

  Stages 2..5 (conv2_x..conv5_x) run at strides 4, 8, 16, 32 until
  ``output_stride`` is reached; the remaining stages keep that stride with
  dilation rates 2, 4, ... (times ``multigrid`` in the last stage).

  Input: images ``[batch, height, width, 3]`` normalised to [-1, 1].
  Output: ``"stride<s>"`` for s = 4, 8, ... up to ``output_stride``:
  ``[batch, ceil(height / s), ceil(width / s), c_s]``, the last feature made at
  that stride (at ``output_stride``, the final stage's 2048-channel output; at
  4, stage 2's 256 channels). With ``stage_endpoints``, also ``"stage<k>"`` for
  every residual stage k = 2..5 (+ repeats): its output, e.g. ``"stage4"`` (1024
  channels at stride min(16, output_stride)), which mmsegmentation's auxiliary
  FCN head reads. The extra endpoints add no weights and no computation.

  Args:
    model_id: ResNet depth (50, 101, 152, 200).
    output_stride: 8, 16 or 32 (32: no dilation).
    stem_type: "v0" (7x7 conv + max-pool) or "v1" (three 3x3 convs, 64-64-128,
      + max-pool: Model Garden's DeepLabV3+ recipes).
    multigrid: dilation multipliers of the last stage's 3 blocks (arXiv
      1706.05587 Sec. 3.2, e.g. (1, 2, 4)); None: all 1.
    last_stage_repeats: how many times the last stage is repeated (arXiv
      1706.05587 Sec. 3.2 "going deeper"); 1: the plain network.
    resnetd_shortcut, replace_stem_max_pool, se_ratio: Model Garden's ResNet-D
      shortcut, stride-2 conv instead of the stem max-pool, squeeze-excitation.
    init_stochastic_depth_rate: drop path rate of the last stage.
    activation: activation of the blocks.
    use_sync_bn: synchronized batch norm across replicas.
    norm_momentum: batch-norm momentum (Keras convention).
    norm_epsilon: batch-norm epsilon.
    stage_endpoints: also return ``"stage<k>"`` endpoints (see above).
    l2_weight_decay: L2 penalty on the convolution kernels, Model Garden's way
      (a ``regularizers.L2(l2_weight_decay / 2)`` loss, which the trainer adds
      to the total: the gradient of PyTorch SGD's ``weight_decay``); 0: none.
  """

  def __init__(self, model_id: int = 101, output_stride: int = 8, stem_type: str = "v0",
               multigrid: Optional[Sequence[int]] = None, last_stage_repeats: int = 1,
               resnetd_shortcut: bool = False, replace_stem_max_pool: bool = False,
               se_ratio: Optional[float] = None, init_stochastic_depth_rate: float = 0.0,
               activation: str = "relu", use_sync_bn: bool = False,
               norm_momentum: float = 0.99, norm_epsilon: float = 1e-3,
               stage_endpoints: bool = False, l2_weight_decay: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    if output_stride not in OUTPUT_STRIDES:
      raise ValueError(f"DilatedResNetEncoder.output_stride must be one of "
                       f"{OUTPUT_STRIDES}, got {output_stride}.")
    if model_id not in mg_resnet_deeplab.RESNET_SPECS:
      raise ValueError(f"DilatedResNetEncoder.model_id must be one of "
                       f"{sorted(mg_resnet_deeplab.RESNET_SPECS)} (Model Garden's "
                       f"bottleneck DeepLab ResNets), got {model_id}.")
    self._backbone = mg_resnet_deeplab.DilatedResNet(
        model_id=model_id, output_stride=output_stride,
        input_specs=keras.layers.InputSpec(shape=[None, None, None, 3]),
        stem_type=stem_type, resnetd_shortcut=resnetd_shortcut,
        replace_stem_max_pool=replace_stem_max_pool, se_ratio=se_ratio,
        init_stochastic_depth_rate=init_stochastic_depth_rate,
        multigrid=None if multigrid is None else list(multigrid),
        last_stage_repeats=last_stage_repeats, activation=activation,
        use_sync_bn=use_sync_bn, norm_momentum=norm_momentum, norm_epsilon=norm_epsilon,
        kernel_regularizer=_l2_regularizer(l2_weight_decay))
    # Model Garden keys its endpoints by level (log2 of the stride); the entry at
    # log2(output_stride) is the final stage's output.
    outputs = {base.stride_key(2 ** int(level)): tensor
               for level, tensor in self._backbone.output.items()}
    if stage_endpoints:
      outputs.update(self._stage_outputs())
    # A view over the same layers with the renamed endpoints; kept out of
    # attribute tracking so checkpoints see the weights only through
    # ``_backbone`` (a Model Garden checkpoint's ``backbone``).
    self.__dict__["_view"] = keras.Model(self._backbone.inputs, outputs)
    self.output_channels = {k: int(v.shape[-1]) for k, v in outputs.items()
                            if base.stride_of(k) is not None}
    self.stage_channels = {k: int(v.shape[-1]) for k, v in outputs.items()
                           if k.startswith(STAGE_PREFIX)}
    self.output_stride = int(output_stride)

  def _stage_outputs(self) -> Dict[str, tf.Tensor]:
    """``{"stage<k>": output}``: Model Garden closes every block group with a
    ``tf.identity`` named ``block_group_l<k>``, in stage order."""
    marks = [layer.output for layer in self._backbone.layers
             if getattr(layer, "symbol", None) == "identity"]
    if len(marks) < 4:
      raise ValueError("DilatedResNetEncoder: Model Garden's DilatedResNet no longer "
                       f"marks its block groups with tf.identity (found {len(marks)}).")
    return {stage_key(index + 2): tensor for index, tensor in enumerate(marks)}

  @property
  def model_garden_backbone(self) -> keras.Model:
    """The wrapped Model Garden DilatedResNet: what a Model Garden checkpoint's
    ``backbone`` holds (e.g. its ImageNet DeepLab ResNet-101)."""
    return self._backbone

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    return dict(self._view(images, training=training))
