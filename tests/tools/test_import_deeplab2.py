"""Tests of the deeplab2 checkpoint importer, without deeplab2.

The tiny kMaX configuration below is the one built beside deeplab2 by hand (see
docs/deployment.md): deeplab2's ResNet encoder with blocks (1, 2, 1, 1) and
width x0.25, its kMaX pixel decoder with dims (32, 16, 16, 8) and blocks
(1, 2, 1, 1), one kMaX layer per stride with N = 16, and a MaX head with 9 class
logits and 32-dim embeddings. The variable counts and shapes quoted here were
read with ``tf.train.list_variables`` from the checkpoint deeplab2 wrote for it.
"""

import functools
import math

import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.modeling import utils
from deeplab_panoptic.modeling.heads import MaskTransformerPredictor
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.modeling.pixel_decoders.kmax import KMaXPixelDecoder, ResizedFuse
from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import AxialResNet
from deeplab_panoptic.modeling.transformer_decoders.kmax import KMaXTransformerDecoder
from deeplab_panoptic.tools import import_deeplab2 as imp

SIZE = 33

# Variables per top-level object in deeplab2's checkpoint of the tiny model.
DEEPLAB2_COUNTS = {"encoder": 100, "pixel_decoder": 214, "transformer_decoder": 248,
                   "pixel_space_head": 12, "transformer_mask_head": 5,
                   "pixel_space_feature_batch_norm": 4, "pixel_space_mask_batch_norm": 4,
                   "transformer_class_head": 2}
# A sample of (name, shape) from that checkpoint.
DEEPLAB2_SHAPES = {
    "encoder/_stem/_conv/kernel": (7, 7, 3, 16),
    "encoder/_stage3/_block2/_conv2_bn_act/_conv/kernel": (3, 3, 32, 32),
    "pixel_decoder/_backbone_norms/3/gamma": (64,),
    "pixel_decoder/_skip_connections/0/_resized_conv_bn1/_conv/kernel": (1, 1, 128, 16),
    "pixel_decoder/_stages/0/_block1/_attention/_height_axis/qkv_kernel": (64, 128),
    "pixel_decoder/_stages/3/_block1/_shortcut/_conv/kernel": (1, 1, 8, 32),
    "transformer_class_head/_conv/kernel": (1, 256, 9),
    "transformer_decoder/cluster_centers": (1, 16, 256),
    "transformer_decoder/_kmax_decoder/0/_block1_transformer/_pixel_conv1_bn_act/_conv/kernel":
        (1, 128, 256),
    ("transformer_decoder/_kmax_decoder/2/_block1_transformer/_memory_attention/"
     "_batch_norm_retrieved_value/gamma"): (1, 8, 1, 32),
    ("transformer_decoder/_kmax_decoder/1/_block1_transformer/_auxiliary_clustering_predictor/"
     "_pixel_space_head/conv_block/_conv1_bn_act/_depthwise/_depthwise_conv/depthwise_kernel"):
        (5, 5, 256, 1),
}


def _randomise(model, seed: int):
  rng = np.random.RandomState(seed)
  for v in model.weights:  # random BN statistics and gammas too
    low = 0.5 if "variance" in v.name else -0.5
    v.assign(rng.uniform(low, 1.0, v.shape).astype(np.float32))


def _tiny_kmax() -> MaskTransformer:
  predictor = functools.partial(MaskTransformerPredictor, num_classes=8, embedding_dim=32,
                                pixel_head_dim=64, activate_input=False)
  model = MaskTransformer(
      pixel_encoder=AxialResNet(num_blocks=(1, 2, 1, 1), filters=(16, 32, 64, 128),
                                stem_filters=(16,), stem_kernel_size=7,
                                axial_beyond_stride=0, transformer_beyond_stride=0,
                                output_stride=32),
      pixel_decoder=KMaXPixelDecoder(num_blocks=(1, 2, 1, 1), filters=(32, 16, 16, 8),
                                     block_types=("axial", "axial", "bottleneck",
                                                  "bottleneck")),
      transformer_decoder=KMaXTransformerDecoder(num_centers=16, num_blocks=(1, 1, 1),
                                                 predictor_factory=predictor),
      predictor=predictor(name="predictor"))
  model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  _randomise(model, 1)
  return model


