"""Semantic and instance results from (class, mask) predictions: Mask2Former's inference.

Any mask transformer (MaX, kMaX / ReMaX, CMT, Panoptic SegFormer, Mask2Former)
predicts N (class, mask) pairs. Besides the panoptic merging of its family, the
same pairs give, as in Mask2Former (Cheng et al., CVPR 2022, arXiv 2112.01527,
Sec. 4 "post-processing", and its public code, facebookresearch/Mask2Former
``mask2former/maskformer_model.py``, ``semantic_inference`` / ``instance_inference``):

* **semantic**: per pixel, ``argmax_c sum_q p(c | q) * m_q(pixel)`` over the real
  classes (MaskFormer's semantic inference, arXiv 2107.06278, Sec. 3.4): the void
  column takes no part, so every pixel gets a class;
* **instance**: the ``K`` highest ``p(c | q)`` over (query, thing class) pairs; the
  mask of a pair is ``m_q > mask_threshold`` (0.5), its score ``p(c | q)`` times the
  mean of ``m_q`` inside that mask (0 for an empty mask). Instances may overlap.

``p(c | q)`` is the class activation of the family (softmax over the
``num_classes + 1`` logits with the void column dropped, not renormalised; or a
sigmoid per class for focal-loss classes); ``m_q`` is its mask activation at the
output size (the bilinearly resized mask logits, then a softmax over the N slots
for MaX / kMaX / CMT or a sigmoid per slot for ReMaX / Mask2Former / Panoptic
SegFormer). :class:`MaskResultsPostprocessor` takes both from the family's panoptic
postprocessor, whose panoptic results it passes through unchanged.

The top-K is taken over thing classes only (stuff pairs never enter), so there
are always K instances; Mask2Former's code takes the top-K over every class and
then drops the stuff ones when it also makes panoptic results (fewer than K).

Memory: everything is at the output (model input) size, as the panoptic
postprocessors compute: the N mask probabilities ``[B, H, W, N]`` float32, the
class scores ``[B, H, W, C]`` of the semantic sum and the instance masks
``[B, H, W, K]`` bool (164 MB per image at 1281 x 1281 with K = 100, less than the
mask probabilities). Static shapes, no data-dependent control flow: it
XLA-compiles inside the evaluation step.
"""

from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess import base
from deeplab_panoptic.postprocess.panoptic import MaskClassificationPostprocessor
from deeplab_panoptic.postprocess.panoptic import PixelwisePanopticPostprocessor
from deeplab_panoptic.postprocess.panoptic import resize_mask_logits

_ACTIVATIONS = ("softmax", "sigmoid")
_OWNER = "MaskResultsPostprocessor"


def class_probabilities(class_logits: tf.Tensor, num_classes: int,
                        activation: str) -> tf.Tensor:
  """``p(c | q)`` of the real classes.

  Args:
    class_logits: float ``[B, N, num_classes + 1]`` (void last).
    num_classes: classes without void.
    activation: "softmax" (over all ``num_classes + 1``, void column then dropped)
      or "sigmoid" (per class; the void logit is not read).

  Returns:
    float32 ``[B, N, num_classes]``.
  """
  logits = tf.cast(class_logits, tf.float32)
  if activation == "softmax":
    return tf.nn.softmax(logits, axis=-1)[..., :num_classes]
  return tf.sigmoid(logits[..., :num_classes])


def mask_probabilities(mask_logits: tf.Tensor, size: Tuple[int, int], activation: str,
                       align_corners: bool = False) -> tf.Tensor:
  """``m_q`` at the output size: resized logits, then the mask activation.

  Args:
    mask_logits: float ``[B, h, w, N]``.
    size: (H, W) python ints.
    activation: "softmax" (over the N slots) or "sigmoid" (per slot).
    align_corners: resize with align_corners=True.

  Returns:
    float32 ``[B, H, W, N]``.
  """
  logits = resize_mask_logits(tf.cast(mask_logits, tf.float32), size, align_corners)
  if activation == "softmax":
    return tf.nn.softmax(logits, axis=-1)
  return tf.sigmoid(logits)


def semantic_inference(class_probs: tf.Tensor, mask_probs: tf.Tensor) -> tf.Tensor:
  """Per pixel ``argmax_c sum_q p(c | q) m_q`` (ties: the lowest class).

  Args:
    class_probs: float32 ``[B, N, C]`` (real classes only).
    mask_probs: float32 ``[B, H, W, N]``.

  Returns:
    int32 ``[B, H, W]`` train ids.
  """
  scores = tf.einsum("bhwn,bnc->bhwc", mask_probs, class_probs)
  return tf.argmax(scores, axis=-1, output_type=tf.int32)


