"""docs/custom_data.md as a test: a folder in COCO panoptic format -> converted
TFRecords -> trained, evaluated and exported model, through the commands of the
walkthrough (``data.convert --dataset=coco_format``, ``main.py``), with a copy of
``experiments/custom/coco_format_template.gin`` edited as the document says.

The dataset: shapes images (``data/shapes.py``) written out in COCO panoptic
format by the library's one codec (``data/coco_panoptic.py``), under category
ids and names of its own (not the shapes ones, so nothing can come from the
shapes description), validation images of another size than the training ones.
The model is the template's kMaX shrunk by tests/fixtures/custom_data/cpu_sized_kmax.gin.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from deeplab_panoptic.data import coco_panoptic
from deeplab_panoptic.data import shapes
from tests.conftest import REPO_ROOT, run_main

TEMPLATE = os.path.join(REPO_ROOT, "experiments", "custom", "coco_format_template.gin")
CPU_SIZED = os.path.join(REPO_ROOT, "tests", "fixtures", "custom_data", "cpu_sized_kmax.gin")
# The custom dataset's categories, in the shapes train-id order (circle, square,
# triangle, sky, ground) but with ids and names of its own.
CATEGORIES = [
    {"id": 11, "name": "ball", "isthing": 1, "color": [220, 20, 60]},
    {"id": 12, "name": "box", "isthing": 1, "color": [0, 0, 142]},
    {"id": 17, "name": "wedge", "isthing": 1, "color": [250, 170, 30]},
    {"id": 40, "name": "air", "isthing": 0, "color": [70, 130, 180]},
    {"id": 42, "name": "earth", "isthing": 0, "color": [107, 142, 35]},
]
SPLITS = {"train": (6, (128, 128)), "val": (3, (96, 120))}  # images, (height, width)


def _write_coco_folder(root: str) -> None:
  """``root/images/<split>/``, ``root/annotations/panoptic_<split>{.json,/}``."""
  to_dataset = {train_id: c["id"] for train_id, c in enumerate(CATEGORIES)}
  for split, (count, (height, width)) in SPLITS.items():
    image_dir = os.path.join(root, "images", split)
    os.makedirs(image_dir)
    writer = coco_panoptic.CocoPanopticWriter(
        os.path.join(root, "annotations"), to_dataset, label_divisor=256, ignore_label=255,
        categories=CATEGORIES, png_folder=f"panoptic_{split}",
        json_name=f"panoptic_{split}.json")
    for index in range(count):
      image, panoptic = shapes.generate_example(7, index + (1000 if split == "val" else 0),
                                                height=height, width=width)
      name = f"{split}_{index:03d}.png"
      Image.fromarray(image).save(os.path.join(image_dir, name))
      writer.add(name, panoptic)
    writer.close()


def _convert(root: str, data_dir: str, split: str) -> None:
  proc = subprocess.run(
      [sys.executable, "-m", "deeplab_panoptic.data.convert", "--dataset=coco_format",
       "--dataset_name=my_data", f"--output_dir={data_dir}",
       f"--panoptic_json={root}/annotations/panoptic_{split}.json",
       f"--panoptic_dir={root}/annotations/panoptic_{split}",
       f"--image_dir={root}/images/{split}", f"--split={split}", "--num_shards=1",
       "--num_workers=1"],
      cwd=REPO_ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
      capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]


def _my_recipe(path: str, data_dir: str) -> str:
  """The user's copy of the template, with the edits docs/custom_data.md asks for."""
  text = open(TEMPLATE, encoding="utf-8").read()
  edits = {"DATA_DIR = 'data/my_data'": f"DATA_DIR = '{data_dir}'",
           "NUM_CLASSES = 10   # <- yours": "NUM_CLASSES = 5",
           "InputConfig.max_original_size = (640, 640)":
               "InputConfig.max_original_size = (128, 128)"}
  for old, new in edits.items():
    assert text.count(old) == 1, old
    text = text.replace(old, new)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  return path


@pytest.mark.slow
def test_custom_data_walkthrough(tmp_path):
  root, data_dir, model_dir = (str(tmp_path / d) for d in ("my_data", "tfrecords", "run"))
  _write_coco_folder(root)
  for split in SPLITS:
    _convert(root, data_dir, split)
  described = json.load(open(os.path.join(data_dir, "dataset_info.json"), encoding="utf-8"))
  assert [c["id"] for c in described["categories"]] == [c["id"] for c in CATEGORIES]

  # The recipe is used from another folder than the repository: every dataset
  # path comes from DATA_DIR, none from the working directory.
  recipe = _my_recipe(str(tmp_path / "my_data.gin"), data_dir)
  gin_files = [f"--gin_file={recipe}", f"--gin_file={CPU_SIZED}"]
  # Generous limits: on 2 shared cores at load 8-10 a niced run gets a tenth of a core.
  result = run_main(*gin_files, "--mode=train_and_eval", f"--model_dir={model_dir}",
                    timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.load(open(os.path.join(model_dir, "eval", "results.json"), encoding="utf-8"))
  assert results["step"] == 4
  for key in ("PQ", "SQ", "RQ", "PQ_thing", "PQ_stuff"):
    assert 0.0 <= results[key] <= 100.0, key
  # Per-class results under the custom names: the description came from the data.
  assert set(results["per_class"]) == {c["name"] for c in CATEGORIES}

  result = run_main(*gin_files, "--mode=export", f"--model_dir={model_dir}", timeout=1800)
  assert result.returncode == 0, result.stderr[-3000:]
  export_dir = os.path.join(model_dir, "export")
  info = json.load(open(os.path.join(export_dir, "assets.extra", "export_info.json"),
                        encoding="utf-8"))
  assert info["input_size"] == [64, 64]
  assert [(c["id"], c["name"], c["isthing"]) for c in info["dataset_info"]["categories"]] == \
      [(c["id"], c["name"], c["isthing"]) for c in CATEGORIES]
  shutil.rmtree(root)  # The export needs nothing of the source folder.
  assert os.path.isfile(os.path.join(export_dir, "saved_model.pb"))


def test_a_data_dir_binding_moves_every_file_and_an_unread_macro_fails(tmp_path):
  """The start-up checks (no TensorFlow): DATA_DIR is where the patterns are read,
  and a macro nothing reads is an error rather than silently ignored."""
  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.cli import preflight
  from deeplab_panoptic.cli.errors import UsageError
  # pylint: enable=g-import-not-at-top
  data_dir = tmp_path / "elsewhere"
  config = preflight.check_gin([TEMPLATE], [f"DATA_DIR='{data_dir}'"])
  with pytest.raises(UsageError, match=f"train_file_pattern='{data_dir}/train-"):
    preflight.check_data(config, "train")
  data_dir.mkdir()
  (data_dir / "train-00000-of-00001.tfrecord").write_bytes(b"")
  preflight.check_data(config, "train")
  # A pattern with a directory part is used as it is.
  moved = preflight.check_gin([TEMPLATE], [f"DATA_DIR='{data_dir}'",
                                           "ExperimentConfig.train_file_pattern='x/t-*'"])
  with pytest.raises(UsageError, match="train_file_pattern='x/t-\\*'"):
    preflight.check_data(moved, "train")
  with pytest.raises(UsageError, match="macro DATA_DIRR is set but no binding reads it "
                                       r"\(%DATA_DIRR\) \(did you mean DATA_DIR\?\)"):
    preflight.check_gin([TEMPLATE], ["DATA_DIRR='/data/mine'"])
