r"""Predictions of an exported SavedModel on image files (panoptic or semantic).

  python -m deeplab_panoptic.predict --saved_model=runs/quickstart/export \
      --images='photos/*.jpg' --output_dir=/tmp/predictions [--nooverlays]

Output, in ``--output_dir``:

* ``panoptic/<image stem>.png``: COCO panoptic PNG of each image (segment id
  ``R + 256 G + 256^2 B``, 0 for void), at the image's original size, written by
  the library's COCO panoptic writer (``data.coco_panoptic.CocoPanopticWriter``);
* ``panoptic.json``: COCO panoptic ``images``, ``annotations`` (``segments_info``
  with ``id``, ``category_id`` -- the dataset's own ids --, ``iscrowd``,
  ``area``, ``bbox`` and the segment's ``score``) and ``categories``; ready for
  ``python -m deeplab_panoptic.evaluation.coco_pq`` or panopticapi;
* ``overlays/<image stem>.png``: the image with each segment tinted, instance
  and segment outlines in white and class names written on the segments.

A semantic-only model (its export declares no panoptic result) writes
``semantic/<image stem>.png`` instead (each pixel the dataset's category id,
8-bit, or 16-bit when an id exceeds 255; unlabelled 0) with ``semantic.json``
(``images`` and ``categories``), and the overlays tint each class.

The dataset description (category ids, names, colours) is read from the
SavedModel itself (``export_info``), so no gin file is needed. The model is
loaded with ``deeplab_panoptic.load`` (``inference.py``), and ``--batch_size``
images of any sizes go to the model in one call.

Unreadable images are skipped: each gets one line ``predict: error: cannot read
image <path>: <reason>`` on stderr, the others are predicted, and the command
exits with status 1 when any image was skipped (0 otherwise). Every file is
written to a temporary name and renamed, ``panoptic.json`` last, so an
interrupted run leaves no half-written file.
"""

import glob
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags
import numpy as np
from PIL import Image

# Quiet TensorFlow's C++ start-up lines, before anything imports it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from deeplab_panoptic import common  # pylint: disable=g-import-not-at-top
from deeplab_panoptic import inference
from deeplab_panoptic.data import inspect as inspect_lib
from deeplab_panoptic.data import coco_panoptic

PANOPTIC_JSON = "panoptic.json"
PANOPTIC_DIR = "panoptic"
SEMANTIC_JSON = "semantic.json"
SEMANTIC_DIR = "semantic"
OVERLAY_DIR = "overlays"


class PredictError(ValueError):
  """A bad input that stops the command (one line, naming what and where)."""


def find_images(pattern: str) -> List[str]:
  """Files matching comma-separated globs, sorted, directories left out.

  Raises:
    PredictError: when nothing matches, or two images share a file stem (their
      outputs would overwrite each other).
  """
  files = sorted({f for p in pattern.split(",") if p.strip()
                  for f in glob.glob(os.path.expanduser(p.strip())) if os.path.isfile(f)})
  if not files:
    raise PredictError(f"no image file matches --images={pattern!r}.")
  by_stem: Dict[str, str] = {}
  for path in files:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in by_stem:
      raise PredictError(f"{by_stem[stem]} and {path} have the same name stem {stem!r}; "
                         "their outputs would overwrite each other.")
    by_stem[stem] = path
  return files


def read_image(path: str) -> np.ndarray:
  """An image file as uint8 ``[H, W, 3]`` RGB.

  Raises:
    ValueError: naming the file when it cannot be read or decoded.
  """
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"))
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise ValueError(f"cannot read image {path}: {e}") from e


