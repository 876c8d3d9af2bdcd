"""The Python API: ``deeplab_panoptic.load(path).predict(images)``.

  import deeplab_panoptic
  predictor = deeplab_panoptic.load("runs/quickstart/export")   # or "runs/quickstart"
  results = predictor.predict([image_a, image_b])   # numpy uint8 [H, W, 3] or PIL images
  results[0]["panoptic"]                            # int32 [H_a, W_a]

``path`` is either a SavedModel written by ``main.py --mode=export`` or a model
directory of a training run (a checkpoint and its ``operative_config.gin``).
Images of one call may differ in size: they travel as one padded batch with
their sizes (the SavedModel's ``serve_padded_batch`` signature), and each
result is cropped back to its own image's size.
"""

import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from deeplab_panoptic import common

# A training run's directory: the gin configuration main.py saves beside its checkpoints.
OPERATIVE_CONFIG = "operative_config.gin"
# Where main.py --mode=export writes the SavedModel inside a model directory.
EXPORT_SUBDIR = "export"
# Outputs that describe the request rather than one image.
_REQUEST_OUTPUTS = (common.ORIGINAL_HEIGHT, common.ORIGINAL_WIDTH)
# Bindings that make a training run's configuration build for inference on this
# machine: the default strategy, no CPU split, no dataset generation.
_INFERENCE_BINDINGS = (
    "build_strategy.distribution_strategy='off'",
    "build_strategy.tpu=None",
    "build_strategy.num_cpu_devices=0",
    "ExperimentConfig.prepare_data=None",
)


class LoadError(ValueError):
  """``load`` got a path it cannot use (one line, naming the path)."""


# Serving function: (images uint8 [B, H, W, 3], image_sizes int32 [B, 2]) -> outputs.
ServeFn = Callable[[Any, Any], Dict[str, Any]]


class Predictor:
  """A loaded model that predicts batches of images of any sizes.

  Attributes:
    results: the result kinds the model's postprocessor declares
      (``panoptic``, ``semantic``, ``instance``).
    info: the dataset description (``data.dataset_info.DatasetInfo``): class
      names, dataset category ids, label divisor, ignore label.
    export_info: the export description (input size, evaluation resize, ...).
    source: what was loaded (a SavedModel folder or a checkpoint prefix).
  """

  def __init__(self, serve: ServeFn, export_info: Dict[str, Any], info: Any,
               source: str, keep_alive: Any = None):
    self._serve = serve
    self.export_info = export_info
    self.info = info
    self.source = source
    # Exports older than the result declaration were all panoptic.
    self.results = frozenset(export_info.get(
        "results", (common.PANOPTIC, common.SEMANTIC, common.INSTANCE)))
    self._keep_alive = keep_alive  # The loaded object owns the variables.

  def predict(self, images: Sequence[Any], batch_size: int = 8
              ) -> List[Dict[str, np.ndarray]]:
    """Predicts a batch of images of any sizes.

    Args:
      images: a list of numpy uint8 ``[H_i, W_i, 3]`` RGB arrays or PIL images
        (converted to RGB); sizes may differ.
      batch_size: images per model call (a longer list is cut into calls).

    Returns:
      One dict per image, in order, with the declared maps at the image's own
      size (``panoptic``, ``semantic``, ``instance``: int32 ``[H_i, W_i]``;
      ``instance_masks``: bool ``[H_i, W_i, K]``) and the
      per-slot arrays ``[N]`` (``segment_classes``, ``segment_scores``, and for a
      panoptic model ``segment_ids``, ``segment_areas``); see docs/deployment.md.

    Raises:
      TypeError / ValueError: naming the image that is not an RGB uint8 picture.
    """
    arrays = [as_rgb_array(image, f"images[{i}]") for i, image in enumerate(_as_list(images))]
    if batch_size < 1:
      raise ValueError(f"predict: batch_size={batch_size}; use >= 1.")
    results = []
    for start in range(0, len(arrays), batch_size):
      results += self._predict_chunk(arrays[start:start + batch_size])
    return results

  def __call__(self, image: Any) -> Dict[str, np.ndarray]:
    """Predicts one image (``predict([image])[0]``)."""
    return self.predict([image])[0]

  def _predict_chunk(self, arrays: List[np.ndarray]) -> List[Dict[str, np.ndarray]]:
    sizes = np.array([a.shape[:2] for a in arrays], np.int32)          # [B, 2]
    padded = np.zeros((len(arrays),) + tuple(sizes.max(axis=0)) + (3,), np.uint8)
    for i, array in enumerate(arrays):
      padded[i, :array.shape[0], :array.shape[1]] = array
    outputs = {key: np.asarray(value) for key, value in self._serve(padded, sizes).items()}
    per_image = []
    for i, (height, width) in enumerate(sizes):
      result = {}
      for key, value in outputs.items():
        if key in _REQUEST_OUTPUTS:
          continue
        # Maps ([B, H, W]) and mask stacks ([B, H, W, K]) come back padded to the
        # largest image: keep this image's part.
        result[key] = value[i, :height, :width] if value.ndim >= 3 else value[i]
      per_image.append(result)
    return per_image


def _as_list(images: Any) -> List[Any]:
  if isinstance(images, np.ndarray) and images.ndim == 4:
    return list(images)
  if isinstance(images, np.ndarray) or not isinstance(images, (list, tuple)):
    raise TypeError(f"predict takes a list of images, got {type(images).__name__}"
                    + (f" {images.shape}" if isinstance(images, np.ndarray) else "")
                    + "; wrap one image in a list.")
  return list(images)


