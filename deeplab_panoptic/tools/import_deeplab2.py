r"""Imports a deeplab2 MaX-DeepLab-S/L or kMaX-DeepLab checkpoint into our model.

    python -m deeplab_panoptic.tools.import_deeplab2 \
      --gin_file=configs/datasets/coco.gin \
      --gin_file=configs/models/kmax_r50_deeplab2.gin \
      --gin_param='NUM_CENTERS = 128' \
      --deeplab2_checkpoint=/path/to/kmax_r50/ckpt-150000 \
      --output_dir=/tmp/kmax_r50_imported

(run from the repository root, like main.py). The gin files configure our model
exactly as the deeplab2 one (docs/deployment.md, "Importing deeplab2
checkpoints": kMaX with deeplab2's ResNet-50, Axial-ResNet-50 or ConvNeXt, and
MaX-DeepLab-S and -L); the tool builds it on a dummy image of
``ExperimentConfig.eval_input_size``, reads the deeplab2 checkpoint with
``tf.train.load_checkpoint``, assigns every variable through the name table
below, and writes our checkpoint to ``--output_dir`` (``ckpt-0``, the layout
``main.py --mode=eval|export --model_dir=`` restores).

It stops with an error naming the variables when one of our inference variables
has no source in the checkpoint, or when a shape disagrees. deeplab2 variables it
does not use (the training-only auxiliary semantic decoder and head, optimizer
slots, the step counter) are listed in the report.

Name table (deeplab2 object path -> ours; ``{i}`` counts from 0, ``{j}`` from 1).
Conv1D kernels ``[1, in, out]`` become Dense kernels ``[in, out]`` and per-head
batch-norm parameters ``[1, heads, 1, depth]`` become ``[heads * depth]`` (same
element order, so a reshape); every other value is copied as is, except the class
bias (below).

| deeplab2 | ours (MaskTransformer) |
|---|---|
| ``encoder/_stem`` | ``pixel_encoder._stem[0]`` (ResNet: one 7x7 ConvBN; MaX-L's wide ResNet: one 3x3) |
| ``encoder/_stem/_conv1_bn_act``, ``_conv2_bn_act``, ``_conv3_bn`` | ``pixel_encoder._stem[0..2]`` (Axial-ResNet: InceptionSTEM) |
| ``encoder/downsample_layers/{i}/layer_with_weights-{k}`` | ConvNeXt ``pixel_encoder._downsamples[i]`` (conv + LN, or LN + conv) |
| ``encoder/stages/{i}/layer_with_weights-{j}/{depthwise_conv,norm,pointwise_conv1,pointwise_conv2,layer_scale}`` | ConvNeXt block ``_stages[i][j]`` (``_dw`` kernel ``[7, 7, 1, d]`` -> ``[7, 7, d, 1]``, ``_norm``, ``_fc1``, ``_fc2``, ``_gamma``) |
| ``encoder/_stage{k}/_block{j}/_conv{1,2,3}_bn[_act]``, ``_shortcut``, ``_attention/_{height,width}_axis/...`` | ``pixel_encoder`` block ``stage{k}_block{j}`` (``_first``, ``_middle``, ``_last``, ``_shortcut``; basic blocks ``_conv1_bn_act``, ``_conv2_bn``; MaX-L has ``_stage1`` too) |
| ``pixel_decoder/_backbone_norms/{i}`` | ``pixel_decoder._norms[i]`` (stride 32 first) |
| ``pixel_decoder/_stages/{i}/_block{j}`` | ``pixel_decoder._stages[i][j-1]`` |
| ``pixel_decoder/_skip_connections/{i}/_resized_conv_bn1`` / ``2`` | ``pixel_decoder._fuses[i+1]`` projection of the coarser feature / of the encoder skip |
| ``transformer_decoder/cluster_centers`` | ``transformer_decoder._centers`` |
| ``transformer_decoder/_kmax_decoder/{i}/_block1_transformer/`` ``_memory_conv1_bn_act``, ``_pixel_conv1_bn_act``, ``_pixel_v_conv_bn``, ``_kmeans_memory_batch_norm_retrieved_value``, ``_kmeans_memory_conv3_bn``, ``_memory_qkv_conv_bn``, ``_memory_attention/_batch_norm_{similarity,retrieved_value}``, ``_memory_conv3_bn``, ``_memory_ffn_conv{1_bn_act,2_bn}``, ``_auxiliary_clustering_predictor/`` | layer ``i``: ``_center_in(+_bn)``, ``_pixel_in``, ``_pixel_value``, ``_update_bn``, ``_update_out(+_bn)``, ``_self_attention._qkv(+_bn)``, ``._similarity_bn``, ``._value_bn``, ``_attn_out(+_bn)``, ``_ffn_in(+_bn)``, ``_ffn_out(+_bn)``, ``_predictor`` |
| ``transformer_decoder/_{class,mask}_embedding_projection`` | ``transformer_decoder._{class,mask}_embedding(+_bn)`` |
| MaX: ``encoder/_stage{k}/_block{j}_transformer/...`` | the dual-path layer after block ``stage{k}_block{j}`` (same sub-layer names) |
| MaX: ``encoder/memory_feature`` | ``pixel_encoder._memory`` |
| MaX: ``encoder/{group}/_block{j}[_transformer]``, ``encoder/{group}_resized_fuse/_{resized,strided}_conv_bn{k}`` | ``pixel_decoder`` stage's block ``j`` (and dual-path layer) and its fusion's projection of input ``k-1`` (running feature first; ``strided``: 1x1 stride-2 conv of a 2x larger input) |
| MaX decoder groups, in order: MaX-S ``_stage5_extra``, ``_decoder_stage{1,2}_extra``; MaX-L ``_decoder_stage{1..4}`` (backbone decoder), ``_decoder_stage4_extra``, ``_decoder_stage{5..10}_extra`` | ``pixel_decoder`` stages 0, 1, ... (the group without a fusion is our stage with ``fuse`` False; MaX-S's first stage may fuse the encoder output alone, an identity) |
| MaX: ``encoder/_{class,mask}_feature_extra`` | ``transformer_decoder._class``, ``._mask`` (``MaXMemoryHead``) |
| ``pixel_space_head/conv_block/_conv1_bn_act/_{depthwise,pointwise}``, ``pixel_space_head/final_conv``, ``pixel_space_feature_batch_norm``, ``transformer_mask_head``, ``transformer_class_head/_conv``, ``pixel_space_mask_batch_norm`` | ``predictor._pixel_conv``, ``._pixel_proj``, ``._pixel_bn``, ``._mask_kernel(+_bn)``, ``._class``, ``._mask_logit_bn`` |

deeplab2 adds the void prior ``log((C - 1) * 0.9 / 0.1)`` to the last class
logit at run time; our class layer holds it in its bias, so it is added to the
imported bias.
"""

