"""Orbit evaluator: panoptic inference in the graph, exact PQ on the host."""

import json
import os
from typing import Callable, Dict, Optional

import numpy as np
import orbit
import tensorflow as tf
import tf_keras as keras
from absl import logging
from PIL import Image

from deeplab_panoptic import common
from deeplab_panoptic.data.dataset_info import DatasetInfo
from deeplab_panoptic.evaluation.panoptic_quality import PanopticQuality
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


class PanopticEvaluator(orbit.StandardEvaluator):
  """Runs the model and the panoptic postprocessor, accumulates PQ on the host.

  Args:
    strategy: the distribution strategy.
    model: the MaskTransformer.
    postprocessor: ``(outputs, (H, W)) -> {common.PANOPTIC, ...}``.
    eval_dataset: a (distributed) dataset of eval batches.
    dataset_info: the dataset description.
    model_dir: results go to ``<model_dir>/eval/results.json``.
    global_step: the training step variable (written into the results).
  """

  def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
               postprocessor: Callable, eval_dataset, dataset_info: DatasetInfo,
               model_dir: str, global_step: tf.Variable):
    self.strategy = strategy
    self.model = model
    self.postprocessor = postprocessor
    self.info = dataset_info
    self.model_dir = model_dir
    self.global_step = global_step
    self.last_results: Optional[Dict] = None
    super().__init__(eval_dataset, options=orbit.StandardEvaluatorOptions(
        use_tf_while_loop=False))

  def eval_begin(self):
    return PanopticQuality(self.info.num_classes, self.info.is_thing,
                           self.info.label_divisor, self.info.ignore_label)

  def eval_step(self, iterator):
    def step_fn(batch):
      images = batch[common.IMAGE]
      outputs = self.model(images, training=False)
      size = (int(images.shape[1]), int(images.shape[2]))
      predictions = self.postprocessor(outputs, size)
      return {
          "panoptic": predictions[common.PANOPTIC],
          "gt": batch[common.GT_PANOPTIC_ORIGINAL],
          "resized_height": batch[common.RESIZED_HEIGHT],
          "resized_width": batch[common.RESIZED_WIDTH],
          "original_height": batch[common.ORIGINAL_HEIGHT],
          "original_width": batch[common.ORIGINAL_WIDTH],
      }
    return self.strategy.run(step_fn, args=(next(iterator),))

  def eval_reduce(self, state: PanopticQuality, step_outputs):
    local = {k: self.strategy.experimental_local_results(v) for k, v in step_outputs.items()}
    for replica in range(len(local["panoptic"])):
      arrays = {k: np.asarray(v[replica]) for k, v in local.items()}
      for i in range(arrays["panoptic"].shape[0]):
        oh, ow = int(arrays["original_height"][i]), int(arrays["original_width"][i])
        if oh == 0:
          continue  # A padding example that completes the last batch.
        pred = restore_original_resolution(
            arrays["panoptic"][i], (arrays["resized_height"][i], arrays["resized_width"][i]),
            (oh, ow))
        state.update(arrays["gt"][i][:oh, :ow], pred)
    return state

  def eval_end(self, state: PanopticQuality):
    result = state.result()
    step = int(self.global_step.numpy())
    names = self.info.class_names
    summary = {"step": step}
    for group, key in (("All", ""), ("Things", "_thing"), ("Stuff", "_stuff")):
      for metric in ("pq", "sq", "rq"):
        summary[f"{metric.upper()}{key}"] = 100.0 * result[group][metric]
      summary[f"n{key or '_all'}"] = result[group]["n"]
    summary["per_class"] = {
        names[int(c)]: {m.upper(): 100.0 * v for m, v in r.items()}
        for c, r in result["per_class"].items()}
    files.write_json_atomic(os.path.join(self.model_dir, "eval", "results.json"), summary)
    self.last_results = summary
    msg = (f"eval  | step {step:>6d} | PQ {summary['PQ']:.2f} | SQ {summary['SQ']:.2f} | "
           f"RQ {summary['RQ']:.2f} | PQ_thing {summary['PQ_thing']:.2f} | "
           f"PQ_stuff {summary['PQ_stuff']:.2f}")
    print(msg, flush=True)
    logging.info(msg)
    logs = {k: v for k, v in summary.items() if isinstance(v, float)}
    for name, r in summary["per_class"].items():
      logs[f"per_class_PQ/{name}"] = r["PQ"]
    return logs
