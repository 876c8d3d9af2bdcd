"""Orbit evaluator: inference in the graph, exact metrics on the host, by declaration.

Each eval step runs the model and its postprocessor on every replica; the host
crops and resizes each declared result map to its image's original size with the
function the exported SavedModel serves with (``postprocess/resolution.py``:
evaluation scores exactly the maps a served model returns) and feeds
:class:`~deeplab_panoptic.evaluation.metrics.SegmentationMetrics`, built from the
results the postprocessor declares (``postprocess/base.py``): exact PQ with
panopticapi semantics for ``panoptic``, mIoU for ``semantic``, mask AP for
``instance`` (when the dataset has things). ``results.json`` and TensorBoard get
the keys of those metrics only. A postprocessor that declares ``instance_masks``
(overlapping instances, ``postprocess/mask_results.py``) has its instances written
as a COCO results JSON, ``<model_dir>/eval/instance_results.json`` (RLE masks, the
dataset's category ids, image ids from the file names), which is what the AP
scores. With ``PanopticEvaluator.write_predictions = True``
(gin) panoptic predictions are also written in COCO panoptic format under
``<model_dir>/eval/predictions/`` (``panoptic/*.png`` + ``panoptic.json``), ready
for ``coco_pq`` or a server.
"""

import json
import os
from typing import Callable, Dict, List, Optional

import gin
import numpy as np
import orbit
import tensorflow as tf
import tf_keras as keras
import tqdm
from absl import logging

from deeplab_panoptic import common
from deeplab_panoptic.data import inspect as inspect_lib
from deeplab_panoptic.data.dataset_info import DatasetInfo
from deeplab_panoptic.data import coco_panoptic
from deeplab_panoptic.data.coco_panoptic import CocoPanopticWriter
from deeplab_panoptic.evaluation import tables
from deeplab_panoptic.evaluation.metrics import SegmentationMetrics
from deeplab_panoptic.postprocess import base as postprocess_base
from deeplab_panoptic.postprocess import resolution
from deeplab_panoptic.training import ema as ema_lib
from deeplab_panoptic.utils import files


# The host-side undoing of the preprocessing, compiled once per batch shape. The
# labels are ints and the resize is nearest, so graph and eager agree bit for bit.
_restore = tf.function(resolution.restore_original_resolution, reduce_retracing=True)


