"""The exported models that tests/export/test_signatures.py and test_tflite.py check.

Every family's model is built from gin with its initial weights (what matters
there is that export, reload and conversion change nothing, not what the weights
learnt); the postprocessors' thresholds are lowered so that the maps hold many
segments. To keep the suite's time in check, all families are built, exported
(and the TFLite ones converted) in one process and the SavedModels loaded and
run in one other, once per session: each family beyond the first costs its model
build, export and runs, not two more TensorFlow start-ups.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

# One CPU-sized recipe per model family.
FAMILY_GIN_FILES = [
    "experiments/quickstart/kmax_deeplab_shapes.gin",
    "experiments/quickstart/max_deeplab_shapes.gin",
    "experiments/quickstart/panoptic_segformer_shapes.gin",
    "experiments/quickstart/cmt_deeplab_shapes.gin",
]

# Keep every slot and pixel, so the maps are far from all-void with untrained weights.
LOW_THRESHOLDS = [
    "PixelwisePanopticPostprocessor.class_threshold=0.0",
    "PixelwisePanopticPostprocessor.pixel_confidence_threshold=0.0",
    "PixelwisePanopticPostprocessor.thing_area_threshold=0",
    "PixelwisePanopticPostprocessor.stuff_area_threshold=0",
    # Panoptic SegFormer's mask-wise merging: an untrained model's sigmoid class
    # confidences are far below the 0.3 of the recipe, and its mask logits are
    # mostly positive, so at the recipe's 0.5 the first slot claims nearly every
    # pixel; at 0.9 the binary masks are sparse and the maps hold ~10 segments.
    "MaskWiseMergingPostprocessor.confidence_threshold=0.0",
    "MaskWiseMergingPostprocessor.mask_threshold=0.9",
    "MaskWiseMergingPostprocessor.min_area=0",
    # The recipes add Mask2Former's semantic / instance results
    # (configs/postprocess/mask_results.gin); these checks read the panoptic maps
    # and their semantic / instance parts, so the panoptic postprocessor's are
    # passed through. tests/export/test_mask_results_export.py checks the others.
    "MaskResultsPostprocessor.semantic_from_masks=False",
    "MaskResultsPostprocessor.instance_masks=False",
]

# Families whose TFLite conversion needs only TFLite's built-in ops
# (tests/export/test_tflite.py); a family that needs the Flex delegate goes to a
# list run with select_tf_ops=True. Each is one of FAMILY_GIN_FILES: its TFLite
# model is converted from the same in-memory model as its SavedModel.
TFLITE_BUILTIN_GIN_FILES = [
    "experiments/quickstart/kmax_deeplab_shapes.gin",
]

# Builds the model, computes the reference maps image by image straight from the
# model and postprocessor, exports, and saves inputs and references; for the
# TFLite families, also converts the same module and runs the TFLite model.
_BUILD_AND_EXPORT = """
import io, json, sys
import gin
import numpy as np
import tensorflow as tf
import tf_keras
from PIL import Image
sys.path.insert(0, {repo!r})
from deeplab_panoptic import common, main as main_lib
from deeplab_panoptic.data import tfrecord
from deeplab_panoptic.export import saved_model, tflite
from deeplab_panoptic.training import experiment

# Every quickstart family trains on the synthetic shapes dataset.
from deeplab_panoptic.data.dataset_info import SHAPES as info

def picture(height, width, seed):
  # Smooth colour fields and a few discs: closer to a photo than noise.
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width] / max(height, width)
  image = np.stack([np.sin(6 * x + c) * np.cos(4 * y - c) for c in rng.uniform(0, 3, 3)], -1)
  for _ in range(4):
    cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.3)
    image[(y - cy) ** 2 + (x - cx) ** 2 < r * r] = rng.uniform(-1, 1, 3)
  return np.clip(127.5 * (image + 1), 0, 255).astype(np.uint8)

same = [picture(100, 150, 1), picture(100, 150, 2)]
other = picture(170, 90, 3)
buf = io.BytesIO(); Image.fromarray(other).save(buf, format="JPEG", quality=90)
other_jpeg = buf.getvalue()
other_decoded = tf.io.decode_image(other_jpeg, channels=3).numpy()
encoded = [tfrecord.encode_png(same[0]), other_jpeg, tfrecord.encode_png(same[1])]
mixed = [same[0], other_decoded, same[1]]
examples = [tfrecord.make_example(e, "png" if i != 1 else "jpeg", f"im{{i}}.png",
                                  im.shape[0], im.shape[1], None, info.label_divisor,
                                  info.ignore_label).SerializeToString()
            for i, (e, im) in enumerate(zip(encoded, mixed))]