import dataclasses
import math
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.training.init_checkpoint import resolve_checkpoint_path

# deeplab2's fixed void prior probability (decoder/max_deeplab.add_bias_towards_void).
DEEPLAB2_VOID_PRIOR = 0.9
_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# Keys of a deeplab2 training checkpoint that hold no model weight.
_NON_MODEL_PREFIXES = ("_CHECKPOINTABLE_OBJECT_GRAPH", "global_step", "optimizer",
                       "backbone_optimizer", "save_counter")


def _reshape(value: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  return np.reshape(value, shape)


def _void_bias(value: np.ndarray, shape: Sequence[int]) -> np.ndarray:
  """Class bias: deeplab2's run-time void prior folded into the last entry."""
  value = np.array(np.reshape(value, shape), dtype=np.float32)
  value[-1] += math.log((value.shape[-1] - 1) * DEEPLAB2_VOID_PRIOR /
                        (1.0 - DEEPLAB2_VOID_PRIOR))
  return value


def _void_bias_inverse(value: np.ndarray) -> np.ndarray:
  value = np.array(value, dtype=np.float32)
  value[-1] -= math.log((value.shape[-1] - 1) * DEEPLAB2_VOID_PRIOR /
                        (1.0 - DEEPLAB2_VOID_PRIOR))
  return value


@dataclasses.dataclass
class Entry:
  """One variable of ours and its deeplab2 source.

  ``d2_shape`` is the deeplab2 shape when it differs from ours (Conv1D kernels,
  per-head batch norms), None when equal.
  """
  variable: tf.Variable
  key: str
  transform: Callable[[np.ndarray, Sequence[int]], np.ndarray] = _reshape
  d2_shape: Optional[Tuple[int, ...]] = None


class _Table:
  """Collects ``Entry``s while walking our model."""

  def __init__(self):
    self.entries: List[Entry] = []

  def add(self, variable, key, transform=_reshape, d2_shape=None):
    self.entries.append(Entry(variable, key, transform,
                              None if d2_shape is None else tuple(d2_shape)))

  def bn(self, layer, prefix: str, d2_shape=None):
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
      var = getattr(layer, name)
      if var is not None:
        self.add(var, f"{prefix}/{name}", d2_shape=d2_shape)

  def conv_bn(self, layer, prefix: str, conv1d: bool = False):
    """Our ConvBN (Conv2D or separable) <- deeplab2 Conv2DSame / Conv1D / separable."""
    if layer._depthwise is not None:  # pylint: disable=protected-access
      self.add(layer._depthwise.depthwise_kernel,  # pylint: disable=protected-access
               f"{prefix}/_depthwise/_depthwise_conv/depthwise_kernel")
      self.bn(layer._depthwise_bn, f"{prefix}/_depthwise/_batch_norm")  # pylint: disable=protected-access
      prefix = f"{prefix}/_pointwise"
    kernel = layer._conv.kernel  # pylint: disable=protected-access
    shape = None
    if conv1d:
      shape = (1,) + tuple(kernel.shape[2:])
    self.add(kernel, f"{prefix}/_conv/kernel", d2_shape=shape)
    if layer._conv.use_bias:  # pylint: disable=protected-access
      self.add(layer._conv.bias, f"{prefix}/_conv/bias")  # pylint: disable=protected-access
    if layer._bn is not None:  # pylint: disable=protected-access
      self.bn(layer._bn, f"{prefix}/_batch_norm")  # pylint: disable=protected-access

  def dense_bn(self, dense, bn, prefix: str):
    """Our Dense + BN <- deeplab2 Conv1D (kernel ``[1, in, out]``) + BN."""
    self.add(dense.kernel, f"{prefix}/_conv/kernel", d2_shape=(1,) + tuple(dense.kernel.shape))
    if bn is not None:
      self.bn(bn, f"{prefix}/_batch_norm")


def _axial_attention(t: _Table, layer, prefix: str):
  for axis_name, axis in (("height", layer._height_axis), ("width", layer._width_axis)):  # pylint: disable=protected-access
    p = f"{prefix}/_{axis_name}_axis"
    t.add(axis.qkv_kernel, f"{p}/qkv_kernel")
    t.add(axis.query_rpe, f"{p}/_query_rpe/embeddings")
    t.add(axis.key_rpe, f"{p}/_key_rpe/embeddings")
    t.add(axis.value_rpe, f"{p}/_value_rpe/embeddings")
    t.bn(axis._bn_qkv, f"{p}/_batch_norm_qkv")  # pylint: disable=protected-access
    t.bn(axis._bn_similarity, f"{p}/_batch_norm_similarity")  # pylint: disable=protected-access
    t.bn(axis._bn_output, f"{p}/_batch_norm_retrieved_output")  # pylint: disable=protected-access


def _residual_block(t: _Table, block, prefix: str):
  """Our ResidualBlock / conv.BottleneckBlock <- deeplab2 axial_blocks.AxialBlock."""
  from deeplab_panoptic.modeling.layers import conv  # pylint: disable=g-import-not-at-top
  if isinstance(block, conv.BottleneckBlock):
    t.conv_bn(block._conv1, f"{prefix}/_conv1_bn_act")  # pylint: disable=protected-access
    t.conv_bn(block._conv2, f"{prefix}/_conv2_bn_act")  # pylint: disable=protected-access
    t.conv_bn(block._conv3, f"{prefix}/_conv3_bn")  # pylint: disable=protected-access
  elif block.kind == "basic":
    t.conv_bn(block._first, f"{prefix}/_conv1_bn_act")  # pylint: disable=protected-access
    t.conv_bn(block._last, f"{prefix}/_conv2_bn")  # pylint: disable=protected-access
  else:
    t.conv_bn(block._first, f"{prefix}/_conv1_bn_act")  # pylint: disable=protected-access
    if block.kind == "axial":
      _axial_attention(t, block._middle, f"{prefix}/_attention")  # pylint: disable=protected-access
    else:
      t.conv_bn(block._middle, f"{prefix}/_conv2_bn_act")  # pylint: disable=protected-access
    t.conv_bn(block._last, f"{prefix}/_conv3_bn")  # pylint: disable=protected-access
  if block._shortcut is not None:  # pylint: disable=protected-access
    t.conv_bn(block._shortcut, f"{prefix}/_shortcut")  # pylint: disable=protected-access


def _predictor(t: _Table, predictor, prefix: str):
  """Our MaskTransformerPredictor <- deeplab2 decoder/max_deeplab.MaXDeepLab."""
  t.conv_bn(predictor._pixel_conv, f"{prefix}pixel_space_head/conv_block/_conv1_bn_act")  # pylint: disable=protected-access
  t.add(predictor._pixel_proj.kernel, f"{prefix}pixel_space_head/final_conv/kernel")  # pylint: disable=protected-access
  t.add(predictor._pixel_proj.bias, f"{prefix}pixel_space_head/final_conv/bias")  # pylint: disable=protected-access
  t.bn(predictor._pixel_bn, f"{prefix}pixel_space_feature_batch_norm")  # pylint: disable=protected-access
  t.dense_bn(predictor._mask_kernel, predictor._mask_kernel_bn, f"{prefix}transformer_mask_head")  # pylint: disable=protected-access
  kernel = predictor._class.kernel  # pylint: disable=protected-access
  t.add(kernel, f"{prefix}transformer_class_head/_conv/kernel",
        d2_shape=(1,) + tuple(kernel.shape))
  t.add(predictor._class.bias, f"{prefix}transformer_class_head/_conv/bias", _void_bias)  # pylint: disable=protected-access
  t.bn(predictor._mask_logit_bn, f"{prefix}pixel_space_mask_batch_norm")  # pylint: disable=protected-access


def _dense_bn_layer(t: _Table, layer, prefix: str):
  """Our dual_path.DenseBN <- deeplab2 Conv1D + BN."""
  t.dense_bn(layer._dense, layer._bn, prefix)  # pylint: disable=protected-access


def _dual_path(t: _Table, layer, prefix: str):
  """Our DualPathTransformerLayer <- deeplab2 DualPathTransformerLayer (same names)."""
  for name in ("memory_conv1", "pixel_conv1", "memory_qkv", "pixel_qkv", "memory_conv3",
               "pixel_conv3"):
    suffix = {"memory_conv1": "_bn_act", "pixel_conv1": "_bn_act", "memory_qkv": "_conv_bn",
              "pixel_qkv": "_conv_bn", "memory_conv3": "_bn", "pixel_conv3": "_bn"}[name]
    _dense_bn_layer(t, getattr(layer, f"_{name}"), f"{prefix}/_{name}{suffix}")
  _dense_bn_layer(t, layer._ffn1, f"{prefix}/_memory_ffn_conv1_bn_act")  # pylint: disable=protected-access
  _dense_bn_layer(t, layer._ffn2, f"{prefix}/_memory_ffn_conv2_bn")  # pylint: disable=protected-access
  for name in ("memory_attention", "pixel_attention"):
    attention = getattr(layer, f"_{name}")
    t.bn(attention._bn_similarity, f"{prefix}/_{name}/_batch_norm_similarity")  # pylint: disable=protected-access
    t.bn(attention._bn_value, f"{prefix}/_{name}/_batch_norm_retrieved_value")  # pylint: disable=protected-access


def _deeplab2_decoder_stages(backbone_stacks: int, extra_stacks: int, output_stride: int,
                             high_resolution_stride: int) -> List[Tuple[int, str, Optional[str]]]:
  """deeplab2's MaX decoder stages in call order: ``(stride, block group, fusion)``.

  Follows ``AxialResNet.call_stacked_decoder``: the backbone decoder's stages
  ``_decoder_stage{n}`` (fusion ``_decoder_stage{n}_resized_fuse``) until its
  ``backbone_stacks``-th return to ``output_stride``; there the extra decoder
  starts with a group that has no fusion (``_stage5_extra`` when there is no
  backbone decoder, else ``_decoder_stage{n}_extra`` right after the backbone's
  stage ``n``), then ``_decoder_stage{n}_extra`` with
  ``_decoder_stage{n}_extra_resized_fuse`` down to ``high_resolution_stride``,
  bouncing back to ``output_stride`` until ``backbone_stacks + extra_stacks``.
  """
  stages = []
  backbone = backbone_stacks != 0
  if not backbone:
    stages.append((output_stride, "_stage5_extra", None))
  total = backbone_stacks + extra_stacks
  stack, stride, n, down = 0, output_stride, 0, True
  while stack < total or stride > high_resolution_stride:
    n += 1
    stride = stride // 2 if down else stride * 2
    if stride == output_stride:
      stack += 1
      down = True
    if backbone:
      stages.append((stride, f"_decoder_stage{n}", f"_decoder_stage{n}_resized_fuse"))
      if stride == output_stride and stack == backbone_stacks:
        backbone = False
        stages.append((stride, f"_decoder_stage{n}_extra", None))
    else:
      stages.append((stride, f"_decoder_stage{n}_extra",
                     f"_decoder_stage{n}_extra_resized_fuse"))
    if stride == high_resolution_stride:
      down = False
  return stages


def _max_pixel_decoder(t: _Table, decoder):
  """Our MaXPixelDecoder <- deeplab2's stacked decoder.

  MaX-S: extra stages at strides 16, 8, 4; MaX-L: the backbone decoder 8, 4, 8,
  16, then the extra hourglass 16, 8, 4, 8, 16, 8, 4. Our stages are matched to
  deeplab2's block groups in call order; the stage of ours without a fusion
  (``MaXPixelDecoder.fuse``) is deeplab2's first extra-decoder group. deeplab2's
  projection of fusion input ``k`` is ``_strided_conv_bn{k+1}`` (1x1 stride-2
  conv of a 2x larger input) or ``_resized_conv_bn{k+1}``.
  """
  stages = decoder._stages  # pylint: disable=protected-access
  strides = [s for s, _, _ in stages]
  continues = []
  for i, (s, fuse, _) in enumerate(stages):
    if fuse is None:
      continues.append(True)
    elif i == 0 and fuse._projections == [None]:  # pylint: disable=protected-access
      # Fusing the encoder output alone is the identity: deeplab2's _stage5_extra, as
      # long as no later stage fuses with the encoder output (ours keeps it, theirs not).
      if strides[1:].count(s):
        raise NotImplementedError(
            "import_deeplab2: the first decoder stage fuses the stride-16 encoder output "
            "and later stride-16 stages fuse again; deeplab2's _stage5_extra replaces "
            "that output. Build ours with MaXPixelDecoder.fuse[0] = False.")
      continues.append(True)
    else:
      continues.append(False)
  if continues.count(True) != 1:
    raise NotImplementedError(
        "import_deeplab2: deeplab2's MaX decoder has exactly one stage without a fusion "
        f"(the start of its extra decoder); ours has {continues.count(True)} "
        f"(MaXPixelDecoder.fuse = {decoder.fuse}; MaX-L's second stride-16 stage has "
        "none, configs/models/max_deeplab_l.gin).")
  start = continues.index(True)
  output_stride = strides[start]
  backbone_stacks = strides[:start].count(output_stride)
  extra_stacks = strides[start + 1:].count(output_stride)
  expected = _deeplab2_decoder_stages(backbone_stacks, extra_stacks, output_stride,
                                      min(strides))
  ours = list(zip(strides, continues))
  theirs = [(s, fuse_name is None) for s, _, fuse_name in expected]
  if ours != theirs:
    raise NotImplementedError(
        "import_deeplab2: our decoder's (stride, no fusion) stages "
        f"{ours} are not deeplab2's for {backbone_stacks} backbone and {extra_stacks} "
        f"extra decoder stacks: {theirs}.")
  for (_, fuse, blocks), (_, name, fuse_name) in zip(stages, expected):
    if fuse_name is not None:
      for k, proj in enumerate(fuse._projections or []):  # pylint: disable=protected-access
        if proj is not None:
          kind = "strided" if proj._conv.strides[0] == 2 else "resized"  # pylint: disable=protected-access
          t.conv_bn(proj, f"encoder/{fuse_name}/_{kind}_conv_bn{k + 1}")
    for j, (block, dpt) in enumerate(blocks):
      _residual_block(t, block, f"encoder/{name}/_block{j + 1}")
      if dpt is not None:
        _dual_path(t, dpt, f"encoder/{name}/_block{j + 1}_transformer")


def _max_memory_head(t: _Table, head):
  _dense_bn_layer(t, head._class, "encoder/_class_feature_extra")  # pylint: disable=protected-access
  _dense_bn_layer(t, head._mask, "encoder/_mask_feature_extra")  # pylint: disable=protected-access


def _kmax_layer(t: _Table, layer, prefix: str):
  t.dense_bn(layer._center_in, layer._center_in_bn, f"{prefix}/_memory_conv1_bn_act")  # pylint: disable=protected-access
  t.conv_bn(layer._pixel_in, f"{prefix}/_pixel_conv1_bn_act", conv1d=True)  # pylint: disable=protected-access
  t.conv_bn(layer._pixel_value, f"{prefix}/_pixel_v_conv_bn", conv1d=True)  # pylint: disable=protected-access
  t.bn(layer._update_bn, f"{prefix}/_kmeans_memory_batch_norm_retrieved_value")  # pylint: disable=protected-access
  t.dense_bn(layer._update_out, layer._update_out_bn, f"{prefix}/_kmeans_memory_conv3_bn")  # pylint: disable=protected-access
  attn = layer._self_attention  # pylint: disable=protected-access
  t.dense_bn(attn._qkv, attn._qkv_bn, f"{prefix}/_memory_qkv_conv_bn")  # pylint: disable=protected-access
  if attn._similarity_bn is None:  # pylint: disable=protected-access
    raise ValueError("deeplab2's kMaX self-attention normalises its logits: build ours with "
                     "the similarity batch norm (MultiHeadSelfAttention default).")
  t.bn(attn._similarity_bn, f"{prefix}/_memory_attention/_batch_norm_similarity")  # pylint: disable=protected-access
  heads = attn._heads  # pylint: disable=protected-access
  depth = attn._value_dim // heads  # pylint: disable=protected-access
  t.bn(attn._value_bn, f"{prefix}/_memory_attention/_batch_norm_retrieved_value",  # pylint: disable=protected-access
       d2_shape=(1, heads, 1, depth))
  t.dense_bn(layer._attn_out, layer._attn_out_bn, f"{prefix}/_memory_conv3_bn")  # pylint: disable=protected-access
  t.dense_bn(layer._ffn_in, layer._ffn_in_bn, f"{prefix}/_memory_ffn_conv1_bn_act")  # pylint: disable=protected-access
  t.dense_bn(layer._ffn_out, layer._ffn_out_bn, f"{prefix}/_memory_ffn_conv2_bn")  # pylint: disable=protected-access
  _predictor(t, layer._predictor, f"{prefix}/_auxiliary_clustering_predictor/_")  # pylint: disable=protected-access


def _convnext_encoder(t: _Table, encoder):
  """Our ConvNeXtEncoder <- deeplab2 pixel_encoder/convnext.ConvNeXt (Keras Sequentials)."""
  for i, layers in enumerate(encoder._downsamples):  # pylint: disable=protected-access
    weighted = [l for l in layers if l.weights]  # conv + LN (stem) or LN + conv
    for k, layer in enumerate(weighted):
      p = f"encoder/downsample_layers/{i}/layer_with_weights-{k}"
      if isinstance(layer, keras.layers.LayerNormalization):
        t.add(layer.gamma, f"{p}/gamma")
        t.add(layer.beta, f"{p}/beta")
      else:
        t.add(layer.kernel, f"{p}/kernel")
        t.add(layer.bias, f"{p}/bias")
  for i, blocks in enumerate(encoder._stages):  # pylint: disable=protected-access
    for j, block in enumerate(blocks):
      p = f"encoder/stages/{i}/layer_with_weights-{j}"
      # deeplab2's depthwise conv is a grouped Conv2D: kernel [7, 7, 1, dim].
      dw = block._dw  # pylint: disable=protected-access
      t.add(dw.depthwise_kernel, f"{p}/depthwise_conv/kernel",
            d2_shape=tuple(dw.depthwise_kernel.shape[:2]) + (1, dw.depthwise_kernel.shape[2]))
      t.add(dw.bias, f"{p}/depthwise_conv/bias")
      t.add(block._norm.gamma, f"{p}/norm/gamma")  # pylint: disable=protected-access
      t.add(block._norm.beta, f"{p}/norm/beta")  # pylint: disable=protected-access
      for ours, name in ((block._fc1, "pointwise_conv1"), (block._fc2, "pointwise_conv2")):  # pylint: disable=protected-access
        t.add(ours.kernel, f"{p}/{name}/kernel")
        t.add(ours.bias, f"{p}/{name}/bias")
      if block._gamma is not None:  # pylint: disable=protected-access
        t.add(block._gamma, f"{p}/layer_scale", d2_shape=(1, 1, 1, block._dim))  # pylint: disable=protected-access


def _encoder(t: _Table, encoder):
  from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import AxialResNet  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.pixel_encoders.convnext import ConvNeXtEncoder  # pylint: disable=g-import-not-at-top
  if isinstance(encoder, ConvNeXtEncoder):
    _convnext_encoder(t, encoder)
    return
  if not isinstance(encoder, AxialResNet):
    raise NotImplementedError(
        f"import_deeplab2 maps deeplab2's (Axial-)ResNet pixel encoders; ours is "
        f"{type(encoder).__name__}.")
  stem = encoder._stem  # pylint: disable=protected-access
  if len(stem) == 1:  # deeplab2 'resnet': one 7x7 conv
    t.conv_bn(stem[0], "encoder/_stem")
  elif len(stem) == 3:  # deeplab2 'resnet_beta' (Axial-ResNet, MaX-DeepLab): InceptionSTEM
    for conv_bn, name in zip(stem, ("_conv1_bn_act", "_conv2_bn_act", "_conv3_bn")):
      t.conv_bn(conv_bn, f"encoder/_stem/{name}")
  else:
    raise NotImplementedError("import_deeplab2: deeplab2 stems have 1 ('resnet') or 3 "
                              f"('resnet_beta') convs; this encoder has {len(stem)}.")
  for block, dpt, _ in encoder._blocks:  # pylint: disable=protected-access
    stage, index = block.name.split("_block")
    _residual_block(t, block, f"encoder/_{stage}/_block{index}")
    if dpt is not None:
      _dual_path(t, dpt, f"encoder/_{stage}/_block{index}_transformer")
  if encoder._memory is not None:  # pylint: disable=protected-access
    t.add(encoder._memory, "encoder/memory_feature")  # pylint: disable=protected-access


def _kmax_pixel_decoder(t: _Table, decoder):
  for i, norm in enumerate(decoder._norms):  # pylint: disable=protected-access
    t.add(norm.gamma, f"pixel_decoder/_backbone_norms/{i}/gamma")
    t.add(norm.beta, f"pixel_decoder/_backbone_norms/{i}/beta")
  for i, blocks in enumerate(decoder._stages):  # pylint: disable=protected-access
    for j, block in enumerate(blocks):
      _residual_block(t, block, f"pixel_decoder/_stages/{i}/_block{j + 1}")
  for i, fuse in enumerate(decoder._fuses[1:]):  # pylint: disable=protected-access
    # Ours fuses [encoder skip, coarser feature]; deeplab2 [coarser feature, skip].
    skip_proj, prev_proj = fuse._projections  # pylint: disable=protected-access
    if prev_proj is not None:
      t.conv_bn(prev_proj, f"pixel_decoder/_skip_connections/{i}/_resized_conv_bn1")
    if skip_proj is not None:
      t.conv_bn(skip_proj, f"pixel_decoder/_skip_connections/{i}/_resized_conv_bn2")


def _kmax_transformer_decoder(t: _Table, decoder):
  t.add(decoder._centers, "transformer_decoder/cluster_centers")  # pylint: disable=protected-access
  for i, (_, layer) in enumerate(decoder._layers):  # pylint: disable=protected-access
    _kmax_layer(t, layer, f"transformer_decoder/_kmax_decoder/{i}/_block1_transformer")
  t.dense_bn(decoder._class_embedding, decoder._class_embedding_bn,  # pylint: disable=protected-access
             "transformer_decoder/_class_embedding_projection")
  t.dense_bn(decoder._mask_embedding, decoder._mask_embedding_bn,  # pylint: disable=protected-access
             "transformer_decoder/_mask_embedding_projection")


def mapping_table(model: keras.Model) -> List[Entry]:
  """Every inference variable of a built kMaX / MaX ``MaskTransformer`` with its deeplab2 key.

  Raises:
    NotImplementedError: for parts with no deeplab2 mapping here.
  """
  from deeplab_panoptic.modeling.pixel_decoders.kmax import KMaXPixelDecoder  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import MaXPixelDecoder  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.transformer_decoders.kmax import KMaXTransformerDecoder  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.transformer_decoders.max_deeplab import MaXMemoryHead  # pylint: disable=g-import-not-at-top
  t = _Table()
  if (isinstance(model.pixel_decoder, KMaXPixelDecoder) and
      isinstance(model.transformer_decoder, KMaXTransformerDecoder)):
    _encoder(t, model.pixel_encoder)
    _kmax_pixel_decoder(t, model.pixel_decoder)
    _kmax_transformer_decoder(t, model.transformer_decoder)
  elif (isinstance(model.pixel_decoder, MaXPixelDecoder) and
        isinstance(model.transformer_decoder, MaXMemoryHead)):
    _encoder(t, model.pixel_encoder)
    _max_pixel_decoder(t, model.pixel_decoder)
    _max_memory_head(t, model.transformer_decoder)
  else:
    raise NotImplementedError(
        "import_deeplab2 maps kMaX-DeepLab (KMaXPixelDecoder + KMaXTransformerDecoder) and "
        "MaX-DeepLab-S/L (MaXPixelDecoder + MaXMemoryHead); got "
        f"{type(model.pixel_decoder).__name__} + {type(model.transformer_decoder).__name__}.")
  _predictor(t, model.predictor, "")
  return t.entries


def _inference_variables(model: keras.Model) -> List[tf.Variable]:
  skip = set()
  for layer in model.training_only_layers:
    skip.update(id(v) for v in layer.weights)
  return [v for v in model.weights if id(v) not in skip]


def _normalise_key(key: str) -> str:
  return key[:-len(_SUFFIX)] if key.endswith(_SUFFIX) else key


@dataclasses.dataclass
class ImportReport:
  """What an import did: counts and the names left over on either side."""
  assigned: int
  assigned_params: int
  unused_checkpoint_keys: List[str]

  def summary(self) -> str:
    lines = [f"assigned {self.assigned} variables ({self.assigned_params} values)",
             f"deeplab2 variables not used: {len(self.unused_checkpoint_keys)}"]
    lines += [f"  {k}" for k in self.unused_checkpoint_keys]
    return "\n".join(lines)


def import_checkpoint(model: keras.Model, checkpoint: str) -> ImportReport:
  """Assigns a deeplab2 kMaX / MaX-DeepLab checkpoint to a built model of ours.

  Args:
    model: a built ``MaskTransformer`` configured like the deeplab2 model.
    checkpoint: deeplab2 checkpoint prefix (or a directory holding one).

  Returns:
    ImportReport.

  Raises:
    FileNotFoundError: no checkpoint at ``checkpoint``.
    ValueError: variables of ours with no source in the checkpoint, a mapping
      that leaves some of our inference variables out, or shape mismatches; each
      named.
  """
  checkpoint = resolve_checkpoint_path(checkpoint, "--deeplab2_checkpoint")
  try:
    reader = tf.train.load_checkpoint(checkpoint)
  except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
    raise FileNotFoundError(f"Cannot read a TF checkpoint at {checkpoint!r}: {e}") from e
  keys = {_normalise_key(k): k for k in reader.get_variable_to_shape_map()}

  entries = mapping_table(model)
  mapped_ids = {id(e.variable) for e in entries}
  left_out = [v.name for v in _inference_variables(model) if id(v) not in mapped_ids]
  if left_out:
    raise ValueError("import_deeplab2: the mapping table leaves these variables of our "
                     f"model without a source ({len(left_out)}): {left_out[:20]}")

  missing = [e.key for e in entries if e.key not in keys]
  if missing:
    hint = ""
    if len(missing) == len(entries):
      hint = (" None of the expected names is there: is this a deeplab2 kMaX-DeepLab "
              "(object paths encoder/..., pixel_decoder/..., transformer_decoder/...) or "
              "MaX-DeepLab (encoder/..., transformer_class_head/...) checkpoint?")
    elif len(missing) > len(entries) // 2:
      hint = " Most names are missing: does the gin config match the deeplab2 model?"
    raise ValueError(f"import_deeplab2: {len(missing)} of {len(entries)} variables are "
                     f"missing from {checkpoint}.{hint} Missing: {missing[:30]}")

  mismatched = []
  values = []
  for e in entries:
    value = reader.get_tensor(keys[e.key])
    want = tuple(e.d2_shape) if e.d2_shape is not None else tuple(e.variable.shape)
    if tuple(value.shape) != want:
      mismatched.append(f"{e.key}: checkpoint {tuple(value.shape)}, expected {want} "
                        f"(ours {e.variable.name} {tuple(e.variable.shape)})")
      continue
    values.append(e.transform(value, e.variable.shape))
  if mismatched:
    raise ValueError(f"import_deeplab2: {len(mismatched)} shape mismatches (does the gin "
                     f"config match the deeplab2 model?): {mismatched[:20]}")
  for e, value in zip(entries, values):
    e.variable.assign(value.astype(e.variable.dtype.as_numpy_dtype))

  used = {e.key for e in entries}
  unused = sorted(k for k in keys if k not in used and not k.startswith(_NON_MODEL_PREFIXES)
                  and ".OPTIMIZER_SLOT" not in k)
  return ImportReport(len(entries), int(sum(np.prod(e.variable.shape) for e in entries)),
                      unused)


def write_deeplab2_style_checkpoint(model: keras.Model, prefix: str) -> List[str]:
  """Writes our model's weights under deeplab2 object paths (the inverse map).

  Used by tests and to hand our weights to deeplab2 tooling. Returns the keys.
  """
  entries = mapping_table(model)
  names, tensors = [], []
  for e in entries:
    value = e.variable.numpy()
    if e.transform is _void_bias:
      value = _void_bias_inverse(value)
    if e.d2_shape is not None:
      value = np.reshape(value, e.d2_shape)
    names.append(e.key + _SUFFIX)
    tensors.append(tf.constant(value))
  tf.io.gfile.makedirs(os.path.dirname(prefix) or ".")
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names,
                    shape_and_slices=[""] * len(names), tensors=tensors)
  return [e.key for e in entries]