def segment_scores(panoptic: np.ndarray, prediction: Dict[str, np.ndarray],
                   label_divisor: int, ignore_label: int) -> List[float]:
  """The score of each non-void segment, in ascending panoptic label order.

  That is the order of ``coco_panoptic.panoptic_to_coco``'s segments. A segment's
  score is the highest class confidence among the slots that make it (several
  stuff slots of one class form one segment).
  """
  ids = prediction["segment_ids"]
  scores = prediction[common.SEGMENT_SCORES]
  labels = [int(v) for v in np.unique(panoptic) if v // label_divisor != ignore_label]
  return [float(scores[ids == label].max()) if np.any(ids == label) else 0.0
          for label in labels]


def predict(saved_model_dir: str, image_pattern: str, output_dir: str,
            overlays: bool = True, progress: bool = True, batch_size: int = 8
            ) -> Dict[str, Any]:
  """Predicts every image and writes COCO panoptic files and overlays.

  Args:
    saved_model_dir: the exported SavedModel (or a training run's model
      directory: anything ``deeplab_panoptic.load`` takes).
    image_pattern: comma-separated globs of image files.
    output_dir: the output folder (created).
    overlays: also write overlay pictures.
    progress: show a progress bar on stderr.
    batch_size: images per model call (sizes may differ within a call).

  Returns:
    ``{"json": path, "predicted": [files], "skipped": {file: reason}}``.

  Raises:
    PredictError: on a bad ``--images`` or ``--saved_model`` (nothing written).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  files = find_images(image_pattern)
  try:
    predictor = inference.load(saved_model_dir)
  except inference.LoadError as e:
    raise PredictError(f"{e} (--saved_model)") from e
  info = predictor.info
  writer = None
  if common.PANOPTIC in predictor.results:
    writer = coco_panoptic.CocoPanopticWriter(
        output_dir, info.dataset_id_from_train_id(), info.label_divisor,
        info.ignore_label, categories=info.coco_categories(), png_folder=PANOPTIC_DIR,
        json_name=PANOPTIC_JSON)
  else:
    os.makedirs(os.path.join(output_dir, SEMANTIC_DIR), exist_ok=True)
  if overlays:
    os.makedirs(os.path.join(output_dir, OVERLAY_DIR), exist_ok=True)
  images, predicted, skipped = [], [], {}
  bar = tqdm(total=len(files), desc="predict", unit="image", disable=not progress,
             file=sys.stderr)
  for start in range(0, len(files), batch_size):
    batch = []
    for path in files[start:start + batch_size]:
      try:
        batch.append((path, read_image(path)))
      except ValueError as e:
        skipped[path] = str(e)
        bar.write(f"predict: error: {e}; skipped.", file=sys.stderr)
    predictions = predictor.predict([image for _, image in batch]) if batch else []
    for (path, image), prediction in zip(batch, predictions):
      images.append(_write_one(output_dir, path, image, prediction, writer, info, overlays))
      predicted.append(path)
    bar.update(len(files[start:start + batch_size]))
  bar.close()
  json_path = os.path.join(output_dir, PANOPTIC_JSON if writer else SEMANTIC_JSON)
  coco_panoptic.write_json(json_path, {
      "images": images, "categories": info.coco_categories(),
      **({"annotations": writer.annotations} if writer is not None else {})})
  return {"json": json_path, "predicted": predicted, "skipped": skipped}


def _write_one(output_dir: str, path: str, image: np.ndarray,
               prediction: Dict[str, np.ndarray], writer, info, overlays: bool) -> dict:
  """Writes one image's prediction files; returns its COCO ``images`` entry."""
  name = os.path.basename(path)
  if writer is not None:
    shown, file_name, image_id = _write_panoptic(writer, name, prediction, info)
  else:
    shown, file_name, image_id = _write_semantic(output_dir, name, prediction, info)
  if overlays:
    coco_panoptic.write_png(os.path.join(output_dir, OVERLAY_DIR, file_name),
                            inspect_lib.panoptic_overlay(image, shown, info))
  return {"id": image_id, "file_name": name,
          "height": int(image.shape[0]), "width": int(image.shape[1])}


def _write_panoptic(writer, name: str, prediction: Dict[str, np.ndarray], info):
  """Adds one panoptic prediction (with segment scores) to the COCO writer.

  Returns:
    (the panoptic map ``[H, W]``, the PNG's file name, the image id).
  """
  panoptic = prediction[common.PANOPTIC]
  annotation = writer.add(name, panoptic)
  scores = segment_scores(panoptic, prediction, info.label_divisor, info.ignore_label)
  for segment, score in zip(annotation["segments_info"], scores):
    segment["score"] = round(score, 6)
  return panoptic, annotation["file_name"], annotation["image_id"]


def _write_semantic(output_dir: str, name: str, prediction: Dict[str, np.ndarray], info):
  """Writes one semantic prediction as a PNG of the dataset's category ids.

  Returns:
    (the semantic map as panoptic labels ``class * label_divisor`` ``[H, W]``,
    the PNG's file name, the image id).
  """
  semantic = prediction[common.SEMANTIC].astype(np.int64)
  to_dataset = info.dataset_id_from_train_id()
  ids = np.asarray([to_dataset[c] for c in range(info.num_classes)] + [0], np.int64)
  labels = ids[np.clip(semantic, 0, len(ids) - 1)]
  stem = os.path.splitext(name)[0]
  file_name = stem + ".png"
  png = labels.astype(np.uint16 if labels.max(initial=0) > 255 else np.uint8)
  coco_panoptic.write_png(os.path.join(output_dir, SEMANTIC_DIR, file_name), png)
  return semantic * info.label_divisor, file_name, stem


FLAGS = flags.FLAGS


def define_flags() -> None:
  flags.DEFINE_string("saved_model", None, "SavedModel folder (main.py --mode=export), or "
                      "a training run's --model_dir (its latest checkpoint).")
  flags.DEFINE_string("images", None, "Glob(s) of image files, comma-separated.")
  flags.DEFINE_string("output_dir", None, "Output folder.")
  flags.DEFINE_boolean("overlays", True, "Write overlay pictures.")
  flags.DEFINE_boolean("progress", True, "Show a progress bar.")
  flags.DEFINE_integer("batch_size", 8, "Images per model call (sizes may differ).",
                       lower_bound=1)


def main(argv: Sequence[str]) -> Optional[int]:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  try:
    result = predict(FLAGS.saved_model, FLAGS.images, FLAGS.output_dir, FLAGS.overlays,
                     FLAGS.progress, FLAGS.batch_size)
  except PredictError as e:
    print(f"predict: error: {e}", file=sys.stderr)
    return 1
  folder = PANOPTIC_DIR if result["json"].endswith(PANOPTIC_JSON) else SEMANTIC_DIR
  print(f"Wrote {len(result['predicted'])} predictions to {FLAGS.output_dir}: "
        f"{os.path.basename(result['json'])}, {folder}/"
        + (f", {OVERLAY_DIR}/" if FLAGS.overlays else ""))
  if result["skipped"]:
    print(f"predict: {len(result['skipped'])} of "
          f"{len(result['skipped']) + len(result['predicted'])} images skipped "
          "(unreadable, see the errors above).", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  define_flags()
  flags.mark_flags_as_required(["saved_model", "images", "output_dir"])
  app.run(main)