@pytest.fixture(scope="module")
def model():
  # One build (the slow part) shared by the tests.
  return _tiny_kmax()


def _save(prefix, tensors):
  names = [k + "/.ATTRIBUTES/VARIABLE_VALUE" for k in tensors]
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(v) for v in tensors.values()])



def _check_table(model, want_counts, want_shapes, num_variables):
  """The mapping table against counts and shapes read from deeplab2's checkpoint.

  Variables are grouped by encoder stage ("encoder/_stage3") or top-level part;
  every variable of ``model`` must have a source (``num_variables`` of them).
  """
  entries = imp.mapping_table(model)
  counts = {}
  for e in entries:
    parts = e.key.split("/")
    group = "/".join(parts[:2]) if parts[0] == "encoder" else parts[0]
    counts[group] = counts.get(group, 0) + 1
  assert counts == want_counts
  shapes = {e.key: e.d2_shape or tuple(e.variable.shape) for e in entries}
  for key, shape in want_shapes.items():
    assert shapes[key] == shape, key
  assert len(entries) == len(model.weights) == num_variables
  return entries

def test_table_matches_deeplab2_names_and_shapes(model):
  entries = imp.mapping_table(model)
  keys = [e.key for e in entries]
  assert len(set(keys)) == len(keys) == sum(DEEPLAB2_COUNTS.values())
  counts = {}
  for k in keys:
    counts[k.split("/")[0]] = counts.get(k.split("/")[0], 0) + 1
  assert counts == DEEPLAB2_COUNTS
  shapes = {e.key: e.d2_shape or tuple(e.variable.shape) for e in entries}
  for key, shape in DEEPLAB2_SHAPES.items():
    assert shapes[key] == shape, key


def test_round_trip_every_variable_and_outputs(model, tmp_path):
  _randomise(model, 2)
  before = [v.numpy() for v in model.weights]
  x = tf.random.stateless_uniform([1, SIZE, SIZE, 3], seed=[1, 2], minval=-1.0)
  out_before = model(x, training=False)
  prefix = str(tmp_path / "d2" / "ckpt")
  imp.write_deeplab2_style_checkpoint(model, prefix)
  # deeplab2 keeps the void prior out of the bias: log(8 * 0.9 / 0.1) = log(72).
  reader = tf.train.load_checkpoint(prefix)
  stored = reader.get_tensor("transformer_class_head/_conv/bias/.ATTRIBUTES/VARIABLE_VALUE")
  ours = model.predictor._class.bias.numpy()  # pylint: disable=protected-access
  np.testing.assert_allclose(stored[-1], ours[-1] - math.log(72.0), rtol=1e-6)
  np.testing.assert_array_equal(stored[:-1], ours[:-1])

  _randomise(model, 3)  # overwrite everything, then import it back
  report = imp.import_checkpoint(model, prefix)
  assert report.assigned == len(model.weights) and not report.unused_checkpoint_keys
  for a, v in zip(before, model.weights):
    # Exact but for the void bias (subtracted, then added back: one rounding).
    np.testing.assert_allclose(v.numpy(), a, rtol=1e-6, atol=1e-7, err_msg=v.name)
  out_after = model(x, training=False)
  for key in (common.PRED_CLASS_LOGITS, common.PRED_MASK_LOGITS):
    np.testing.assert_allclose(out_after[key].numpy(), out_before[key].numpy(),
                               rtol=1e-5, atol=1e-5)


