"""Orbit evaluator: panoptic inference in the graph, exact metrics on the host.

Each eval step runs the model and the panoptic postprocessor on every replica;
the host crops and resizes each prediction to its image's original size with
the function the exported SavedModel serves with (``postprocess/resolution.py``:
evaluation scores exactly the maps a served model returns) and feeds :class:`~deeplab_panoptic.evaluation.metrics.PanopticMetrics` (exact PQ
with panopticapi semantics, mIoU, and mask AP when the dataset has things).
With ``PanopticEvaluator.write_predictions = True`` (gin) the predictions are
also written in COCO panoptic format under ``<model_dir>/eval/predictions/``
(``panoptic/*.png`` + ``panoptic.json``), ready for ``coco_pq`` or a server.
"""

import json
import os
from typing import Callable, Dict, List, Optional

import gin
import numpy as np
import orbit
import tensorflow as tf
import tf_keras as keras
from absl import logging

from deeplab_panoptic import common
from deeplab_panoptic.data import inspect as inspect_lib
from deeplab_panoptic.data.dataset_info import DatasetInfo
from deeplab_panoptic.evaluation.coco_format import CocoPanopticWriter
from deeplab_panoptic.evaluation.metrics import PanopticMetrics
from deeplab_panoptic.postprocess import resolution
from deeplab_panoptic.training import files


# The host-side undoing of the preprocessing, compiled once per batch shape. The
# labels are ints and the resize is nearest, so graph and eager agree bit for bit.
_restore = tf.function(resolution.restore_original_resolution, reduce_retracing=True)


