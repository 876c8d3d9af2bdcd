"""The XLA-compiled train step equals the eager one, for every family's shapes recipe.

Each quickstart recipe's model and loss are built from its gin file (with the
pure-TF matcher: scipy's cannot run inside an XLA cluster, so the eager
reference uses the same one) and shrunk where the XLA compile time would
otherwise dominate (fewer blocks, a small crop). The step is the trainer's own
``PanopticTrainer._forward_backward``: the eager trainer calls it as is, the
``jit_compile=True`` trainer through its XLA-compiled ``tf.function``. Both must
give the same losses and gradients on one fixed batch: to 1e-5 in float32, or,
for the families whose float32 step is itself that far from the exact one, to
1e-10 with the whole library in float64 (``_float64_library``).

Why float64 for kMaX / ReMaX and Panoptic SegFormer (measured 2026-12-08, CPU):
their float32 losses agree to 2e-6, but their float32 gradients differ between
XLA and eager by up to 1.5e-4 (kMaX, 64x64 crop: first-conv kernel gradient of
scale 3; 46 of 337 variables beyond 1e-5) and 8e-4 relative (Panoptic
SegFormer). Neither is exact: against the float64 eager step (same weights)
kMaX's float32 eager gradients are 5.1e-5 off (19 variables beyond 1e-5), its
float32 XLA ones 1.6e-4 (48). In float64 XLA and eager agree to 1e-12 (kMaX:
losses 1.4e-15, gradients 9.8e-14; ReMaX 2e-13; Panoptic SegFormer 6.5e-13), so
the float32 gap is rounding that the step amplifies (batch-norm statistics over
few pixels, long backward reductions summed in another order by XLA), not a
different computation. A real difference between the two paths (a wrong op
lowering such as tensorflow#118344, a random draw not replayed) shows at 1e-10
as it would at 1e-5.
"""

import contextlib
import dataclasses
import sys
import types
from typing import Tuple

import gin
import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic import main as main_lib
from deeplab_panoptic.training import trainer as trainer_lib
from deeplab_panoptic.training.experiment import ExperimentConfig

BATCH = 2

# Random layers draw different masks eager and compiled: the semantic heads'
# dropout is off (the recipes have no other random layer; the test checks it).
_NO_DROPOUT = ("SemanticHead.dropout = 0.0",)


@dataclasses.dataclass(frozen=True)
class Family:
  """How one recipe is checked.

  bindings: shrinking bindings (one block per stage keeps the XLA compile short;
    the parts and the loss terms are the recipe's).
  size: the square crop. kMaX's stride-32 batch norm at a 32x32 crop normalises
    two values per channel, which makes even its float64 gradients of scale 235.
  dtype: "float32", or "float64" for the whole library.
  tolerance: relative and absolute, on every loss and gradient.
  min_trained_fraction: the share of variables with a non-zero gradient below
    which the step is taken for a degenerate one.
  """
  bindings: Tuple[str, ...] = ()
  size: int = 32
  dtype: str = "float32"
  tolerance: float = 1e-5
  min_trained_fraction: float = 0.5


_FLOAT64 = dict(dtype="float64", tolerance=1e-10)
_FAMILIES = {
    "kmax_deeplab": Family(_NO_DROPOUT, size=64, **_FLOAT64),
    "remax": Family(_NO_DROPOUT + ("ReMaXSemanticHead.dropout = 0.0",), size=64, **_FLOAT64),
    "cmt_deeplab": Family(_NO_DROPOUT + ("AxialResNet.num_blocks = (1, 1, 1, 1)",
                                         "CMTPixelDecoder.strides = (16, 8, 4)",
                                         "CMTPixelDecoder.num_blocks = (1, 1, 1)",
                                         "CMTPixelDecoder.filters = (64, 32, 16)",
                                         "CMTPixelDecoder.block_kinds = "
                                         "('axial', 'bottleneck', 'bottleneck')",
                                         "CMTPixelDecoder.transformer = (True, False, False)",
                                         "CMTPixelDecoder.fuse_skips = (True, True, True)")),
    "panoptic_segformer": Family(("DeformableEncoder.num_layers = 1",
                                  "PanopticSegFormerDecoder.num_location_layers = 1"),
                                 **_FLOAT64),
    "deeplabv3plus": Family(),
    # MaX zero-initialises the last batch-norm scale of every residual and axial
    # branch (deeplab2's init), so at step 0 the weights before it have zero
    # gradient: 115 of its 250 variables are trained.
    "max_deeplab": Family(_NO_DROPOUT + ("AxialResNet.num_blocks = (1, 1, 1, 1)",),
                          min_trained_fraction=0.4, **_FLOAT64),
    "mask2former": Family(("DeformableEncoder.num_layers = 1", "PointSampler.num_points = 64"),
                          **_FLOAT64),
}


@contextlib.contextmanager
def _float64_library():
  """Builds and runs the library in float64.

  Keras' policy makes the layers float64; the losses, the trainer's output cast
  and a few layers (sampling geometry) compute in ``tf.float32`` on purpose, for
  mixed precision, so every ``deeplab_panoptic`` module's ``tf`` is swapped for
  a namespace where ``float32`` is float64. A dtype the swap misses fails loudly
  (mixed-dtype op), never silently.
  """
  alias = types.ModuleType("tensorflow_in_float64")
  alias.__dict__.update({k: getattr(tf, k) for k in dir(tf) if not k.startswith("__")})
  alias.float32 = tf.float64
  modules = [m for n, m in list(sys.modules.items())
             if n.startswith("deeplab_panoptic") and getattr(m, "tf", None) is tf]
  policy = keras.mixed_precision.global_policy()
  for module in modules:
    module.tf = alias
  keras.mixed_precision.set_global_policy("float64")
  try:
    yield
  finally:
    for module in modules:
      module.tf = tf
    keras.mixed_precision.set_global_policy(policy)