def test_missing_wrong_and_mismatched_checkpoints(model, tmp_path):
  target = model
  tensors = {}
  for e in imp.mapping_table(model):
    value = e.variable.numpy()
    tensors[e.key] = value.reshape(e.d2_shape) if e.d2_shape else value
  dropped = "transformer_decoder/_kmax_decoder/1/_block1_transformer/_memory_conv3_bn/_conv/kernel"
  partial = {k: v for k, v in tensors.items() if k != dropped}
  _save(str(tmp_path / "partial"), partial)
  with pytest.raises(ValueError, match="1 of 589 variables are missing.*_memory_conv3_bn"):
    imp.import_checkpoint(target, str(tmp_path / "partial"))

  wrong = dict(tensors)
  wrong["encoder/_stem/_conv/kernel"] = np.zeros([3, 3, 3, 16], np.float32)
  _save(str(tmp_path / "wrong_shape"), wrong)
  with pytest.raises(ValueError, match=r"encoder/_stem/_conv/kernel: checkpoint \(3, 3, 3, 16\)"):
    imp.import_checkpoint(target, str(tmp_path / "wrong_shape"))

  _save(str(tmp_path / "other"), {"model/dense/kernel": np.zeros([2, 2], np.float32)})
  with pytest.raises(ValueError, match="None of the expected names"):
    imp.import_checkpoint(target, str(tmp_path / "other"))
  with pytest.raises(FileNotFoundError):
    imp.import_checkpoint(target, str(tmp_path / "does_not_exist"))


def test_deeplab2_options_of_the_layers():
  # Align-corners resize 2 -> 3 (hand-worked): the middle sample is the mean.
  x = tf.constant([[0.0, 2.0], [4.0, 6.0]])[None, :, :, None]
  y = utils.resize_bilinear(x, (3, 3), align_corners=True)[0, :, :, 0].numpy()
  np.testing.assert_allclose(y, [[0, 1, 2], [2, 3, 4], [4, 5, 6]], atol=1e-6)
  # Exact GeLU: x * Phi(x).
  gelu = conv.get_activation("gelu", gelu_approximate=False)
  np.testing.assert_allclose(gelu(tf.constant(1.0)).numpy(),
                             0.5 * (1 + math.erf(1 / math.sqrt(2))), rtol=1e-6)
  # An input that already has the fused width is only resized, not projected.
  fuse = ResizedFuse(4, 2, "relu")
  a, b = tf.ones([1, 3, 3, 4]), tf.ones([1, 2, 2, 8])
  out = fuse([a, b], (3, 3))
  assert fuse._projections[0] is None and fuse._projections[1] is not None  # pylint: disable=protected-access
  assert out.shape == (1, 3, 3, 4)
  # The bottleneck shortcut takes the activated input (relu(-1) = 0): with the
  # residual branch zeroed the block is relu(x).
  block = conv.BottleneckBlock(1, expansion=2, activation="relu")
  x = tf.constant([-1.0, 2.0])[None, None, None, :]
  block(x)
  block._conv3._bn.gamma.assign([0.0, 0.0])  # pylint: disable=protected-access
  block._conv3._bn.beta.assign([0.0, 0.0])  # pylint: disable=protected-access
  np.testing.assert_allclose(block(x, training=False).numpy().ravel(), [0.0, 2.0])


# deeplab2's MaX-DeepLab-S at blocks (1, 1, 2, 2), width x0.25, N = 16 (its
# ``axial_resnet_instances.get_model('max_deeplab_s', num_blocks=[1, 1, 2, 2],
# width_multiplier=0.25, stem_width_multiplier=0.25, num_mask_slots=16, ...)`` and a
# MaX head with 9 class logits): variables per encoder part, and sample shapes.
DEEPLAB2_MAX_COUNTS = {
    "encoder/_class_feature_extra": 5, "encoder/_decoder_stage1_extra": 15,
    "encoder/_decoder_stage1_extra_resized_fuse": 5, "encoder/_decoder_stage2_extra": 15,
    "encoder/_decoder_stage2_extra_resized_fuse": 5, "encoder/_mask_feature_extra": 5,
    "encoder/_stage2": 20, "encoder/_stage3": 20, "encoder/_stage4": 62,
    "encoder/_stage5": 201, "encoder/_stage5_extra": 98, "encoder/_stem": 15,
    "encoder/memory_feature": 1, "pixel_space_feature_batch_norm": 4, "pixel_space_head": 12,
    "pixel_space_mask_batch_norm": 4, "transformer_class_head": 2, "transformer_mask_head": 5}
