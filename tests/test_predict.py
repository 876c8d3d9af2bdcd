"""``python -m deeplab_panoptic.predict``: COCO panoptic files and overlays from a SavedModel."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from deeplab_panoptic import predict
from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.data import inspect as inspect_lib
from deeplab_panoptic.data import coco_panoptic
from tests.conftest import REPO_ROOT

QUICKSTART = "experiments/quickstart/kmax_deeplab_shapes.gin"


def test_find_images_errors(tmp_path):
  with pytest.raises(predict.PredictError, match="no image file matches"):
    predict.find_images(str(tmp_path / "*.jpg"))
  for folder in ("a", "b"):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / "x.jpg").write_bytes(b"")
  with pytest.raises(predict.PredictError, match="same name stem 'x'"):
    predict.find_images(f"{tmp_path}/a/*.jpg,{tmp_path}/b/*.jpg")


def test_read_image_names_the_file(tmp_path):
  path = tmp_path / "broken.png"
  path.write_bytes(b"not an image")
  with pytest.raises(ValueError, match=f"cannot read image {path}"):
    predict.read_image(str(path))


def test_panoptic_overlay_draws_names_and_outlines():
  info = dataset_info_lib.SHAPES
  image = np.full((64, 96, 3), 100, np.uint8)
  panoptic = np.full((64, 96), 4 * info.label_divisor, np.int32)  # ground (stuff)
  panoptic[10:40, 10:50] = 0 * info.label_divisor + 1               # circle #1
  plain = inspect_lib.panoptic_overlay(image, panoptic, info, class_names=False)
  named = inspect_lib.panoptic_overlay(image, panoptic, info)
  assert plain.shape == named.shape == image.shape
  assert np.all(plain[9, 20:40] == 255)  # the instance outline (row above the top edge)
  assert np.any(plain != named)           # the names


def _export(tmp_path) -> str:
  """A tiny kMaX with the COCO description (133 classes), exported with its
  initial weights (fixed by a seed).

  What is checked is predict's files, not what the model learnt: the thresholds
  are lowered so the untrained model predicts segments, and nothing is trained.
  """
  params = [
      "PixelwisePanopticPostprocessor.class_threshold=0.0",
      "PixelwisePanopticPostprocessor.pixel_confidence_threshold=0.0",
  ]
  export_dir = str(tmp_path / "run" / "export")
  # The export module that --mode=export saves, around the freshly built model.
  script = textwrap.dedent(f"""
      import sys
      import tf_keras
      sys.path.insert(0, {REPO_ROOT!r})
      from deeplab_panoptic import main as main_lib
      from deeplab_panoptic.export import saved_model
      from deeplab_panoptic.training import experiment
      main_lib.parse_gin([{QUICKSTART!r}, "configs/datasets/coco.gin"], {params!r})
      tf_keras.utils.set_random_seed(0)
      exp = experiment.Experiment({str(tmp_path / "run")!r}, "export")
      saved_model.export_saved_model(exp.export_module(), {export_dir!r})
  """)
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return export_dir


@pytest.mark.slow
def test_predict_on_real_coco_images(tmp_path, coco_sample_dir):
  export_dir = _export(tmp_path)
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image")
  out = tmp_path / "predictions"
  images = os.path.join(coco_sample_dir, "input_images", "*.jpg")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, "-m", "deeplab_panoptic.predict", f"--saved_model={export_dir}",
       f"--images={images},{broken}", f"--output_dir={out}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
  # The unreadable image: one error line, skipped, exit status 1; the others written.
  assert proc.returncode == 1, proc.stderr[-3000:]
  errors = [l for l in proc.stderr.splitlines() if "predict: error:" in l]
  assert len(errors) == 1 and f"cannot read image {broken}" in errors[0], proc.stderr
  assert "Wrote 2 predictions" in proc.stdout

  result = json.loads((out / "panoptic.json").read_text())
  categories = {c["id"]: c for c in result["categories"]}
  assert len(categories) == 133
  names = sorted(os.listdir(os.path.join(coco_sample_dir, "input_images")))
  assert [im["file_name"] for im in result["images"]] == names
  assert sorted(a["image_id"] for a in result["annotations"]) == sorted(
      int(os.path.splitext(n)[0]) for n in names)
  num_segments = 0
  for image_entry, annotation in zip(result["images"], result["annotations"]):
    assert annotation["image_id"] == image_entry["id"]
    ids = coco_panoptic.read_id_png(str(out / "panoptic" / annotation["file_name"]))
    assert ids.shape == (image_entry["height"], image_entry["width"])
    values, counts = np.unique(ids, return_counts=True)
    area_of = dict(zip(values.tolist(), counts.tolist()))
    area_of.pop(0, None)
    segments = {s["id"]: s for s in annotation["segments_info"]}
    # Every PNG id has a segments_info entry and vice versa.
    assert set(area_of) == set(segments)
    for seg_id, seg in segments.items():
      assert seg["area"] == area_of[seg_id]
      assert seg["category_id"] in categories
      assert 0.0 <= seg["score"] <= 1.0
      x, y, w, h = seg["bbox"]
      assert np.any(ids[y:y + h, x:x + w] == seg_id)
    num_segments += len(segments)
    picture = np.asarray(Image.open(out / "overlays" / annotation["file_name"]))
    original = np.asarray(Image.open(os.path.join(coco_sample_dir, "input_images",
                                                  image_entry["file_name"])).convert("RGB"))
    assert picture.shape == original.shape
    assert np.any(picture != original)
  assert num_segments > 0
  # Nothing half-written: no temporary files remain.
  leftovers = [f for _, _, files in os.walk(out) for f in files if ".tmp" in f]
  assert not leftovers, leftovers
