"""The training criterion: a weighted sum of named loss terms, with matching.

A model's loss is a `Criterion` configured in gin (one file per paper under
configs/losses/):

    ExperimentConfig.loss = @Criterion
    Criterion.terms = [@PQClassLoss(), @PQDiceLoss(), @MaskIDCrossEntropy(),
                       @InstanceDiscrimination(), @SemanticCrossEntropy()]
    Criterion.matcher = @HungarianMatcher()
    HungarianMatcher.cost = @PQSimilarityCost()
    PQClassLoss.weight = 3.0

and a per-pixel model needs no matcher at all:

    Criterion.terms = [@SemanticCrossEntropy()]

Contract (what the trainer relies on):
  * `criterion(batch, outputs)` returns a dict of float32 scalars: one entry
    per term (its `name`, already multiplied by its weight), "aux_<i>/<name>"
    for the per-stage terms of auxiliary output i, and common.LOSS_TOTAL, the
    sum of all the others. Everything in it has static shapes and compiles
    with XLA, unless the matcher is the host-side scipy solver.
  * `criterion.match(batch, outputs)` runs only the matching (the one step
    that may be a host call: scipy inside tf.numpy_function), and
    `criterion(batch, outputs, matching=that)` the rest, so a trainer can run
    the first eagerly and XLA-compile the second.

Two kinds of terms:
  * `LossTerm`: computed once from the final outputs (e.g. the semantic
    cross-entropy of common.PRED_SEMANTIC_LOGITS).
  * `StageLossTerm`: computed on every decoder stage (deep supervision):
    `outputs[common.AUX_OUTPUTS][i]` in order, then the final output. Aux
    stages' values are multiplied by `Criterion.aux_weight` unless the term
    says otherwise (`aux_weighted = False`).
A term returns a per-image loss [B]; the criterion averages it over the batch
and multiplies it by the term's weight. A term with weight 0 reports a zero
under its name without computing anything. A term may decline a stage
(`applies`), and then reports nothing for it.

Mask terms read a `Stage`: the stage's class logits [B, N, C + 1] and mask
logits [B, P, N] resized (bilinear) to the final output's mask size h x w and
flattened (P = h * w), optionally transformed (ReMaX ReMask) by
`Criterion.mask_logit_transform`; and `LossInputs.targets`, the ground truth
at h x w (`targets.MaskTargets`). After matching, `stage.assignment` is the
float32 [B, K, N] one-hot assignment of ground-truth masks to predictions.

Shapes: B batch, H x W ground truth, h x w predicted masks, P = h * w, K
ground-truth slots, N predictions, C classes.
"""

import abc
from typing import (Any, Callable, ClassVar, Dict, List, Mapping, Optional,
                    Sequence, Tuple, Union)

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.losses import matching as matching_lib
from deeplab_panoptic.ops import resize as resize_lib
from deeplab_panoptic.losses import targets as targets_lib

MATCHING_MODES = ("shared", "per_stage")
Matching = Union[tf.Tensor, Sequence[tf.Tensor]]


def aux_loss_name(index: int, name: str) -> str:
  """Key of loss `name` of auxiliary output `index` ("aux_0/pq_class_loss")."""
  return f"aux_{index}/{name}"