def build_model_from_gin() -> Tuple[keras.Model, Tuple[int, int]]:
  """Builds the configured MaskTransformer on a dummy image of the eval size."""
  from deeplab_panoptic.modeling.meta_arch import MaskTransformer  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.training.experiment import ExperimentConfig  # pylint: disable=g-import-not-at-top
  size = tuple(ExperimentConfig().eval_input_size)
  model = MaskTransformer()
  model(tf.zeros([1, size[0], size[1], 3]), training=False)
  return model, size


def build_model_from_flags(requirement: str) -> keras.Model:
  """The importers' start: parses main.py's --gin_file / --gin_param and builds the model.

  Args:
    requirement: what the gin files must configure, for the usage error.
  """
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  from deeplab_panoptic.main import parse_gin  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.gin_file:
    raise app.UsageError(f"at least one --gin_file ({requirement}) is required.")
  parse_gin(flags.FLAGS.gin_file, flags.FLAGS.gin_param)
  return build_model_from_gin()[0]


def write_imported_checkpoint(model: keras.Model, output_dir: str) -> str:
  """Writes ``model`` as our step-0 checkpoint (``ckpt-0``), the layout main.py reads."""
  step = tf.Variable(0, dtype=tf.int64)
  manager = tf.train.CheckpointManager(tf.train.Checkpoint(global_step=step, model=model),
                                       output_dir, max_to_keep=1)
  return manager.save(checkpoint_number=0)


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  model = build_model_from_flags("our model configured like the deeplab2 one")
  report = import_checkpoint(model, f.deeplab2_checkpoint)
  print(report.summary())
  print("wrote", write_imported_checkpoint(model, f.output_dir))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=g-import-not-at-top,g-multiple-import
  # --gin_file / --gin_param are main.py's flags (same meaning, same search path).
  import deeplab_panoptic.main  # pylint: disable=g-import-not-at-top,unused-import
  flags.DEFINE_string("deeplab2_checkpoint", None, "deeplab2 checkpoint prefix or directory.")
  flags.DEFINE_string("output_dir", None, "Where our checkpoint (ckpt-0) is written.")
  flags.mark_flags_as_required(["deeplab2_checkpoint", "output_dir"])
  app.run(main)
