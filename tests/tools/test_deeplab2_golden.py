"""The deeplab2 importer against deeplab2's own outputs (golden fixtures).

``tests/fixtures/deeplab2/<name>.npz`` were written by
``tools/golden/deeplab2_golden.py`` from deeplab2 itself (its commit, the TF
version and the configuration are in each file's ``metadata``): a small
kMaX-DeepLab and a small MaX-DeepLab-S with random weights (batch-norm statistics
and zero-initialised gammas included), the checkpoint deeplab2 saved for them
(every variable, keyed by its checkpoint name), a random image and deeplab2's
inference outputs on it. ``<name>.gin`` configures our model as that deeplab2
model. Here the checkpoint is written back to a TF checkpoint, imported into our
model with ``import_deeplab2.import_checkpoint`` and our outputs must equal
deeplab2's to 1e-4: a mapping that swaps two parameters, or lays a kernel out
differently, changes them by far more.
"""

import json
import os

import gin
import numpy as np
import pytest
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic import main as main_lib
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.tools import import_deeplab2 as imp

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "fixtures", "deeplab2")
CASES = ("kmax_r50_tiny", "max_s_tiny")
# Our output -> deeplab2's (common.PRED_TRANSFORMER_CLASS_LOGITS_KEY, ...).
OUTPUTS = {common.PRED_CLASS_LOGITS: "transformer_class_logits",
           common.PRED_MASK_LOGITS: "pixel_space_mask_logits",
           common.PRED_PIXEL_EMBEDDING: "pixel_space_normalized_feature"}
TOLERANCE = 1e-4
# deeplab2's training-only semantic branch, which the importer leaves out.
SEMANTIC_PREFIXES = ("semantic_decoder/", "semantic_head_without_last_layer/",
                     "semantic_last_layer/")


def load_fixture(name: str):
  """(metadata, image [1, H, W, 3] in [0, 255], {checkpoint key: array},
  {deeplab2 output key: array})."""
  with np.load(os.path.join(FIXTURES, f"{name}.npz")) as data:
    metadata = json.loads(str(data["metadata"]))
    checkpoint = {k[len("ckpt/"):]: data[k] for k in data.files if k.startswith("ckpt/")}
    outputs = {k[len("out/"):]: data[k] for k in data.files if k.startswith("out/")}
    return metadata, data["image"], checkpoint, outputs


def write_checkpoint(prefix: str, arrays) -> str:
  """The fixture's variables as a TF checkpoint under their deeplab2 names."""
  names = sorted(arrays)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(arrays[n]) for n in names])
  return prefix


def import_and_run(name: str, image: np.ndarray, prefix: str):
  """Our model from ``<name>.gin`` with the checkpoint at ``prefix`` imported:
  (import report, our outputs on ``image``).

  The gin configuration stays in force through the forward pass: some bindings
  (``resize_bilinear.align_corners``) are read when a layer is called.
  """
  gin.clear_config()
  try:
    main_lib.parse_gin([os.path.join(FIXTURES, f"{name}.gin")], [])
    model = MaskTransformer()
    model(tf.zeros(image.shape), training=False)
    report = imp.import_checkpoint(model, prefix)
    # deeplab2 maps [0, 255] to [-1, 1] inside its model; ours takes [-1, 1].
    outputs = model(tf.constant(image / 127.5 - 1.0, tf.float32), training=False)
    ours = {k: outputs[k].numpy() for k in OUTPUTS}
    # Per layer prediction: the kMaX layers' k-means assignment (argmax over centres).
    ours["aux_mask_logits"] = [a[common.PRED_MASK_LOGITS].numpy()
                               for a in outputs.get(common.AUX_OUTPUTS, ())]
    return report, ours
  finally:
    gin.clear_config()


@pytest.fixture(scope="module", params=CASES)
def imported(request, tmp_path_factory):
  """(name, metadata, import report, our outputs, deeplab2's outputs, checkpoint)."""
  name = request.param
  metadata, image, checkpoint, theirs = load_fixture(name)
  prefix = write_checkpoint(str(tmp_path_factory.mktemp(name) / "ckpt"), checkpoint)
  report, ours = import_and_run(name, image, prefix)
  return name, metadata, report, ours, theirs, checkpoint


def test_fixture_metadata(imported):
  name, metadata, _, _, theirs, checkpoint = imported
  assert metadata["name"] == name
  assert len(metadata["deeplab2_commit"]) == 40
  assert metadata["tensorflow"] and metadata["config"]["input_size"] == 65
  assert metadata["num_checkpoint_variables"] == len(checkpoint)
  for key in OUTPUTS.values():
    # Outputs of order one, not constant: a parity on them means something.
    assert 0.1 < float(np.std(theirs[key])) and float(np.max(np.abs(theirs[key]))) < 50, key


def test_every_model_variable_is_imported(imported):
  _, _, report, _, _, checkpoint = imported
  model_keys = [k for k in checkpoint
                if not imp._normalise_key(k).startswith(SEMANTIC_PREFIXES)]  # pylint: disable=protected-access
  assert report.assigned == len(model_keys)
  # Left over: exactly deeplab2's training-only semantic branch.
  semantic = sorted(imp._normalise_key(k) for k in checkpoint  # pylint: disable=protected-access
                    if imp._normalise_key(k).startswith(SEMANTIC_PREFIXES))  # pylint: disable=protected-access
  assert semantic and report.unused_checkpoint_keys == semantic


@pytest.mark.parametrize("ours_key", sorted(OUTPUTS))
def test_outputs_match_deeplab2(imported, ours_key):
  name, _, _, ours, theirs, _ = imported
  want = theirs[OUTPUTS[ours_key]]
  got = ours[ours_key]
  assert got.shape == want.shape, (name, ours_key)
  np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE,
                             err_msg=f"{name}: {ours_key} vs deeplab2 {OUTPUTS[ours_key]}")


def test_kmeans_layers_assign_to_several_centres(imported):
  # kMaX's hard assignment (argmax over centres) is exercised only if it picks
  # several centres, by margins that no error within TOLERANCE can flip.
  name, metadata, _, ours, _, _ = imported
  layers = ours["aux_mask_logits"]
  if metadata["config"]["meta_architecture"] != "kmax":
    assert not layers, name  # MaX-DeepLab: no per-layer predictions
    return
  assert len(layers) == sum(metadata["config"]["transformer_decoder"]["num_blocks"])
  for logits in layers:
    top2 = np.sort(logits[0], axis=-1)[..., -2:]
    assert len(np.unique(np.argmax(logits[0], axis=-1))) >= 3, name
    assert float(np.min(top2[..., 1] - top2[..., 0])) > 2 * TOLERANCE, name