@gin.configurable
class PanopticEvaluator(orbit.StandardEvaluator):
  """Runs the model and the panoptic postprocessor, accumulates the metrics on the host.

  Args:
    strategy: the distribution strategy.
    model: the MaskTransformer.
    postprocessor: ``(outputs, (H, W)) -> {common.PANOPTIC, common.SEMANTIC,
      common.SEGMENT_SCORES, ...}``.
    eval_dataset: a (distributed) dataset of eval batches.
    dataset_info: the dataset description.
    model_dir: results go to ``<model_dir>/eval/results.json``.
    global_step: the training step variable (written into the results).
    write_predictions: also write COCO panoptic predictions (PNG + JSON with the
      dataset's category ids) under ``<model_dir>/eval/predictions/``, replaced at
      every evaluation. Needs ``common.IMAGE_NAME`` in the eval batches.
    compute_ap: collect mask AP (host cost: ~2 ms per 128x128 image, see
      docs/performance.md); default: when the dataset has things.
    num_summary_images: the first this many eval images go to TensorBoard
      (``<model_dir>/eval``, tab "Images") as ``input | ground truth | prediction``
      panoptic overlays at the original resolution; 0 turns it off (and keeps the
      images on the device).
    keep_predictions: keep each image's panoptic map at its original resolution in
      ``self.predictions`` (image name -> int32 ``[H0, W0]``) after an evaluation,
      e.g. to compare with a SavedModel (benchmarks/export_parity.py). Needs
      ``common.IMAGE_NAME`` in the eval batches.
  """

  def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
               postprocessor: Callable, eval_dataset, dataset_info: DatasetInfo,
               model_dir: str, global_step: tf.Variable, write_predictions: bool = False,
               compute_ap: Optional[bool] = None, num_summary_images: int = 3,
               keep_predictions: bool = False):
    self.strategy = strategy
    self.model = model
    self.postprocessor = postprocessor
    self.info = dataset_info
    self.model_dir = model_dir
    self.global_step = global_step
    self.write_predictions = bool(write_predictions)
    self.compute_ap = compute_ap
    self.keep_predictions = bool(keep_predictions)
    self.predictions: Dict[str, np.ndarray] = {}
    self.num_summary_images = int(num_summary_images)
    self._summary_pictures: List[np.ndarray] = []
    self.last_results: Optional[Dict] = None
    self._writer: Optional[CocoPanopticWriter] = None
    super().__init__(eval_dataset, options=orbit.StandardEvaluatorOptions(
        use_tf_while_loop=False))

  @property
  def predictions_dir(self) -> str:
    return os.path.join(self.model_dir, "eval", "predictions")

  def eval_begin(self):
    info = self.info
    self.predictions = {}
    if self.write_predictions:
      self._writer = CocoPanopticWriter(
          self.predictions_dir, info.dataset_id_from_train_id(), info.label_divisor,
          info.ignore_label, categories=info.coco_categories())
    self._summary_pictures = []
    return PanopticMetrics(info.num_classes, info.is_thing, info.label_divisor,
                           info.ignore_label, compute_ap=self.compute_ap)

  def eval_step(self, iterator):
    def step_fn(batch):
      images = batch[common.IMAGE]
      # The SavedModel's serving graph calls the same function (export/saved_model.py),
      # which also casts mixed-precision outputs to float32 before postprocessing.
      predictions = resolution.infer_at_input_size(self.model, self.postprocessor, images)
      extra = {}
      if self.num_summary_images > 0:
        # uint8 (a quarter of the float32 transfer) for the TensorBoard pictures.
        extra["image"] = tf.cast(tf.clip_by_value((images + 1.0) * 127.5, 0.0, 255.0) + 0.5,
                                 tf.uint8)
      return {
          **extra,
          "panoptic": predictions[common.PANOPTIC],
          "semantic": predictions[common.SEMANTIC],
          "segment_scores": predictions[common.SEGMENT_SCORES],
          "gt": batch[common.GT_PANOPTIC_ORIGINAL],
          "resized_height": batch[common.RESIZED_HEIGHT],
          "resized_width": batch[common.RESIZED_WIDTH],
          "original_height": batch[common.ORIGINAL_HEIGHT],
          "original_width": batch[common.ORIGINAL_WIDTH],
      }
    batch = next(iterator)
    tensors = {k: v for k, v in batch.items() if k != common.IMAGE_NAME}
    outputs = self.strategy.run(step_fn, args=(tensors,))
    if self.write_predictions or self.keep_predictions:
      if common.IMAGE_NAME not in batch:
        raise ValueError("PanopticEvaluator.write_predictions / keep_predictions need "
                         f"{common.IMAGE_NAME!r} in the eval batches.")
      # Strings stay outside the replica function (TPUs hold no strings).
      outputs = dict(outputs, image_name=batch[common.IMAGE_NAME])
    return outputs

  def eval_reduce(self, state: PanopticMetrics, step_outputs):
    local = {k: self.strategy.experimental_local_results(v) for k, v in step_outputs.items()}
    info = self.info
    void = (info.ignore_label * info.label_divisor, info.ignore_label)
    for replica in range(len(local["panoptic"])):
      arrays = {k: np.asarray(v[replica]) for k, v in local.items()}
      # Padding examples that complete the last batch have original size 0.
      keep = np.flatnonzero(arrays["original_height"] > 0)
      if keep.size == 0:
        continue
      original = np.stack([arrays["original_height"][keep],
                           arrays["original_width"][keep]], axis=-1).astype(np.int32)
      resized = np.stack([arrays["resized_height"][keep],
                          arrays["resized_width"][keep]], axis=-1).astype(np.int32)
      maps = np.stack([arrays["panoptic"][keep], arrays["semantic"][keep]], axis=-1)
      # The serving graph's own undoing of the preprocessing (one function for
      # both), on the host CPU: the maps scored here are the maps a SavedModel serves.
      with tf.device("/CPU:0"):
        maps = _restore(maps.astype(np.int32), resized, original, void).numpy()
      for j, i in enumerate(keep):
        oh, ow = original[j]
        pred, semantic = maps[j, :oh, :ow, 0], maps[j, :oh, :ow, 1]
        state.update(arrays["gt"][i][:oh, :ow], pred, semantic,
                     arrays["segment_scores"][i])
        if self.keep_predictions:
          self.predictions[self._name(arrays, i)] = pred
        if len(self._summary_pictures) < self.num_summary_images and "image" in arrays:
          self._summary_pictures.append(self._summary_picture(
              arrays["image"][i], resized[j], (oh, ow), arrays["gt"][i][:oh, :ow], pred))
        if self._writer is not None:
          self._writer.add(self._name(arrays, i), pred)
    return state

  def _summary_picture(self, image: np.ndarray, resized, original, gt: np.ndarray,
                       pred: np.ndarray) -> np.ndarray:
    """``input | ground truth | prediction`` overlays at the original resolution.

    Args:
      image: uint8 ``[H, W, 3]`` padded model input.
      resized: (h, w) of its valid region; original: (H0, W0).
      gt, pred: int ``[H0, W0]`` panoptic maps.

    Returns:
      uint8 ``[H0, 3 * W0, 3]``.
    """
    valid = image[:int(resized[0]), :int(resized[1])]
    if valid.shape[:2] != tuple(original):
      valid = tf.image.resize(valid, original, method="bilinear")
      valid = np.clip(np.round(np.asarray(valid)), 0, 255).astype(np.uint8)
    return np.concatenate([valid, inspect_lib.panoptic_overlay(valid, gt, self.info),
                           inspect_lib.panoptic_overlay(valid, pred, self.info)], axis=1)

  def _write_image_summaries(self, step: int) -> None:
    """The collected pictures as TensorBoard images under ``<model_dir>/eval``."""
    if not self._summary_pictures:
      return
    writer = tf.summary.create_file_writer(os.path.join(self.model_dir, "eval"))
    with writer.as_default():
      for k, picture in enumerate(self._summary_pictures):
        tf.summary.image(f"predictions/{k}", picture[np.newaxis], step=step)
    writer.flush()
    writer.close()
    self._summary_pictures = []

  @staticmethod
  def _name(arrays: Dict[str, np.ndarray], i: int) -> str:
    if "image_name" not in arrays:
      raise ValueError("PanopticEvaluator.write_predictions / keep_predictions need "
                       f"{common.IMAGE_NAME!r} in the eval batches.")
    name = arrays["image_name"][i]
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)

  def eval_end(self, state: PanopticMetrics):
    metrics = state.result()
    result = metrics["PQ"]
    step = int(self.global_step.numpy())
    names = self.info.class_names
    summary = {"step": step}
    for group, key in (("All", ""), ("Things", "_thing"), ("Stuff", "_stuff")):
      for metric in ("pq", "sq", "rq"):
        summary[f"{metric.upper()}{key}"] = 100.0 * result[group][metric]
      summary[f"n{key or '_all'}"] = result[group]["n"]
    summary["mIoU"] = 100.0 * metrics["mIoU"]
    if metrics["AP"] is not None:
      # COCO's -1 ("no ground-truth instance") stays -1 rather than -100.
      for name, value in (("AP", "ap"), ("AP50", "ap50"), ("AP75", "ap75")):
        ap = metrics["AP"][value]
        summary[name] = 100.0 * ap if ap >= 0 else -1.0
    summary["per_class"] = {
        names[int(c)]: {m.upper(): 100.0 * v for m, v in r.items()}
        for c, r in result["per_class"].items()}
    if self._writer is not None:
      path = self._writer.close()
      summary["predictions_json"] = path
      self._writer = None
    files.write_json_atomic(os.path.join(self.model_dir, "eval", "results.json"), summary)
    self._write_image_summaries(step)
    self.last_results = summary
    msg = (f"eval  | step {step:>6d} | PQ {summary['PQ']:.2f} | SQ {summary['SQ']:.2f} | "
           f"RQ {summary['RQ']:.2f} | PQ_thing {summary['PQ_thing']:.2f} | "
           f"PQ_stuff {summary['PQ_stuff']:.2f} | mIoU {summary['mIoU']:.2f}")
    if "AP" in summary:
      msg += f" | AP {summary['AP']:.2f}"
    print(msg, flush=True)
    logging.info(msg)
    logs = {k: v for k, v in summary.items() if isinstance(v, float)}
    for name, r in summary["per_class"].items():
      logs[f"per_class_PQ/{name}"] = r["PQ"]
    return logs