def _batch(size: int, dtype: str, num_classes: int, num_masks: int, things: int):
  """A fixed batch: every image split into a few masks of a few classes, with void."""
  rng = np.random.default_rng(7)
  images = rng.uniform(-1, 1, (BATCH, size, size, 3)).astype(dtype)
  mask_id = np.full((BATCH, size, size), -1, np.int32)
  classes = np.full((BATCH, num_masks), -1, np.int32)
  # Quadrant-like regions: masks 0..3, mask 4 void (-1).
  rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  for b in range(BATCH):
    cut = (10 + 7 * b) * size // 32
    regions = (rows >= cut).astype(np.int32) * 2 + (cols >= size - cut).astype(np.int32)
    regions[(rows - size // 2) ** 2 + (cols - size * 3 // 8) ** 2 < 9 * size ** 2 // 1024] = 4  # a void disc
    mask_id[b] = np.where(regions < 4, regions, -1)
    classes[b, :4] = rng.permutation(num_classes)[:4]
  is_thing = (classes >= 0) & (classes < things)
  semantic = np.full((BATCH, size, size), 255, np.int32)
  for b in range(BATCH):
    for k in range(4):
      semantic[b][mask_id[b] == k] = classes[b, k]
  weight = (semantic != 255).astype(dtype)
  return {common.IMAGE: tf.constant(images), common.GT_MASK_ID: tf.constant(mask_id),
          common.GT_CLASSES: tf.constant(classes), common.GT_IS_THING: tf.constant(is_thing),
          common.GT_SEMANTIC: tf.constant(semantic),
          common.GT_SEMANTIC_WEIGHT: tf.constant(weight)}


def _build(name: str, family: Family):
  """(model, loss, batch) of the recipe, with the pure-TF matcher."""
  gin.clear_config()
  try:
    main_lib.parse_gin([f"experiments/quickstart/{name}_shapes.gin"],
                       ["HungarianMatcher.method = 'tpu'", *family.bindings])
    config = ExperimentConfig()
    model, loss_fn = config.model(), config.loss()
    num_classes = gin.query_parameter("%NUM_CLASSES")
    num_masks = gin.query_parameter("InputConfig.max_num_masks")
  finally:
    gin.clear_config()
  # The shapes dataset: classes 0-2 are things, 3-4 stuff.
  return model, loss_fn, _batch(family.size, family.dtype, num_classes, num_masks, things=3)


def _trainer(model, loss_fn, batch, jit_compile):
  optimizer = keras.optimizers.SGD(0.0)
  return trainer_lib.PanopticTrainer(
      tf.distribute.get_strategy(), model, loss_fn, optimizer,
      tf.data.Dataset.from_tensors(batch), global_batch_size=BATCH, total_steps=1,
      jit_compile=jit_compile)


def _dense(grads):
  # Gathers (axial attention's position tables) give IndexedSlices.
  return [None if g is None else tf.convert_to_tensor(g).numpy() for g in grads]


def _compare_steps(name: str, family: Family):
  keras.utils.set_random_seed(3)
  model, loss_fn, batch = _build(name, family)
  model(batch[common.IMAGE], training=True)
  assert model.trainable_variables[0].dtype == family.dtype
  random_layers = [l.name for l in model.submodules
                   if getattr(l, "rate", 0.0) or getattr(l, "drop_rate", 0.0)]
  assert not random_layers, random_layers
  eager = _trainer(model, loss_fn, batch, jit_compile=False)
  compiled = _trainer(model, loss_fn, batch, jit_compile=True)
  assert compiled._forward_backward_fn is not eager._forward_backward_fn  # pylint: disable=protected-access

  losses_xla, grads_xla = compiled._forward_backward_fn(batch)  # pylint: disable=protected-access
  losses, grads = eager._forward_backward_fn(batch)  # pylint: disable=protected-access

  assert set(losses_xla) == set(losses)
  assert losses[common.LOSS_TOTAL].dtype == family.dtype
  assert float(losses[common.LOSS_TOTAL]) > 0
  tol = family.tolerance
  for key in losses:
    np.testing.assert_allclose(float(losses_xla[key]), float(losses[key]),
                               rtol=tol, atol=tol, err_msg=key)
  trained = 0
  for variable, a, b in zip(model.trainable_variables, _dense(grads), _dense(grads_xla)):
    assert (a is None) == (b is None), variable.name
    if a is not None:
      trained += int(np.any(a != 0))
      np.testing.assert_allclose(b, a, rtol=tol, atol=tol, err_msg=f"{name}: {variable.name}")
  # The comparison covers a trained model, not a step that returns zeros.
  assert trained > family.min_trained_fraction * len(model.trainable_variables)


@pytest.mark.parametrize("name", sorted(_FAMILIES))
def test_xla_train_step_equals_eager_step(name):
  family = _FAMILIES[name]
  with _float64_library() if family.dtype == "float64" else contextlib.nullcontext():
    _compare_steps(name, family)