DEEPLAB2_MAX_SHAPES = {
    "encoder/memory_feature": (1, 16, 256),
    "encoder/_stage5/_block2_transformer/_pixel_attention/_batch_norm_retrieved_value/gamma":
        (1, 8, 1, 32),
    "encoder/_stage5_extra/_block1_transformer/_memory_qkv_conv_bn/_conv/kernel": (1, 256, 512),
    "encoder/_decoder_stage1_extra_resized_fuse/_resized_conv_bn1/_conv/kernel":
        (1, 1, 512, 128),
    "encoder/_class_feature_extra/_conv/kernel": (1, 256, 256),
    "encoder/_stem/_conv3_bn/_conv/kernel": (3, 3, 16, 32),
    "encoder/_stage4/_block2/_attention/_width_axis/qkv_kernel": (128, 256),
}


def test_max_deeplab_table_matches_deeplab2():
  from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import MaXPixelDecoder  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import DualPathConfig  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.transformer_decoders.max_deeplab import MaXMemoryHead  # pylint: disable=g-import-not-at-top
  dual_path = DualPathConfig(num_memory=16)
  model = MaskTransformer(
      pixel_encoder=AxialResNet(num_blocks=(1, 1, 2, 2), filters=(16, 32, 64, 128),
                                stem_filters=(16, 16, 32), dual_path=dual_path),
      pixel_decoder=MaXPixelDecoder(filters=(128, 32, 16), dual_path=dual_path),
      transformer_decoder=MaXMemoryHead(),
      predictor=MaskTransformerPredictor(num_classes=8, embedding_dim=32, pixel_head_dim=64,
                                         activation="relu", name="predictor"))
  model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  _check_table(model, DEEPLAB2_MAX_COUNTS, DEEPLAB2_MAX_SHAPES, 494)


# deeplab2's MaX-DeepLab-L at blocks (1, 1, 2, 1), width x0.125, stem x0.125, N = 16,
# memory 64, transformer expansion 0.5, dual-path FFN 64, 2 extra-decoder blocks per
# stage (``get_model('max_deeplab_l', num_blocks=[1, 1, 2, 1], width_multiplier=0.125,
# stem_width_multiplier=0.125, num_mask_slots=16, max_num_mask_slots=16,
# memory_channels=64, global_feed_forward_network_channels=64,
# base_transformer_expansion=0.5, extra_decoder_blocks_per_stage=2,
# block_group_config={'dual_path_transformer_layer_config':
# {'feed_forward_network_channels': 64}})``) and a MaX head with 9 class logits, on a
# 65x65 image: variables per encoder part, and sample shapes.
DEEPLAB2_MAX_L_COUNTS = {
    "encoder/_stem": 5, "encoder/_stage1": 35, "encoder/_stage2": 15, "encoder/_stage3": 15,
    "encoder/_stage4": 169, "encoder/_stage5": 103, "encoder/memory_feature": 1,
    "encoder/_decoder_stage1": 10, "encoder/_decoder_stage1_resized_fuse": 5,
    "encoder/_decoder_stage2": 10, "encoder/_decoder_stage2_resized_fuse": 5,
    "encoder/_decoder_stage3": 10, "encoder/_decoder_stage3_resized_fuse": 5,
    "encoder/_decoder_stage4": 98, "encoder/_decoder_stage4_resized_fuse": 5,
    "encoder/_decoder_stage4_extra": 196,
    "encoder/_decoder_stage5_extra": 20, "encoder/_decoder_stage5_extra_resized_fuse": 5,
    "encoder/_decoder_stage6_extra": 20, "encoder/_decoder_stage6_extra_resized_fuse": 5,
    "encoder/_decoder_stage7_extra": 20, "encoder/_decoder_stage7_extra_resized_fuse": 5,
    "encoder/_decoder_stage8_extra": 196, "encoder/_decoder_stage8_extra_resized_fuse": 5,
    "encoder/_decoder_stage9_extra": 20, "encoder/_decoder_stage9_extra_resized_fuse": 5,
    "encoder/_decoder_stage10_extra": 20, "encoder/_decoder_stage10_extra_resized_fuse": 5,
    "encoder/_class_feature_extra": 5, "encoder/_mask_feature_extra": 5,
    "pixel_space_feature_batch_norm": 4, "pixel_space_head": 12,
    "pixel_space_mask_batch_norm": 4, "transformer_class_head": 2, "transformer_mask_head": 5}