def as_rgb_array(image: Any, where: str) -> np.ndarray:
  """A numpy uint8 ``[H, W, 3]`` array or a PIL image -> uint8 ``[H, W, 3]``.

  Raises:
    TypeError / ValueError: naming ``where`` and what it got.
  """
  if hasattr(image, "convert") and hasattr(image, "size"):  # A PIL image.
    image = np.asarray(image.convert("RGB"))
  if not isinstance(image, np.ndarray):
    raise TypeError(f"{where}: expected a numpy uint8 [height, width, 3] array or a PIL "
                    f"image, got {type(image).__name__}.")
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
    raise ValueError(f"{where}: expected uint8 [height, width, 3] RGB, got {image.dtype} "
                     f"{list(image.shape)}.")
  return image


def load(path: str) -> Predictor:
  """A predictor from a SavedModel folder or a training run's model directory.

  Args:
    path: a folder written by ``main.py --mode=export`` (holds ``saved_model.pb``),
      or a ``--model_dir`` of a run (holds a checkpoint and ``operative_config.gin``;
      the latest checkpoint is read, and its configuration replaces gin's global
      configuration in this process).

  Raises:
    LoadError: the path holds neither, in one line naming it.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise LoadError(f"deeplab_panoptic.load: {path} is not a directory (give a SavedModel "
                    "folder or a training run's --model_dir).")
  if os.path.isfile(os.path.join(path, "saved_model.pb")):
    return _load_saved_model(path)
  if os.path.isfile(os.path.join(path, OPERATIVE_CONFIG)):
    return _load_checkpoint(path)
  hint = ""
  if os.path.isfile(os.path.join(path, EXPORT_SUBDIR, "saved_model.pb")):
    hint = f" (its SavedModel is {os.path.join(path, EXPORT_SUBDIR)})"
  raise LoadError(f"deeplab_panoptic.load: {path} holds neither a SavedModel "
                  f"(saved_model.pb) nor a training run ({OPERATIVE_CONFIG} and a "
                  f"checkpoint){hint}.")


def _load_saved_model(path: str) -> Predictor:
  """A predictor around an exported SavedModel."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.export import saved_model  # pylint: disable=g-import-not-at-top
  try:
    loaded = tf.saved_model.load(path)
    export_info = saved_model.read_export_info(loaded)
    info = saved_model.dataset_info_from_export(export_info)
  except (ValueError, KeyError, OSError, tf.errors.OpError) as e:
    raise LoadError(f"deeplab_panoptic.load: cannot use the SavedModel {path}: "
                    f"{str(e).strip().splitlines()[0]}") from e
  signatures = loaded.signatures
  if saved_model.SERVE_PADDED_BATCH in signatures:
    batched = signatures[saved_model.SERVE_PADDED_BATCH]
    serve = lambda images, sizes: batched(images=tf.constant(images),
                                          image_sizes=tf.constant(sizes))
  else:  # An export older than the batched signature: one image per call.
    serve = _one_by_one(signatures[saved_model.SERVING_DEFAULT])
  return Predictor(serve, export_info, info, path, keep_alive=loaded)


def _one_by_one(serving_default: Callable[..., Dict[str, Any]]) -> ServeFn:
  """A padded-batch serving function built on the single-size signature."""
  def serve(images: np.ndarray, sizes: np.ndarray) -> Dict[str, np.ndarray]:
    outs = [serving_default(images=images[i:i + 1, :h, :w]) for i, (h, w) in enumerate(sizes)]
    height, width = sizes.max(axis=0)
    merged = {}
    for key in outs[0]:
      values = [o[key].numpy() for o in outs]
      if values[0].ndim == 3:  # Maps: pad each to the largest image (cropped again later).
        values = [np.pad(v, [(0, 0), (0, height - v.shape[1]), (0, width - v.shape[2])])
                  for v in values]
      merged[key] = np.concatenate(values)
    return merged
  return serve


def _load_checkpoint(model_dir: str) -> Predictor:
  """A predictor around the latest checkpoint of a training run."""
  import gin  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import registry  # Every configurable known to gin.
  from deeplab_panoptic.cli import recipes
  from deeplab_panoptic.training import experiment
  # pylint: enable=g-import-not-at-top
  del registry
  if tf.train.latest_checkpoint(model_dir) is None:
    raise LoadError(f"deeplab_panoptic.load: {model_dir} holds {OPERATIVE_CONFIG} but no "
                    "checkpoint (train first, or give the export folder).")
  gin.clear_config()
  recipes.add_search_paths()
  try:
    gin.parse_config_files_and_bindings([os.path.join(model_dir, OPERATIVE_CONFIG)],
                                        list(_INFERENCE_BINDINGS))
  except (ValueError, KeyError, IOError, SyntaxError, TypeError) as e:
    raise LoadError(f"deeplab_panoptic.load: cannot read "
                    f"{os.path.join(model_dir, OPERATIVE_CONFIG)}: "
                    f"{str(e).strip().splitlines()[0]}") from e
  exp = experiment.Experiment(model_dir, "export")
  step = exp.restore_latest()
  module = exp.export_module()
  export_info = json.loads(module.export_info_json)
  serve = lambda images, sizes: module.serve_padded_batch(
      images=tf.constant(images), image_sizes=tf.constant(sizes))
  return Predictor(serve, export_info, exp.info, f"{model_dir} (step {step})",
                   keep_alive=module)

