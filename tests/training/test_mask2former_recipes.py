"""The Mask2Former recipes' optimizer, queries and inference, on tiny models built from them.

Weight decay: Mask2Former's ``build_optimizer`` (facebookresearch/Mask2Former
train_net.py) decays every parameter except those of norm modules, of
``nn.Embedding`` modules (the transformer decoder's query features, query
positions and level embedding) and Swin's ``relative_position_bias_table``. The
expected set here is computed that way, from the layer types of the built model,
independently of the path patterns the recipes give.
"""

import gin
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic import main as main_lib
from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.modeling.pixel_encoders.swin import WindowAttention
from deeplab_panoptic.modeling.transformer_decoders.mask2former import Mask2FormerDecoder
from deeplab_panoptic.training import optimizers
from deeplab_panoptic.training.experiment import ExperimentConfig
from tests.conftest import REPO_ROOT

# Widths and depths small enough to build in seconds; the structure (which
# layers exist) is the recipe's.
TINY = [
    "SwinEncoder.embed_dim = 8", "SwinEncoder.depths = (1, 1, 1, 1)",
    "SwinEncoder.num_heads = (1, 1, 1, 1)",
    "TorchvisionResNetEncoder.depths = (1, 1, 1, 1)",
    "TorchvisionResNetEncoder.stem_width = 8",
    "TorchvisionResNetEncoder.widths = (16, 16, 16, 16)",
    "DeformableEncoder.hidden_dim = 16", "DeformableEncoder.num_layers = 1",
    "DeformableEncoder.num_groups = 4", "DeformableEncoder.mask_features_dim = 16",
    "DeformableEncoder.ffn_dim = 16", "DeformableEncoder.num_heads = 2",
    "Mask2FormerDecoder.hidden_dim = 16", "Mask2FormerDecoder.ffn_dim = 16",
    "Mask2FormerDecoder.num_layers = 3", "Mask2FormerDecoder.mask_dim = 16",
    "Mask2FormerDecoder.num_heads = 2", "NUM_QUERIES = 8",
]
NORMS = (keras.layers.LayerNormalization, keras.layers.GroupNormalization,
         keras.layers.BatchNormalization)


def _build(recipe, monkeypatch, size=(64, 64)):
  monkeypatch.chdir(REPO_ROOT)
  gin.clear_config()
  main_lib.parse_gin([recipe], TINY)
  config = ExperimentConfig()
  model = config.model()
  outputs = model(tf.zeros((1,) + size + (3,)), training=False)
  return config, model, outputs


def _spared_by_layer_type(model):
  """ids of the variables Mask2Former's build_optimizer gives no weight decay."""
  spared = set()
  for layer in model.submodules:
    if isinstance(layer, NORMS):
      spared.update(id(v) for v in layer.trainable_weights)
    elif isinstance(layer, WindowAttention):
      spared.add(id(layer.relative_position_bias_table))
    elif isinstance(layer, Mask2FormerDecoder):
      spared.update(id(v) for v in (layer.query_features, layer.query_pos, layer.level_embed))
  return spared


@pytest.mark.parametrize("recipe", [
    "experiments/coco/mask2former_swin_t_1024_50ep.gin",            # Swin, frozen nothing
    "experiments/cityscapes/mask2former_r50_panoptic_512x1024_90k.gin",  # trained BN
])
def test_weight_decay_spares_what_mask2former_spares(recipe, monkeypatch):
  try:
    _, model, _ = _build(recipe, monkeypatch)
    backbone = model.pixel_encoder.trainable_variables
    ids = {id(v) for v in backbone}
    others = [v for v in model.trainable_variables if id(v) not in ids]
    group = optimizers.OptimizerGroup(backbone, others,
                                      variable_paths=optimizers.variable_paths(model))
  finally:
    gin.clear_config()
  spared = _spared_by_layer_type(model)
  assert any(id(v) in spared for v in backbone)  # the backbone's norms are trained here
  for variables, optimizer in ((others, group.main), (backbone, group.backbone)):
    for v in variables:
      assert optimizer._use_weight_decay(v) == (id(v) not in spared), v.name  # pylint: disable=protected-access
  # Biases and the pixel decoder's level embedding (an nn.Parameter) are decayed.
  biases = [v for v in others if v.name.endswith("bias:0")]
  assert biases and all(group.main._use_weight_decay(v) for v in biases)  # pylint: disable=protected-access


def test_queries_per_task(monkeypatch):
  """200 queries for Swin-L's panoptic / instance recipes, 100 for its semantic ones."""
  monkeypatch.chdir(REPO_ROOT)
  expected = {
      "experiments/coco/mask2former_swin_l_1024_100ep.gin": 200,
      "experiments/coco/mask2former_swin_l_instance_1024_100ep.gin": 200,
      "experiments/ade20k/mask2former_swin_l_panoptic_640_160k.gin": 200,
      "experiments/ade20k/mask2former_swin_l_semantic_640_160k.gin": 100,
      "experiments/cityscapes/mask2former_swin_l_semantic_512x1024_90k.gin": 100,
      "experiments/cityscapes/mask2former_swin_t_panoptic_512x1024_90k.gin": 100,
  }
  found = {}
  for recipe in expected:
    gin.clear_config()
    try:
      main_lib.parse_gin([recipe], [])
      found[recipe] = gin.query_parameter("Mask2FormerDecoder.num_queries").scoped_configurable_fn()
      if "swin_l_1024" in recipe:
        assert gin.query_parameter("ExperimentConfig.train_steps").scoped_configurable_fn() == 737500
    finally:
      gin.clear_config()
  assert found == expected


@pytest.mark.parametrize("recipe,results", [
    ("experiments/coco/mask2former_r50_1024_50ep.gin", {"panoptic", "semantic", "instance_masks"}),
    ("experiments/coco/mask2former_r50_instance_1024_50ep.gin", {"semantic", "instance_masks"}),
    ("experiments/cityscapes/mask2former_r50_semantic_512x1024_90k.gin", {"semantic"}),
])
def test_each_task_declares_its_results(recipe, results, monkeypatch):
  monkeypatch.chdir(REPO_ROOT)
  gin.clear_config()
  try:
    main_lib.parse_gin([recipe], [])
    config = ExperimentConfig()
    info = dataset_info_lib.dataset_info()
    slots = gin.query_parameter("Mask2FormerDecoder.num_queries").scoped_configurable_fn()
    # The model's outputs as the postprocessor checks them (shapes only).
    outputs = {common.PRED_CLASS_LOGITS: tf.zeros([1, slots, info.num_classes + 1]),
               common.PRED_MASK_LOGITS: tf.zeros([1, 8, 8, slots])}
    post = config.postprocessor(is_thing=info.is_thing, label_divisor=info.label_divisor,
                                ignore_label=info.ignore_label)
  finally:
    gin.clear_config()
  assert post.results == results
  post.check_model_outputs(outputs)
  # The semantic recipes read every class as stuff (one mask per class).
  assert any(info.is_thing) == ("semantic_" not in recipe)