DEEPLAB2_MAX_L_SHAPES = {
    "encoder/_stem/_conv/kernel": (3, 3, 3, 8),
    "encoder/_stage1/_block1/_conv2_bn/_conv/kernel": (3, 3, 16, 16),
    "encoder/_stage1/_block1/_shortcut/_conv/kernel": (1, 1, 8, 16),
    "encoder/_stage4/_block1/_conv1_bn_act/_conv/kernel": (3, 3, 64, 128),
    "encoder/_stage4/_block2/_attention/_height_axis/qkv_kernel": (128, 256),
    "encoder/_stage4/_block1_transformer/_memory_qkv_conv_bn/_conv/kernel": (1, 64, 128),
    "encoder/_stage5/_block1_transformer/_memory_qkv_conv_bn/_conv/kernel": (1, 128, 256),
    "encoder/_decoder_stage2_resized_fuse/_resized_conv_bn1/_conv/kernel": (1, 1, 64, 32),
    "encoder/_decoder_stage3_resized_fuse/_strided_conv_bn1/_conv/kernel": (1, 1, 32, 64),
    "encoder/_decoder_stage4_resized_fuse/_strided_conv_bn1/_conv/kernel": (1, 1, 64, 256),
    ("encoder/_decoder_stage4_extra/_block2_transformer/_pixel_attention/"
     "_batch_norm_retrieved_value/gamma"): (1, 8, 1, 16),
    "encoder/_decoder_stage8_extra_resized_fuse/_strided_conv_bn1/_conv/kernel":
        (1, 1, 64, 256),
    "encoder/_decoder_stage10_extra/_block2/_conv2_bn/_conv/kernel": (3, 3, 32, 32),
    "encoder/memory_feature": (1, 16, 64),
    "encoder/_class_feature_extra/_conv/kernel": (1, 64, 64),
}
# configs/models/max_deeplab_l.gin's decoder (deeplab2's L = 2 stacked hourglass).
MAX_L_STRIDES = (8, 4, 8, 16, 16, 8, 4, 8, 16, 8, 4)
MAX_L_FUSE = (True, True, True, True, False, True, True, True, True, True, True)
MAX_L_KINDS = ("basic", "basic", "basic", "axial", "axial", "basic", "basic", "basic",
               "axial", "basic", "basic")


def _max_l_decoder(**kwargs):
  from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import MaXPixelDecoder  # pylint: disable=g-import-not-at-top
  return MaXPixelDecoder(
      strides=MAX_L_STRIDES, block_kinds=MAX_L_KINDS,
      transformer=tuple(s == 16 for s in MAX_L_STRIDES), expansion=4, num_heads=8,
      axial_key_expansion=2.0, axial_value_expansion=4.0, activation="relu", **kwargs)


def _tiny_max_l() -> MaskTransformer:
  """The tiny MaX-L above, configured as configs/models/max_deeplab_l.gin."""
  from deeplab_panoptic.modeling.pixel_encoders.axial_resnet import DualPathConfig  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.modeling.transformer_decoders.max_deeplab import MaXMemoryHead  # pylint: disable=g-import-not-at-top
  dual_path = DualPathConfig(num_memory=16, memory_dim=64, bottleneck_dim=128, key_dim=64,
                             value_dim=128, num_heads=8, ffn_dim=64)
  stage4 = DualPathConfig(num_memory=16, memory_dim=64, bottleneck_dim=64, key_dim=32,
                          value_dim=64, num_heads=8, ffn_dim=64)
  model = MaskTransformer(
      pixel_encoder=AxialResNet(
          num_blocks=(3, 1, 1, 2, 1), filters=(4, 8, 16, 32, 64), stem_filters=(8,),
          stage_strides=(1, 2, 2, 2, 2), block_kind="basic", expansion=4,
          axial_beyond_stride=16, transformer_beyond_stride=16, output_stride=16,
          num_heads=8, axial_key_expansion=2.0, axial_value_expansion=4.0,
          dual_path=dual_path, stage_dual_paths=(None, None, None, stage4, None)),
      pixel_decoder=_max_l_decoder(num_blocks=(1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2),
                                   filters=(16, 8, 16, 64, 64, 16, 8, 16, 64, 16, 8),
                                   dual_path=dual_path, fuse=MAX_L_FUSE),
      transformer_decoder=MaXMemoryHead(dim=64),
      predictor=MaskTransformerPredictor(num_classes=8, embedding_dim=32, pixel_head_dim=64,
                                         activation="relu", name="predictor"))
  model(tf.zeros([1, SIZE, SIZE, 3]), training=False)
  return model