def reference(exp, module, image):
  # The in-memory model, one image at a time: preprocess, model, postprocess,
  # crop the valid part and resize it back (nearest) to the image size.
  inputs, (rh, rw) = saved_model.fit_and_pad(tf.constant(image[None]), module.input_size,
                                             *module._resize)
  pred = exp.postprocessor(exp.model(inputs, training=False), module.input_size)
  pan = pred[common.PANOPTIC][0, :int(rh), :int(rw), None]
  return tf.image.resize(pan, image.shape[:2], method="nearest")[..., 0].numpy()

for family, gin_file in enumerate({gin_files!r}):
  gin.clear_config()
  main_lib.parse_gin([gin_file], {params!r})
  # Fixed initial weights: with some draws an untrained model puts every pixel in
  # one or two slots, and the maps would test nothing.
  tf_keras.utils.set_random_seed(0)
  exp = experiment.Experiment(f"{tmp}/run{{family}}", "export")
  module = saved_model.PanopticExportModule(exp.model, exp.postprocessor,
                                            dataset_info=exp.info)
  ref_same = np.stack([reference(exp, module, im) for im in same])
  ref_mixed = [reference(exp, module, im) for im in mixed]
  saved_model.export_saved_model(module, f"{tmp}/export{{family}}")
  np.savez(f"{tmp}/ref{{family}}.npz", same=np.stack(same), ref_same=ref_same,
           encoded=np.array(encoded, dtype=object), examples=np.array(examples, dtype=object),
           **{{f"ref_mixed{{i}}": r for i, r in enumerate(ref_mixed)}})
  if gin_file in {tflite_files!r}:
    # The TFLite model of the same module, on one picture at the model input size.
    path = tflite.export_tflite(module, f"{tmp}/model{{family}}.tflite")
    h, w = module.input_size
    y, x = np.mgrid[:h, :w] / max(h, w)
    image = np.stack([np.sin(7 * x + c) * np.cos(5 * y - c) for c in (0.3, 1.1, 2.0)], -1)
    image = np.clip(127.5 * (image + 1), 0, 255).astype(np.uint8)[None]
    expected = module.serve(tf.constant(image))[common.PANOPTIC].numpy()
    runner = tf.lite.Interpreter(model_path=path).get_signature_runner()
    got = runner(images=image)[common.PANOPTIC]
    np.savez(f"{tmp}/tflite{{family}}.npz", expected=expected, got=got)
"""

# A fresh process: loads each family's SavedModel and runs each signature.
_LOAD_AND_RUN = """
import json, numpy as np, tensorflow as tf
for family in range({num_families}):
  ref = np.load(f"{tmp}/ref{{family}}.npz", allow_pickle=True)
  loaded = tf.saved_model.load(f"{tmp}/export{{family}}")
  sigs = loaded.signatures
  out = {{}}
  def keep(name, result):
    for key, value in result.items():
      out[f"{{name}}/{{key}}"] = value.numpy()
  keep("serving_default", sigs["serving_default"](images=tf.constant(ref["same"])))
  keep("serving_default_single", sigs["serving_default"](images=tf.constant(ref["same"][:1])))
  keep("serve_encoded_images",
       sigs["serve_encoded_images"](encoded_images=tf.constant(list(ref["encoded"]))))
  keep("serve_tf_example",
       sigs["serve_tf_example"](serialized_examples=tf.constant(list(ref["examples"]))))
  try:
    sigs["serve_encoded_images"](encoded_images=tf.constant([b"not an image"]))
    error = ""
  except tf.errors.InvalidArgumentError as e:
    error = e.message
  out["export_info"] = np.array(loaded.export_info().numpy().decode())
  out["garbage_error"] = np.array(error)
  np.savez(f"{tmp}/out{{family}}.npz", **out)
"""


def _run(script: str, cwd: str) -> None:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", script], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=1800, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="session")
def exported_families(tmp_path_factory):
  """Builds, exports, reloads and runs every family (and converts and runs the
  TFLite families); returns the scratch directory."""
  tmp = tmp_path_factory.mktemp("signatures")
  paths = {"repo": REPO_ROOT, "gin_files": FAMILY_GIN_FILES, "params": LOW_THRESHOLDS,
           "tmp": str(tmp), "num_families": len(FAMILY_GIN_FILES),
           "tflite_files": TFLITE_BUILTIN_GIN_FILES}
  _run(textwrap.dedent(_BUILD_AND_EXPORT).format(**paths), REPO_ROOT)
  _run(textwrap.dedent(_LOAD_AND_RUN).format(**paths), str(tmp))
  return tmp
