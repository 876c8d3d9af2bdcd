"""Orbit evaluator: panoptic inference in the graph, exact metrics on the host.

Each eval step runs the model and the panoptic postprocessor on every replica;
the host crops and resizes each prediction to its image's original size and
feeds :class:`~deeplab_panoptic.evaluation.metrics.PanopticMetrics` (exact PQ
with panopticapi semantics, mIoU, and mask AP when the dataset has things).
With ``PanopticEvaluator.write_predictions = True`` (gin) the predictions are
also written in COCO panoptic format under ``<model_dir>/eval/predictions/``
(``panoptic/*.png`` + ``panoptic.json``), ready for ``coco_pq`` or a server.
"""

import json
import os
from typing import Callable, Dict, Optional

import gin
import numpy as np
import orbit
import tensorflow as tf
import tf_keras as keras
from absl import logging
from PIL import Image

from deeplab_panoptic import common
from deeplab_panoptic.data.dataset_info import DatasetInfo
from deeplab_panoptic.evaluation.coco_format import CocoPanopticWriter
from deeplab_panoptic.evaluation.metrics import PanopticMetrics
from deeplab_panoptic.training import files


def restore_original_resolution(panoptic: np.ndarray, resized_hw, original_hw) -> np.ndarray:
  """Crops the valid region of a padded prediction and resizes it to the original size.

  Args:
    panoptic: ``[H, W]`` int prediction at the padded model-input size.
    resized_hw: ``(h, w)`` of the valid (unpadded) region.
    original_hw: ``(H0, W0)`` of the stored image.

  Returns:
    ``[H0, W0]`` prediction (nearest-neighbour resize, exact when no resize happened).
  """
  h, w = int(resized_hw[0]), int(resized_hw[1])
  valid = panoptic[:h, :w]
  if (h, w) == (int(original_hw[0]), int(original_hw[1])):
    return valid
  # Nearest resize on 32-bit ids through PIL's mode "I".
  img = Image.fromarray(valid.astype(np.int32))
  img = img.resize((int(original_hw[1]), int(original_hw[0])), Image.NEAREST)
  return np.asarray(img, dtype=np.int32)


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
  """

  def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
               postprocessor: Callable, eval_dataset, dataset_info: DatasetInfo,
               model_dir: str, global_step: tf.Variable, write_predictions: bool = False,
               compute_ap: Optional[bool] = None):
    self.strategy = strategy
    self.model = model
    self.postprocessor = postprocessor
    self.info = dataset_info
    self.model_dir = model_dir
    self.global_step = global_step
    self.write_predictions = bool(write_predictions)
    self.compute_ap = compute_ap
    self.last_results: Optional[Dict] = None
    self._writer: Optional[CocoPanopticWriter] = None
    super().__init__(eval_dataset, options=orbit.StandardEvaluatorOptions(
        use_tf_while_loop=False))

  @property
  def predictions_dir(self) -> str:
    return os.path.join(self.model_dir, "eval", "predictions")

  def eval_begin(self):
    info = self.info
    if self.write_predictions:
      self._writer = CocoPanopticWriter(
          self.predictions_dir, info.dataset_id_from_train_id(), info.label_divisor,
          info.ignore_label, categories=info.coco_categories())
    return PanopticMetrics(info.num_classes, info.is_thing, info.label_divisor,
                           info.ignore_label, compute_ap=self.compute_ap)

  def eval_step(self, iterator):
    def step_fn(batch):
      images = batch[common.IMAGE]
      outputs = self.model(images, training=False)
      size = (int(images.shape[1]), int(images.shape[2]))
      predictions = self.postprocessor(outputs, size)
      return {
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
    outputs = self.strategy.run(step_fn, args=(batch,))
    if self.write_predictions:
      if common.IMAGE_NAME not in batch:
        raise ValueError("PanopticEvaluator.write_predictions needs "
                         f"{common.IMAGE_NAME!r} in the eval batches.")
      # Strings stay outside the replica function (TPUs hold no strings).
      outputs = dict(outputs, image_name=batch[common.IMAGE_NAME])
    return outputs

  def eval_reduce(self, state: PanopticMetrics, step_outputs):
    local = {k: self.strategy.experimental_local_results(v) for k, v in step_outputs.items()}
    for replica in range(len(local["panoptic"])):
      arrays = {k: np.asarray(v[replica]) for k, v in local.items()}
      for i in range(arrays["panoptic"].shape[0]):
        oh, ow = int(arrays["original_height"][i]), int(arrays["original_width"][i])
        if oh == 0:
          continue  # A padding example that completes the last batch.
        resized = (arrays["resized_height"][i], arrays["resized_width"][i])
        pred = restore_original_resolution(arrays["panoptic"][i], resized, (oh, ow))
        semantic = restore_original_resolution(arrays["semantic"][i], resized, (oh, ow))
        state.update(arrays["gt"][i][:oh, :ow], pred, semantic,
                     arrays["segment_scores"][i])
        if self._writer is not None:
          name = arrays["image_name"][i]
          self._writer.add(name.decode("utf-8") if isinstance(name, bytes) else str(name),
                           pred)
    return state

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