def test_deeplab2_decoder_stage_names():
  # Read off deeplab2's checkpoints: MaX-L (1 backbone + 1 extra stack), MaX-S (none).
  stages = imp._deeplab2_decoder_stages(1, 1, 16, 4)  # pylint: disable=protected-access
  assert [s for s, _, _ in stages] == list(MAX_L_STRIDES)
  assert [n for _, n, _ in stages] == (
      [f"_decoder_stage{n}" for n in (1, 2, 3, 4)] +
      [f"_decoder_stage{n}_extra" for n in range(4, 11)])
  assert [f is None for _, _, f in stages] == [not f for f in MAX_L_FUSE]
  assert stages[3][2] == "_decoder_stage4_resized_fuse"
  assert stages[5][2] == "_decoder_stage5_extra_resized_fuse"
  assert imp._deeplab2_decoder_stages(0, 0, 16, 4) == [  # pylint: disable=protected-access
      (16, "_stage5_extra", None),
      (8, "_decoder_stage1_extra", "_decoder_stage1_extra_resized_fuse"),
      (4, "_decoder_stage2_extra", "_decoder_stage2_extra_resized_fuse")]


def test_max_deeplab_l_table_and_round_trip(tmp_path):
  model = _tiny_max_l()
  _check_table(model, DEEPLAB2_MAX_L_COUNTS, DEEPLAB2_MAX_L_SHAPES, 1050)

  _randomise(model, 4)
  before = [v.numpy() for v in model.weights]
  x = tf.random.stateless_uniform([1, SIZE, SIZE, 3], seed=[3, 4], minval=-1.0)
  out_before = model(x, training=False)
  prefix = str(tmp_path / "d2l" / "ckpt")
  imp.write_deeplab2_style_checkpoint(model, prefix)
  _randomise(model, 5)
  report = imp.import_checkpoint(model, prefix)
  assert report.assigned == 1050 and not report.unused_checkpoint_keys
  for a, v in zip(before, model.weights):
    np.testing.assert_allclose(v.numpy(), a, rtol=1e-6, atol=1e-7, err_msg=v.name)
  out_after = model(x, training=False)
  for key in (common.PRED_CLASS_LOGITS, common.PRED_MASK_LOGITS):
    np.testing.assert_allclose(out_after[key].numpy(), out_before[key].numpy(),
                               rtol=1e-5, atol=1e-5)


def test_max_deeplab_l_decoder_that_deeplab2_does_not_build():
  # Every stage fusing (the extra decoder not continuing the backbone one's
  # stride-16 stage): no deeplab2 counterpart, said before any variable is read.
  decoder = _max_l_decoder(num_blocks=(1,) * 11, filters=(8,) * 11)
  with pytest.raises(NotImplementedError, match="exactly one stage without a fusion"):
    imp._max_pixel_decoder(imp._Table(), decoder)  # pylint: disable=protected-access
  # The right stages in a pattern deeplab2 does not make (no return to stride 4).
  strides = (8, 4, 8, 16, 16, 8, 16)
  from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import MaXPixelDecoder  # pylint: disable=g-import-not-at-top
  decoder = MaXPixelDecoder(strides=strides, num_blocks=(1,) * 7, filters=(1,) * 7,
                            block_kinds=("basic",) * 7, transformer=(False,) * 7,
                            fuse=(True, True, True, True, False, True, True))
  with pytest.raises(NotImplementedError, match="are not deeplab2's"):
    imp._max_pixel_decoder(imp._Table(), decoder)  # pylint: disable=protected-access