@gin.configurable
class PanopticEvaluator(orbit.StandardEvaluator):
  """Runs the model and its postprocessor, accumulates the declared metrics on the host.

  Args:
    strategy: the distribution strategy.
    model: the model (any meta-architecture).
    postprocessor: a ``postprocess.base.Postprocessor``: ``(outputs, (H, W)) ->``
      its declared results.
    eval_dataset: a (distributed) dataset of eval batches.
    dataset_info: the dataset description.
    model_dir: results go to ``<model_dir>/eval/results.json``.
    global_step: the training step variable (written into the results).
    write_predictions: for a panoptic postprocessor, also write COCO panoptic predictions (PNG + JSON with the
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
    ema: the moving averages of the weights (``training/ema.py``), swapped into
      the model for each evaluation and swapped back after it; None: the raw
      weights.
    num_images: the evaluation split's size, the progress bar's total (its ETA);
      None: a bar that counts without a total.
    progress_bar: show a progress bar (tqdm, on stderr) while evaluating.
    print_per_class: print the per-class table (``evaluation/tables.py``) after
      each evaluation.
    write_instance_results: for a postprocessor declaring ``instance_masks``,
      write the COCO results JSON ``<model_dir>/eval/instance_results.json``
      (replaced at every evaluation; ``results.json`` names it under
      ``instance_results_json``). Needs ``common.IMAGE_NAME`` in the eval batches.
  """

  def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
               postprocessor: Callable, eval_dataset, dataset_info: DatasetInfo,
               model_dir: str, global_step: tf.Variable, write_predictions: bool = False,
               compute_ap: Optional[bool] = None, num_summary_images: int = 3,
               keep_predictions: bool = False, ema: Optional[ema_lib.EmaWeights] = None,
               num_images: Optional[int] = None, progress_bar: bool = True,
               print_per_class: bool = True, write_instance_results: bool = True):
    self.strategy = strategy
    self.ema = ema
    self.num_images = num_images
    self.progress_bar = bool(progress_bar)
    self.print_per_class = bool(print_per_class)
    self._progress: Optional[tqdm.tqdm] = None
    self.model = model
    self.postprocessor = postprocessor
    self.results = postprocess_base.check_results(type(postprocessor).__name__,
                                                  postprocessor.results)
    self._maps = postprocess_base.result_maps(self.results)
    self._slot_tensors = postprocess_base.result_slot_tensors(self.results)
    self._masks = postprocess_base.result_mask_stacks(self.results)
    self.write_instance_results = bool(write_instance_results) and bool(self._masks)
    if write_predictions and postprocess_base.PANOPTIC not in self.results:
      raise ValueError("PanopticEvaluator.write_predictions writes COCO panoptic files, "
                       f"but {type(postprocessor).__name__} declares {sorted(self.results)}.")
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

  def evaluate(self, num_steps):
    """One evaluation; with EMA, of the averaged weights (the raw ones are back after)."""
    if self.ema is None:
      return super().evaluate(num_steps)
    self.ema.check_ready(f"evaluation of {self.model_dir}")
    msg = (f"eval  | step {int(self.global_step.numpy()):>6d} | evaluating the EMA of the "
           "weights (make_optimizer.use_ema)")
    print(msg, flush=True)
    logging.info(msg)
    with self.ema.swapped():
      return super().evaluate(num_steps)

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
    self._progress = tqdm.tqdm(
        total=self.num_images, desc=f"eval step {int(self.global_step.numpy())}",
        unit="image", disable=not self.progress_bar, dynamic_ncols=True)
    return SegmentationMetrics(self.results, info.num_classes, info.is_thing,
                               info.label_divisor, info.ignore_label,
                               compute_ap=self.compute_ap)

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
          **{key: predictions[key] for key in self._maps + self._slot_tensors},
          # bool masks travel as uint8: what the host-side restore resizes.
          **{key: tf.cast(predictions[key], tf.uint8) for key in self._masks},
          "gt": batch[common.GT_PANOPTIC_ORIGINAL],
          "resized_height": batch[common.RESIZED_HEIGHT],
          "resized_width": batch[common.RESIZED_WIDTH],
          "original_height": batch[common.ORIGINAL_HEIGHT],
          "original_width": batch[common.ORIGINAL_WIDTH],
      }
    batch = next(iterator)
    tensors = {k: v for k, v in batch.items() if k != common.IMAGE_NAME}
    outputs = self.strategy.run(step_fn, args=(tensors,))
    if self.write_predictions or self.keep_predictions or self.write_instance_results:
      if common.IMAGE_NAME not in batch:
        raise ValueError("PanopticEvaluator.write_predictions / keep_predictions / "
                         "write_instance_results need "
                         f"{common.IMAGE_NAME!r} in the eval batches.")
      # Strings stay outside the replica function (TPUs hold no strings).
      outputs = dict(outputs, image_name=batch[common.IMAGE_NAME])
    return outputs

  def eval_reduce(self, state: SegmentationMetrics, step_outputs):
    local = {k: self.strategy.experimental_local_results(v) for k, v in step_outputs.items()}
    info = self.info
    voids = postprocess_base.map_void_values(self.results, info.label_divisor,
                                             info.ignore_label)
    for replica in range(len(local["gt"])):
      arrays = {k: np.asarray(v[replica]) for k, v in local.items()}
      # Padding examples that complete the last batch have original size 0.
      keep = np.flatnonzero(arrays["original_height"] > 0)
      if self._progress is not None:
        self._progress.update(keep.size)
      if keep.size == 0:
        continue
      original = np.stack([arrays["original_height"][keep],
                           arrays["original_width"][keep]], axis=-1).astype(np.int32)
      resized = np.stack([arrays["resized_height"][keep],
                          arrays["resized_width"][keep]], axis=-1).astype(np.int32)
      maps = np.stack([arrays[key][keep] for key in self._maps], axis=-1)
      # The serving graph's own undoing of the preprocessing (one function for
      # both), on the host CPU: the maps scored here are the maps a SavedModel serves.
      with tf.device("/CPU:0"):
        maps = _restore(maps.astype(np.int32), resized, original,
                        [voids[key] for key in self._maps]).numpy()
      masks = self._restore_masks(arrays, keep, resized, original)
      for j, i in enumerate(keep):
        oh, ow = original[j]
        image_maps = {key: maps[j, :oh, :ow, c] for c, key in enumerate(self._maps)}
        image_masks = {key: masks[key][j, :oh, :ow].astype(bool) for key in self._masks}
        self._add_image(state, arrays, i, image_maps, arrays["gt"][i][:oh, :ow],
                        (resized[j], (oh, ow)), image_masks)
    return state

  def _restore_masks(self, arrays: Dict[str, np.ndarray], keep: np.ndarray,
                     resized: np.ndarray, original: np.ndarray) -> Dict[str, np.ndarray]:
    """The declared mask stacks uint8 ``[b, H, W, K]`` -> the original resolution."""
    restored = {}
    for key in self._masks:
      stack = arrays[key][keep]
      with tf.device("/CPU:0"):
        restored[key] = _restore(stack, resized, original, [0] * stack.shape[-1],
                                 tf.uint8).numpy()
    return restored

  def _add_image(self, state: SegmentationMetrics, arrays: Dict[str, np.ndarray], i: int,
                 image_maps: Dict[str, np.ndarray], gt: np.ndarray, sizes,
                 image_masks: Dict[str, np.ndarray]) -> None:
    """Scores image ``i`` of a replica's batch and keeps / writes / pictures it.

    Args:
      state: the accumulator.
      arrays: the replica's step outputs (numpy).
      i: the image's index in them.
      image_maps: declared map key -> int ``[H0, W0]`` at the original resolution.
      gt: int ``[H0, W0]`` ground-truth panoptic labels.
      sizes: ((resized h, w), (H0, W0)).
      image_masks: declared mask-stack key -> bool ``[H0, W0, K]``.
    """
    predictions = dict(image_maps, **image_masks,
                       **{key: arrays[key][i] for key in self._slot_tensors})
    image_ids = None
    if self.write_instance_results:
      image_ids = [coco_panoptic.image_id_from_name(self._name(arrays, i))]
    state.update(gt, predictions, image_ids=image_ids)
    shown = self._shown_map(image_maps)
    if self.keep_predictions:
      self.predictions[self._name(arrays, i)] = shown
    if len(self._summary_pictures) < self.num_summary_images and "image" in arrays:
      # Like with like: a semantic-only prediction is pictured beside the
      # ground truth's classes.
      shown_gt = (gt if common.PANOPTIC in image_maps
                  else (gt // self.info.label_divisor) * self.info.label_divisor)
      self._summary_pictures.append(self._summary_picture(
          arrays["image"][i], sizes[0], sizes[1], shown_gt, shown))
    if self._writer is not None:
      self._writer.add(self._name(arrays, i), image_maps[common.PANOPTIC])

  def _shown_map(self, image_maps: Dict[str, np.ndarray]) -> np.ndarray:
    """The panoptic map, or for a semantic-only model the semantic map as panoptic
    labels (``class * label_divisor``): what is kept and pictured per image."""
    if common.PANOPTIC in image_maps:
      return image_maps[common.PANOPTIC]
    if common.SEMANTIC in image_maps:
      return image_maps[common.SEMANTIC].astype(np.int64) * self.info.label_divisor
    return image_maps[common.INSTANCE]

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

  def _summary(self, metrics: Dict, step: int) -> Dict:
    """``results.json``'s content (percent) from ``SegmentationMetrics.result()``."""
    names = self.info.class_names
    summary = {"step": step}
    if "PQ" in metrics:
      result = metrics["PQ"]
      for group, key in (("All", ""), ("Things", "_thing"), ("Stuff", "_stuff")):
        for metric in ("pq", "sq", "rq"):
          summary[f"{metric.upper()}{key}"] = 100.0 * result[group][metric]
        summary[f"n{key or '_all'}"] = result[group]["n"]
    if "mIoU" in metrics:
      summary["mIoU"] = 100.0 * metrics["mIoU"]
    if metrics.get("AP") is not None:
      # COCO's -1 ("no ground-truth instance") stays -1 rather than -100.
      for name, value in (("AP", "ap"), ("AP50", "ap50"), ("AP75", "ap75")):
        ap = metrics["AP"][value]
        summary[name] = 100.0 * ap if ap >= 0 else -1.0
    if "PQ" in metrics:
      summary["per_class"] = {
          names[int(c)]: {m.upper(): 100.0 * v for m, v in r.items()}
          for c, r in metrics["PQ"]["per_class"].items()}
    if "per_class_IoU" in metrics:
      summary["per_class_IoU"] = {names[c]: 100.0 * float(v)
                                  for c, v in enumerate(metrics["per_class_IoU"])
                                  if not np.isnan(v)}
    if metrics.get("AP") is not None and "per_class" in metrics["AP"]:
      summary["per_class_AP"] = tables.percent_by_name(metrics["AP"]["per_class"], names)
    return summary

  def eval_end(self, state: SegmentationMetrics):
    if self._progress is not None:
      self._progress.close()
      self._progress = None
    metrics = state.result()
    if state.miou is not None:
      metrics["per_class_IoU"] = state.miou.per_class_iou()
    step = int(self.global_step.numpy())
    summary = self._summary(metrics, step)
    if self._writer is not None:
      path = self._writer.close()
      summary["predictions_json"] = path
      self._writer = None
    if self.write_instance_results and state.ap is not None:
      path = os.path.join(self.model_dir, "eval", "instance_results.json")
      files.write_json_atomic(path, state.ap.coco_results(
          self.info.dataset_id_from_train_id()), indent=None)
      summary["instance_results_json"] = path
    files.write_json_atomic(os.path.join(self.model_dir, "eval", "results.json"), summary)
    self._write_image_summaries(step)
    self.last_results = summary
    shown = [k for k in ("PQ", "SQ", "RQ", "PQ_thing", "PQ_stuff", "mIoU", "AP")
             if k in summary]
    msg = f"eval  | step {step:>6d} | " + " | ".join(f"{k} {summary[k]:.2f}" for k in shown)
    table = tables.per_class_table(summary, self.info.class_names, self.info.is_thing)
    if self.print_per_class and table:
      msg += "\n" + table
    print(msg, flush=True)
    logging.info(msg)
    logs = {k: v for k, v in summary.items() if isinstance(v, float)}
    for name, r in summary.get("per_class", {}).items():
      logs[f"per_class_PQ/{name}"] = r["PQ"]
    for name, iou in summary.get("per_class_IoU", {}).items():
      logs[f"per_class_IoU/{name}"] = iou
    for name, ap in summary.get("per_class_AP", {}).items():
      logs[f"per_class_AP/{name}"] = ap
    return logs