def check_num_instances(owner: str, num_instances: int, num_slots: int,
                        num_things: int) -> None:
  """Raises ValueError unless ``1 <= K <= N * (thing classes)``."""
  if not 1 <= num_instances <= num_slots * num_things:
    raise ValueError(f"{owner}: num_instances = {num_instances} must be in [1, "
                     f"{num_slots} slots x {num_things} thing classes = "
                     f"{num_slots * num_things}].")


def instance_inference(class_probs: tf.Tensor, mask_probs: tf.Tensor,
                       is_thing: Sequence[bool], num_instances: int,
                       mask_threshold: float
                       ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Top-K (slot, thing class) pairs, their binary masks and scores.

  Args:
    class_probs: float32 ``[B, N, C]``, ``p(c | q)`` of the real classes.
    mask_probs: float32 ``[B, H, W, N]``, ``m_q`` at the output size.
    is_thing: per class (length C); only thing classes are candidates.
    num_instances: K, at most ``N * (number of thing classes)``.
    mask_threshold: a pixel is in a mask when ``m_q > mask_threshold``.

  Returns:
    masks bool ``[B, H, W, K]``; classes int32 ``[B, K]``; scores float32
    ``[B, K]`` (``p(c | q)`` times the mean of ``m_q`` inside the mask), in
    descending ``p(c | q)`` (ties: the lower slot, then the lower class, first).
  """
  num_slots, num_classes = class_probs.shape[1], class_probs.shape[2]
  check_num_instances("instance_inference", num_instances, num_slots, sum(is_thing))
  thing = tf.constant(list(is_thing), tf.bool)[tf.newaxis, tf.newaxis, :]
  # Probabilities are >= 0, so -1 keeps every stuff pair out of the top-K.
  candidates = tf.where(thing, class_probs, -1.0)
  flat = tf.reshape(candidates, [-1, num_slots * num_classes])
  class_scores, pair = tf.math.top_k(flat, k=num_instances, sorted=True)  # [B, K]
  slots = pair // num_classes
  classes = pair % num_classes
  probs = tf.gather(mask_probs, slots, axis=3, batch_dims=1)             # [B, H, W, K]
  masks = probs > mask_threshold
  inside = tf.cast(masks, tf.float32)
  area = tf.reduce_sum(inside, axis=[1, 2])
  mean_inside = tf.reduce_sum(probs * inside, axis=[1, 2]) / tf.maximum(area, 1.0)
  return masks, classes, class_scores * mean_inside


@gin.configurable
class MaskResultsPostprocessor(MaskClassificationPostprocessor):
  """A family's panoptic merging plus Mask2Former's semantic and instance results.

  Example (gin)::

      ExperimentConfig.postprocessor = @MaskResultsPostprocessor
      MaskResultsPostprocessor.panoptic_postprocessor = @MaskFormerMergingPostprocessor

  Declares ``panoptic`` (the wrapped postprocessor's, unchanged), ``semantic``
  (:func:`semantic_inference`, or the wrapped one's with
  ``semantic_from_masks=False``) and ``instance_masks`` (:func:`instance_inference`;
  with ``instance_masks=False`` the wrapped one's non-overlapping ``instance``).
  """

  def __init__(self,
               is_thing: Sequence[bool] = gin.REQUIRED,
               label_divisor: int = gin.REQUIRED,
               ignore_label: int = gin.REQUIRED,
               panoptic_postprocessor: Optional[Callable[..., MaskClassificationPostprocessor]]
               = PixelwisePanopticPostprocessor,
               semantic_from_masks: bool = True,
               instance_masks: bool = True,
               num_instances: int = 100,
               mask_threshold: float = 0.5,
               class_activation: Optional[str] = None,
               mask_activation: Optional[str] = None,
               align_corners: Optional[bool] = None):
    """Initialises the postprocessor.

    Args:
      is_thing, label_divisor, ignore_label: the dataset, as every postprocessor.
      panoptic_postprocessor: the family's panoptic inference (a
        ``MaskClassificationPostprocessor`` class, built with the dataset
        arguments); None: no panoptic result.
      semantic_from_masks: semantic results from :func:`semantic_inference`
        (True) or from the panoptic postprocessor's map (False).
      instance_masks: declare ``instance_masks`` (True) or pass the panoptic
        postprocessor's ``instance`` map through (False; without a panoptic
        postprocessor: semantic results only, as Mask2Former's semantic recipes).
      num_instances: K, instances per image (Mask2Former: 100).
      mask_threshold: an instance mask is ``m_q > mask_threshold`` (0.5).
      class_activation, mask_activation, align_corners: how the logits are read;
        None: as the panoptic postprocessor reads them (required without one).

    Raises:
      ValueError: naming the argument, on an inconsistent configuration.
    """
    inner = None
    if panoptic_postprocessor is not None:
      inner = panoptic_postprocessor(is_thing=is_thing, label_divisor=label_divisor,
                                     ignore_label=ignore_label)
      if not isinstance(inner, MaskClassificationPostprocessor):
        raise ValueError(f"{_OWNER}.panoptic_postprocessor built a {type(inner).__name__}, "
                         "not a MaskClassificationPostprocessor.")
    self._inner = inner
    self._class_activation = self._pick("class_activation", class_activation)
    self._mask_activation = self._pick("mask_activation", mask_activation)
    self._align_corners = bool(self._pick("align_corners", align_corners))
    self._semantic_from_masks = bool(semantic_from_masks) or inner is None
    self._instance_masks = bool(instance_masks)
    self.results = self._declared(inner)
    super().__init__(is_thing, label_divisor, ignore_label)
    if self._instance_masks and not any(self._is_thing):
      raise ValueError(f"{_OWNER}: instance results need thing classes; the dataset has "
                       "none: set MaskResultsPostprocessor.instance_masks = False.")
    if num_instances < 1:
      raise ValueError(f"{_OWNER}: num_instances must be >= 1, got {num_instances}.")
    if not 0.0 <= mask_threshold < 1.0:
      raise ValueError(f"{_OWNER}: mask_threshold must be in [0, 1), got {mask_threshold}.")
    self._num_instances = int(num_instances)
    self._mask_threshold = float(mask_threshold)

  def _pick(self, name: str, value):
    """``value``, or the panoptic postprocessor's setting when it is None."""
    if value is None:
      if self._inner is None:
        raise ValueError(f"{_OWNER}.{name} is needed without a panoptic_postprocessor.")
      value = getattr(self._inner, name)
    if name.endswith("activation") and value not in _ACTIVATIONS:
      raise ValueError(f"{_OWNER}.{name} must be one of {_ACTIVATIONS}, got {value!r}.")
    return value

  def _declared(self, inner: Optional[MaskClassificationPostprocessor]):
    results = set(inner.results) if inner is not None else set()
    results.add(base.SEMANTIC)
    if self._instance_masks:
      results.discard(base.INSTANCE)
      results.add(base.INSTANCE_MASKS)
    return frozenset(results)

  @property
  def class_activation(self) -> str:
    return self._class_activation

  def check_model_outputs(self, outputs: Mapping[str, tf.Tensor]) -> None:
    """The base checks, and K against the model's N slots (before anything runs)."""
    super().check_model_outputs(outputs)
    if self._instance_masks:
      check_num_instances(f"{_OWNER} (MaskResultsPostprocessor.num_instances)",
                          self._num_instances,
                          int(outputs[common.PRED_CLASS_LOGITS].shape[1]),
                          sum(self._is_thing))

  def __call__(self, outputs: Mapping[str, tf.Tensor],
               target_size: Tuple[int, int]) -> Dict[str, tf.Tensor]:
    """The declared results.

    Args:
      outputs: ``common.PRED_CLASS_LOGITS`` float ``[B, N, num_classes + 1]`` and
        ``common.PRED_MASK_LOGITS`` float ``[B, h, w, N]``.
      target_size: (H, W) python ints, the model input size.

    Returns:
      :attr:`output_keys` -> tensors: the panoptic postprocessor's maps ``[B, H, W]``
      and per-slot ``[B, N]`` tensors; ``common.SEMANTIC`` int32 ``[B, H, W]``;
      ``common.INSTANCE_MASKS`` bool ``[B, H, W, K]``, ``common.INSTANCE_CLASSES``
      int32 and ``common.INSTANCE_SCORES`` float32 ``[B, K]``.
    """
    size = (int(target_size[0]), int(target_size[1]))
    result = dict(self._inner(outputs, size)) if self._inner is not None else {}
    if not (self._semantic_from_masks or self._instance_masks):
      return {key: result[key] for key in self.output_keys}
    class_probs = class_probabilities(outputs[common.PRED_CLASS_LOGITS],
                                      self._num_classes, self._class_activation)
    mask_probs = mask_probabilities(outputs[common.PRED_MASK_LOGITS], size,
                                    self._mask_activation, self._align_corners)
    if self._semantic_from_masks:
      result[common.SEMANTIC] = semantic_inference(class_probs, mask_probs)
    if self._instance_masks:
      masks, classes, scores = instance_inference(
          class_probs, mask_probs, self._is_thing, self._num_instances,
          self._mask_threshold)
      result.update({common.INSTANCE_MASKS: masks, common.INSTANCE_CLASSES: classes,
                     common.INSTANCE_SCORES: scores})
    return {key: result[key] for key in self.output_keys}
