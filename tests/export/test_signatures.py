"""Every model family's SavedModel, loaded in a fresh process, equals the in-memory model.

A new family plugs in by adding its gin file to ``FAMILY_GIN_FILES``. The model
is built from gin with its initial weights (what matters here is that export and
reload change nothing, not what the weights learnt); the postprocessors'
thresholds are lowered so that the maps hold many segments.

To keep the suite's time in check, all families are built and exported in one
process and loaded and run in one other (a module-scoped fixture): each family
beyond the first costs its model build, export and runs, not two more
TensorFlow start-ups.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
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
]

_SIGNATURES = ("serving_default", "serve_encoded_images", "serve_tf_example")

# Builds the model, computes the reference maps image by image straight from the
# model and postprocessor, exports, and saves inputs and references.
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
from deeplab_panoptic.export import saved_model
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


def _check_segments(out, name, panoptic, label_divisor):
  """segment_ids / segment_areas agree with the returned panoptic map."""
  ids, areas = out[f"{name}/segment_ids"], out[f"{name}/segment_areas"]
  classes = out[f"{name}/segment_classes"]
  for b in range(panoptic.shape[0]):
    values, counts = np.unique(panoptic[b], return_counts=True)
    count_of = dict(zip(values.tolist(), counts.tolist()))
    for slot in range(ids.shape[1]):
      if ids[b, slot] < 0:
        assert areas[b, slot] == 0
        continue
      assert ids[b, slot] // label_divisor == classes[b, slot]
      assert areas[b, slot] == count_of[ids[b, slot]]
    # Every non-void segment of the map is some slot's segment.
    listed = set(ids[b][ids[b] >= 0].tolist())
    assert {v for v in values.tolist() if v // label_divisor != 255} <= listed


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """Builds, exports, reloads and runs every family; returns the scratch directory."""
  tmp = tmp_path_factory.mktemp("signatures")
  paths = {"repo": REPO_ROOT, "gin_files": FAMILY_GIN_FILES, "params": LOW_THRESHOLDS,
           "tmp": str(tmp), "num_families": len(FAMILY_GIN_FILES)}
  _run(textwrap.dedent(_BUILD_AND_EXPORT).format(**paths), REPO_ROOT)
  _run(textwrap.dedent(_LOAD_AND_RUN).format(**paths), str(tmp))
  return tmp


@pytest.mark.slow
@pytest.mark.parametrize("family", range(len(FAMILY_GIN_FILES)),
                         ids=[os.path.basename(f)[:-4] for f in FAMILY_GIN_FILES])
def test_saved_model_signatures_match_in_memory_model(family, exported):
  tmp_path = exported
  assert (tmp_path / f"export{family}" / "saved_model.pb").exists()
  assert not (tmp_path / f"export{family}.tmp").exists()
  ref = np.load(tmp_path / f"ref{family}.npz", allow_pickle=True)
  out = np.load(tmp_path / f"out{family}.npz")

  info = json.loads(str(out["export_info"]))
  divisor = info["dataset_info"]["label_divisor"]
  ignore = info["dataset_info"]["ignore_label"]
  assert json.loads((tmp_path / f"export{family}" / "assets.extra" / "export_info.json"
                     ).read_text()) == info

  # Not a trivial comparison: the reference maps hold several non-void segments.
  labels = np.unique(ref["ref_same"])
  assert len(labels[labels // divisor != ignore]) > 2, labels

  # uint8 images, batch of two and batch of one.
  np.testing.assert_array_equal(out["serving_default/panoptic"], ref["ref_same"])
  np.testing.assert_array_equal(out["serving_default_single/panoptic"], ref["ref_same"][:1])
  pan = out["serving_default/panoptic"]
  np.testing.assert_array_equal(out["serving_default/semantic"], pan // divisor)
  np.testing.assert_array_equal(out["serving_default/instance"], pan % divisor)
  np.testing.assert_array_equal(out["serving_default/original_height"], [100, 100])
  _check_segments(out, "serving_default", pan, divisor)

  # Encoded files and tf.Examples of mixed sizes: each image's part of the padded
  # batch is its reference map, the rest is void.
  for name in ("serve_encoded_images", "serve_tf_example"):
    pan = out[f"{name}/panoptic"]
    assert pan.shape == (3, 170, 150)
    np.testing.assert_array_equal(out[f"{name}/original_height"], [100, 170, 100])
    np.testing.assert_array_equal(out[f"{name}/original_width"], [150, 90, 150])
    for i in range(3):
      expected = ref[f"ref_mixed{i}"]
      h, w = expected.shape
      np.testing.assert_array_equal(pan[i, :h, :w], expected, err_msg=f"{name} image {i}")
      assert np.all(pan[i, h:] == ignore * divisor) and np.all(pan[i, :, w:] == ignore * divisor)
      assert np.all(out[f"{name}/semantic"][i, h:] == ignore)
    _check_segments(out, name, pan, divisor)

  assert "Unknown image file format" in str(out["garbage_error"]), str(out["garbage_error"])