class Stage:
  """The predictions of one decoder stage, flattened at the loss resolution.

  Attributes:
    index: position among the stages (aux outputs first, final last).
    prefix: loss-name prefix, "aux_<i>/" or "" for the final output.
    where: where its dict is in the outputs, for error messages.
    output: the stage's output dict.
    is_final: whether this is the final output.
    class_logits: float32 [B, N, C + 1].
    mask_logits: float32 [B, P, N], after `Criterion.mask_logit_transform`.
    raw_mask_logits: float32 [B, P, N], before it.
    assignment: float32 [B, K, N] one-hot matches, set by the criterion after
      matching (None without a matcher).
  """

  def __init__(self, index: int, prefix: str, where: str,
               output: Mapping[str, Any], is_final: bool,
               class_logits: tf.Tensor, mask_logits: tf.Tensor,
               raw_mask_logits: tf.Tensor, inputs: "LossInputs"):
    self.index = index
    self.prefix = prefix
    self.where = where
    self.output = output
    self.is_final = is_final
    self.class_logits = class_logits
    self.mask_logits = mask_logits
    self.raw_mask_logits = raw_mask_logits
    self.assignment: Optional[tf.Tensor] = None
    self._inputs = inputs
    self._cache: Dict[Any, Any] = {}

  def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()`, evaluated once per stage and call (shared by terms)."""
    if key not in self._cache:
      self._cache[key] = compute()
    return self._cache[key]

  @property
  def probs(self) -> tf.Tensor:
    """float32 [B, P, N] mask probabilities (the criterion's activation)."""
    return self.cached("probs", lambda: targets_lib.mask_probabilities(
        self.mask_logits, self._inputs.mask_activation))

  @property
  def valid_probs(self) -> tf.Tensor:
    """float32 [B, P, N] mask probabilities, zero on void pixels."""
    return self.cached("valid_probs", lambda: (
        self.probs * self._inputs.targets.valid_pixels[:, :, tf.newaxis]))

  @property
  def pixel_embedding(self) -> tf.Tensor:
    """float32 [B, P, D] unit-length pixel embedding at the loss grid."""
    return self.cached("pixel_embedding", self._pixel_embedding)

  def _pixel_embedding(self) -> tf.Tensor:
    embedding = self.require(common.PRED_PIXEL_EMBEDDING)
    size = self._inputs.size
    if tuple(embedding.shape[1:3]) != tuple(size):
      # Interpolation shortens unit vectors; the instance-discrimination
      # logits (MaX-DeepLab eq. 17) assume unit length.
      embedding = tf.math.l2_normalize(
          resize_lib.resize_bilinear(embedding, size), axis=-1)
    return tf.reshape(embedding, [-1, size[0] * size[1], embedding.shape[-1]])

  def require(self, key: str, why: str = "") -> Any:
    """`self.output[key]` as float32, or a KeyError naming the stage."""
    where = f"{self.where} ({why})" if why else self.where
    return tf.cast(targets_lib.require(self.output, key, where), tf.float32)


class LossInputs:
  """The batch and outputs of one call, with what terms share computed once.

  Everything is computed lazily, so a per-pixel criterion never reads mask
  keys.
  """

  def __init__(self, batch: Mapping[str, Any], outputs: Mapping[str, Any],
               mask_activation: str, crowd_as_void: bool,
               mask_logit_transform: Optional["MaskLogitTransform"],
               aux_weight: float = 1.0, mask_presence: str = "loss_size"):
    self.batch = batch
    self.outputs = outputs
    self.aux_weight = aux_weight
    self.mask_activation = mask_activation
    self.crowd_as_void = crowd_as_void
    self.mask_logit_transform = mask_logit_transform
    self.mask_presence = mask_presence
    self._cache: Dict[Any, Any] = {}

  def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
    """`compute()`, evaluated once per call (e.g. one pixel sample for all
    stages)."""
    if key not in self._cache:
      self._cache[key] = compute()
    return self._cache[key]

  def gt(self, key: str) -> Any:
    """`batch[key]`, or a KeyError naming it."""
    return targets_lib.require(self.batch, key, "batch")

  def pred(self, key: str) -> tf.Tensor:
    """`outputs[key]` as float32, or a KeyError naming it."""
    return tf.cast(targets_lib.require(self.outputs, key, "outputs"),
                   tf.float32)

  @property
  def gt_semantic(self) -> tf.Tensor:
    """int32 [B, H, W] train ids."""
    return tf.cast(self.gt(common.GT_SEMANTIC), tf.int32)

  @property
  def gt_semantic_weight(self) -> tf.Tensor:
    """float [B, H, W] pixel weights, 0 at void and padding."""
    return self.gt(common.GT_SEMANTIC_WEIGHT)

  @property
  def size(self) -> Tuple[int, int]:
    """(h, w) of the final output's mask logits: the mask terms' grid."""
    return self.cached("size", lambda: tuple(
        self.pred(common.PRED_MASK_LOGITS).shape[1:3]))

  @property
  def num_classes(self) -> int:
    """C, from the final class logits [B, N, C + 1]."""
    return self.pred(common.PRED_CLASS_LOGITS).shape[-1] - 1

  @property
  def targets(self) -> targets_lib.MaskTargets:
    """The ground-truth masks at `size`."""
    return self.cached("targets", self._targets)

  def _targets(self) -> targets_lib.MaskTargets:
    return targets_lib.prepare_mask_targets(
        tf.cast(self.gt(common.GT_MASK_ID), tf.int32),
        tf.cast(self.gt(common.GT_CLASSES), tf.int32),
        self.gt(common.GT_IS_THING), self.gt_semantic, self.size,
        self.num_classes, self.crowd_as_void, self.mask_presence)

  @property
  def stages(self) -> List[Stage]:
    """Every decoder stage, aux outputs in order, the final output last."""
    return self.cached("stages", self._stages)

  @property
  def final(self) -> Stage:
    return self.stages[-1]

  def _check_shapes(self) -> int:
    """Validates the final output's mask predictions; returns N."""
    class_logits = self.pred(common.PRED_CLASS_LOGITS)
    mask_logits = self.pred(common.PRED_MASK_LOGITS)
    if class_logits.shape.rank != 3 or mask_logits.shape.rank != 4:
      raise ValueError(
          f"Criterion: expected {common.PRED_CLASS_LOGITS} [B, N, C+1] and "
          f"{common.PRED_MASK_LOGITS} [B, h, w, N], got {class_logits.shape} "
          f"and {mask_logits.shape}.")
    num_predictions = class_logits.shape[1]
    if mask_logits.shape[-1] != num_predictions:
      raise ValueError(
          f"Criterion: {common.PRED_MASK_LOGITS} has {mask_logits.shape[-1]} "
          f"masks but {common.PRED_CLASS_LOGITS} has {num_predictions}.")
    num_masks = self.gt(common.GT_CLASSES).shape[-1]
    if num_masks is None or num_predictions is None:
      raise ValueError("Criterion: K and N must be static, got "
                       f"{common.GT_CLASSES} "
                       f"{self.gt(common.GT_CLASSES).shape}, "
                       f"{common.PRED_CLASS_LOGITS} {class_logits.shape}.")
    return num_predictions

  def _stages(self) -> List[Stage]:
    num_predictions = self._check_shapes()
    size = self.size
    aux_outputs = self.outputs.get(common.AUX_OUTPUTS, None) or []
    dicts = list(aux_outputs) + [self.outputs]
    stages = []
    for index, output in enumerate(dicts):
      is_final = index == len(dicts) - 1
      where = ("outputs" if is_final
               else f"outputs[{common.AUX_OUTPUTS!r}][{index}]")
      class_logits = tf.cast(targets_lib.require(
          output, common.PRED_CLASS_LOGITS, where), tf.float32)
      mask_logits = resize_lib.resize_bilinear(tf.cast(targets_lib.require(
          output, common.PRED_MASK_LOGITS, where), tf.float32), size)
      mask_logits = tf.reshape(mask_logits,
                               [-1, size[0] * size[1], mask_logits.shape[-1]])
      if class_logits.shape[1] != num_predictions:
        raise ValueError(f"Criterion: {where} has {class_logits.shape[1]} "
                         f"predictions, the final output {num_predictions}.")
      transformed = mask_logits
      if self.mask_logit_transform is not None:
        transformed = self.mask_logit_transform(
            index, output, where, class_logits, mask_logits, size)
      stages.append(Stage(index, "" if is_final else aux_loss_name(index, ""),
                          where, output, is_final, class_logits, transformed,
                          mask_logits, self))
    return stages


class MaskLogitTransform(abc.ABC):
  """Changes a stage's flat mask logits before matching and the terms see them
  (ReMaX's ReMask)."""

  @abc.abstractmethod
  def __call__(self, index: int, output: Mapping[str, Any], where: str,
               class_logits: tf.Tensor, mask_logits: tf.Tensor,
               size: Tuple[int, int]) -> tf.Tensor:
    """Returns float32 [B, P, N] from mask_logits [B, P, N] of stage `index`."""


def _check_weight(weight: float, owner: str) -> None:
  if not weight >= 0:  # also rejects NaN
    raise ValueError(f"{owner}.weight must be >= 0, got {weight}.")


class LossTerm(abc.ABC):
  """A term computed once from the final outputs.

  Subclasses set `name` (the loss key) and implement `per_image`.
  """

  name: ClassVar[str] = ""
  needs_matching: ClassVar[bool] = False

  def __init__(self, weight: float = 1.0):
    _check_weight(weight, type(self).__name__)
    self.weight = weight

  def applies(self, inputs: LossInputs) -> bool:  # pylint: disable=unused-argument
    """Whether the term reports anything for this call."""
    return True

  @abc.abstractmethod
  def per_image(self, inputs: LossInputs) -> tf.Tensor:
    """Unweighted loss of every image, float32 [B]."""

  def __call__(self, inputs: LossInputs) -> Dict[str, tf.Tensor]:
    """{name: weight * batch mean}, or a zero when the weight is 0."""
    if not self.weight:
      return {self.name: tf.zeros([], tf.float32)}
    return {self.name: self.weight * tf.reduce_mean(self.per_image(inputs))}


class StageLossTerm(abc.ABC):
  """A term computed on every decoder stage (deep supervision).

  Subclasses set `name` and implement `per_image(inputs, stage)`.
  """

  name: ClassVar[str] = ""
  needs_matching: ClassVar[bool] = False
  aux_weighted: ClassVar[bool] = True  # aux stages x Criterion.aux_weight

  def __init__(self, weight: float = 1.0):
    _check_weight(weight, type(self).__name__)
    self.weight = weight

  def applies(self, inputs: LossInputs, stage: Stage) -> bool:  # pylint: disable=unused-argument
    """Whether the term reports anything for this stage."""
    return True

  @abc.abstractmethod
  def per_image(self, inputs: LossInputs, stage: Stage) -> tf.Tensor:
    """Unweighted loss of every image at this stage, float32 [B]."""

  def __call__(self, inputs: LossInputs, stage: Stage) -> Dict[str, tf.Tensor]:
    """{stage.prefix + name: weighted batch mean}."""
    key = stage.prefix + self.name
    if not self.weight:
      return {key: tf.zeros([], tf.float32)}
    value = self.weight * tf.reduce_mean(self.per_image(inputs, stage))
    if not stage.is_final and self.aux_weighted:
      value = inputs.aux_weight * value
    return {key: value}


class MatchingCost(abc.ABC):
  """The Hungarian cost of giving each prediction to each ground-truth mask."""

  @abc.abstractmethod
  def __call__(self, inputs: LossInputs, stage: Stage) -> tf.Tensor:
    """float32 [B, K, N] cost (lower is a better pair), without gradient."""


@gin.configurable
class HungarianMatcher:
  """Matches ground-truth masks to predictions, once or per decoder stage.

  Args:
    cost: the `MatchingCost` (`PQSimilarityCost` for the MaX-DeepLab family,
      `FocalDiceCost` for Panoptic SegFormer).
    mode: "shared": match the final output once and use that matching for
      every stage (deeplab2, kMaX-DeepLab); "per_stage": match every stage on
      its own predictions (DETR-style).
    method: "scipy" (host call), "tpu" (pure TF, XLA) or None (tpu under
      TPUStrategy, scipy otherwise); see `matching.hungarian_matching`.
  """

  def __init__(self, cost: Optional[MatchingCost] = None,
               mode: str = "shared", method: Optional[str] = None):
    if cost is None:
      raise ValueError("HungarianMatcher.cost is not set; bind it in gin, e.g. "
                       "HungarianMatcher.cost = @PQSimilarityCost().")
    if mode not in MATCHING_MODES:
      raise ValueError(f"HungarianMatcher.mode must be one of "
                       f"{MATCHING_MODES}, got {mode!r}.")
    if method not in (None,) + matching_lib.METHODS:
      raise ValueError(f"HungarianMatcher.method must be one of "
                       f"{matching_lib.METHODS} or None, got {method!r}.")
    self.cost = cost
    self.mode = mode
    self.method = method

  def _match(self, inputs: LossInputs, stage: Stage) -> tf.Tensor:
    return matching_lib.match_ground_truth(
        self.cost(inputs, stage), inputs.targets.present, self.method)

  def __call__(self, inputs: LossInputs) -> Matching:
    """int32 [B, K] ("shared") or a list of them, one per stage."""
    if self.mode == "shared":
      return self._match(inputs, inputs.final)
    return [self._match(inputs, stage) for stage in inputs.stages]

  def assignments(self, inputs: LossInputs,
                  matching: Matching) -> List[tf.Tensor]:
    """float32 [B, K, N] one-hot assignment of every stage from a matching."""
    stages = inputs.stages
    if isinstance(matching, (list, tuple)):
      if len(matching) != len(stages):
        raise ValueError(f"Criterion: {len(matching)} matchings for "
                         f"{len(stages)} decoder stages.")
      matchings = list(matching)
    else:
      matchings = [matching] * len(stages)
    num_masks = inputs.targets.present.shape[-1]
    num_predictions = inputs.final.class_logits.shape[1]
    result = []
    for matched in matchings:
      matched = tf.stop_gradient(tf.cast(matched, tf.int32))
      if matched.shape.rank != 2 or matched.shape[-1] != num_masks:
        raise ValueError(f"Criterion: matching must be [B, {num_masks}], got "
                         f"{matched.shape}.")
      result.append(targets_lib.assignment_matrix(
          matched, inputs.targets.present, num_predictions))
    return result


@gin.configurable
class Criterion:
  """Sum of weighted named loss terms; see the module docstring.

  Args:
    terms: the `LossTerm`s and `StageLossTerm`s, in the order their entries
      appear (per stage: every stage's terms, then the final-only ones).
    matcher: a `HungarianMatcher`; required when a term needs matching
      (e.g. PQ-style, Dice, focal), None for per-pixel criteria.
    aux_weight: multiplies the per-stage terms of the auxiliary stages
      (deeplab2: 1.0).
    mask_activation: "softmax" over the N masks (MaX-DeepLab, kMaX) or
      "sigmoid" per mask (ReMaX, Panoptic SegFormer): how every mask term and
      the matching read mask logits.
    crowd_as_void: see `targets.prepare_mask_targets` (deeplab2: False).
    mask_logit_transform: optional `MaskLogitTransform` applied to each
      stage's mask logits (ReMaX's `ReMask`).
    mask_presence: which ground-truth masks count (and are matched):
      "loss_size", those with a pixel at the loss grid (deeplab2), or
      "input_size", every mask of the input (Mask2Former, whose point-sampled
      terms read the full-size masks); see `targets.prepare_mask_targets`.
  """

  def __init__(self, terms: Sequence[Union[LossTerm, StageLossTerm]] = (),
               matcher: Optional[HungarianMatcher] = None,
               aux_weight: float = 1.0, mask_activation: str = "softmax",
               crowd_as_void: bool = False,
               mask_logit_transform: Optional[MaskLogitTransform] = None,
               mask_presence: str = "loss_size"):
    terms = list(terms)
    if not terms:
      raise ValueError("Criterion.terms is empty; bind the loss terms in gin "
                       "(configs/losses/ has one file per paper).")
    for term in terms:
      if not isinstance(term, (LossTerm, StageLossTerm)):
        raise TypeError(f"Criterion.terms: {term!r} is not a LossTerm or "
                        "StageLossTerm (write @Term() in gin, with the "
                        "parentheses).")
    needing = [type(t).__name__ for t in terms if t.needs_matching]
    if needing and matcher is None:
      raise ValueError(f"Criterion: {needing} need a matching but "
                       "Criterion.matcher is None; bind it, e.g. "
                       "Criterion.matcher = @HungarianMatcher().")
    if mask_activation not in targets_lib.MASK_ACTIVATIONS:
      raise ValueError(f"Criterion.mask_activation must be one of "
                       f"{targets_lib.MASK_ACTIVATIONS}, got "
                       f"{mask_activation!r}.")
    if mask_presence not in targets_lib.MASK_PRESENCES:
      raise ValueError(f"Criterion.mask_presence must be one of "
                       f"{targets_lib.MASK_PRESENCES}, got {mask_presence!r}.")
    self.stage_terms = [t for t in terms if isinstance(t, StageLossTerm)]
    self.final_terms = [t for t in terms if isinstance(t, LossTerm)]
    self.matcher = matcher
    self.aux_weight = aux_weight
    self.mask_activation = mask_activation
    self.crowd_as_void = crowd_as_void
    self.mask_logit_transform = mask_logit_transform
    self.mask_presence = mask_presence

  def inputs(self, batch: Mapping[str, Any],
             outputs: Mapping[str, Any]) -> LossInputs:
    """The shared, lazily computed view of one call's batch and outputs."""
    return LossInputs(batch, outputs, self.mask_activation,
                      self.crowd_as_void, self.mask_logit_transform,
                      self.aux_weight, self.mask_presence)

  def match(self, batch: Mapping[str, Any],
            outputs: Mapping[str, Any]) -> Matching:
    """Only the matching (the step that may be a host call).

    Returns:
      int32 [B, K]: the prediction matched to each ground-truth slot, -1 for
      absent slots and masks left without a prediction; a list of them (one
      per stage, aux outputs first) with `HungarianMatcher.mode="per_stage"`.
    """
    if self.matcher is None:
      raise ValueError("Criterion.match: this criterion has no matcher.")
    return self.matcher(self.inputs(batch, outputs))

  def __call__(self, batch: Mapping[str, Any], outputs: Mapping[str, Any],
               matching: Optional[Matching] = None) -> Dict[str, tf.Tensor]:
    """All weighted terms and their sum, common.LOSS_TOTAL.

    Args:
      batch: ground truth (common.GT_*), what the terms read.
      outputs: model outputs (common.PRED_*, common.AUX_OUTPUTS).
      matching: optional result of `match`; computed here when None.

    Returns:
      Dict of float32 scalars; see the module docstring.
    """
    inputs = self.inputs(batch, outputs)
    if self.matcher is not None:
      if matching is None:
        matching = self.matcher(inputs)
      for stage, assignment in zip(inputs.stages,
                                   self.matcher.assignments(inputs, matching)):
        stage.assignment = assignment
    elif matching is not None:
      raise ValueError("Criterion: a matching was given but this criterion "
                       "has no matcher.")
    losses: Dict[str, tf.Tensor] = {}
    if self.stage_terms:
      for stage in inputs.stages:
        for term in self.stage_terms:
          if term.applies(inputs, stage):
            _add(losses, term(inputs, stage), term)
    for term in self.final_terms:
      if term.applies(inputs):
        _add(losses, term(inputs), term)
    losses[common.LOSS_TOTAL] = tf.add_n(list(losses.values()))
    return losses


def _add(losses: Dict[str, tf.Tensor], new: Mapping[str, tf.Tensor],
         term: Any) -> None:
  """Adds a term's entries, refusing a name another term already took."""
  for key, value in new.items():
    if key in losses or key == common.LOSS_TOTAL:
      raise ValueError(f"Criterion: {type(term).__name__} reports {key!r}, "
                       "which another term already reports.")
    losses[key] = value
