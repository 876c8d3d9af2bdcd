"""Contracts of the parts a meta-architecture is assembled from.

Every model of the library is a meta-architecture (``MaskTransformer``, a set of
masks; ``SemanticSegmenter``, one label per pixel) with parts injected by gin.
Each part subclasses one of the base classes below, which fix what it takes and
what it returns; a meta-architecture checks the types of its parts when it is
built, so a part in the wrong slot fails there with one clear error, not deep
inside a traced train step.

    part                  input                               output
    --------------------  ----------------------------------  ----------------------------
    PixelEncoder          images [B, H, W, 3]                 Features
    PixelDecoder          Features (the encoder's)            Features
    TransformerDecoder    Features (the pixel decoder's)      (class_embedding, mask_embedding,
                                                               aux) or, with
                                                               ``predicts_outputs``, the
                                                               prediction dict
    MaskPredictor         (pixel feature, class embedding,    prediction dict
                           mask embedding)
    PixelHead             Features                            logits [B, h, w, num_classes]
    FeatureHead           one feature map [B, h, w, c]        logits [B, h, w, num_classes]
    SegmentationModel     images [B, H, W, 3]                 prediction dict (common.PRED_*)

``Features`` is a dict: ``"stride<s>"`` -> ``[B, H/s, W/s, c_s]`` (``stride_key``),
the last feature made at stride ``s``; a part may add other entries under the keys
of ``deeplab_panoptic.common`` (e.g. ``common.MEMORY``, MaX-DeepLab's memory path,
``[B, N, c]``), which the parts that read them document. A prediction dict holds
``common.PRED_CLASS_LOGITS`` ``[B, N, num_classes + 1]`` and
``common.PRED_MASK_LOGITS`` ``[B, h, w, N]``, optionally
``common.PRED_PIXEL_EMBEDDING`` ``[B, h, w, D]``, ``common.AUX_OUTPUTS`` (a list
of prediction dicts, deep supervision) and the family's training-only keys
(``common.PRED_STAGE_SEMANTIC_LOGITS``, ``PRED_REFERENCE_POINTS``,
``PRED_LOCATION_*``).

Every part also declares ``training_only_layers``: the sub-layers only the
training losses use (auxiliary heads). They are left out of the paper's
parameter count (``training/model_summary.py``) and out of the SavedModel
(``export/saved_model.py``), and the part must not run them outside training.
"""

from typing import ClassVar, Dict, List, Optional, Tuple, Union

import tensorflow as tf
import tf_keras as keras

Features = Dict[str, tf.Tensor]
"""``{"stride<s>": [batch, H/s, W/s, c_s], ...}`` (see the module docstring)."""

Prediction = Dict[str, tf.Tensor]
"""``{common.PRED_CLASS_LOGITS: [batch, N, num_classes + 1], ...}``."""

Embeddings = Tuple[tf.Tensor, tf.Tensor, List[Prediction]]
"""``(class_embedding [batch, N, d], mask_embedding [batch, N, d], aux)``."""

STRIDE_PREFIX = "stride"


def stride_key(stride: int) -> str:
  """The ``Features`` key of the feature at ``stride``: ``"stride<stride>"``."""
  return f"{STRIDE_PREFIX}{int(stride)}"


def stride_of(key: str) -> Optional[int]:
  """The stride of a ``Features`` key (``"stride8"`` -> 8), None for other keys."""
  if key.startswith(STRIDE_PREFIX) and key[len(STRIDE_PREFIX):].isdigit():
    return int(key[len(STRIDE_PREFIX):])
  return None


class Part(keras.layers.Layer):
  """Base of every part: a Keras layer that declares its training-only sub-layers."""

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """Sub-layers used only by the training losses (default: none).

    They are excluded from ``params`` and from the SavedModel; the part runs them
    only when called with ``training=True``.
    """
    return []


class _FeatureMaker(Part):
  """A part that makes ``Features`` and declares their widths."""

  output_channels: Optional[Dict[str, int]] = None
  """``{"stride<s>": c_s}``: the width of every ``"stride<s>"`` output, set by the
  constructor. None only where the part cannot know it before it sees its input
  (``PassThroughPixelDecoder`` returns its input's). Other output keys (e.g.
  ``common.MEMORY``) are not listed."""

  @property
  def output_strides(self) -> Tuple[int, ...]:
    """The strides of the ``"stride<s>"`` outputs, ascending (from ``output_channels``)."""
    if self.output_channels is None:
      raise ValueError(f"{type(self).__name__} declares no output_channels (it returns "
                       "its input's features).")
    return tuple(sorted(stride_of(k) for k in self.output_channels))


class PixelEncoder(_FeatureMaker):
  """Backbone: images -> features at several strides.

  ``call(images, training=None) -> Features``:
    images: float ``[batch, height, width, 3]`` normalised to [-1, 1].
    returns: ``{"stride<s>": [batch, ~height / s, ~width / s, output_channels[...]]}``
      for every declared stride, plus any family keys (``common.MEMORY``).
  """

  def call(self, images: tf.Tensor, training=None) -> Features:
    raise NotImplementedError(f"{type(self).__name__} must implement call(images).")


class PixelDecoder(_FeatureMaker):
  """Neck: encoder features -> decoder features.

  ``call(endpoints, training=None) -> Features``:
    endpoints: the pixel encoder's ``Features``.
    returns: ``Features`` at the declared strides (``output_channels``), plus any
      family keys it carries on (``common.MEMORY``, ``common.SEMANTIC_FEATURE``).
  """

  def call(self, endpoints: Features, training=None) -> Features:
    raise NotImplementedError(f"{type(self).__name__} must implement call(endpoints).")


class TransformerDecoder(Part):
  """Mask-slot decoder: pixel-decoder features -> embeddings or predictions.

  ``call(features, training=None)`` returns, by the class's ``predicts_outputs``:
    False: ``Embeddings``, ``(class_embedding [batch, N, d], mask_embedding
      [batch, N, d], aux)``, ``aux`` a list of prediction dicts (one per layer
      that predicts, possibly empty); the meta-architecture's ``MaskPredictor``
      turns the embeddings into the final prediction.
    True: the complete prediction dict (``common.PRED_CLASS_LOGITS``,
      ``PRED_MASK_LOGITS``, ``AUX_OUTPUTS``, ...); the meta-architecture builds
      no predictor.
  """

  predicts_outputs: ClassVar[bool] = False
  """Whether ``call`` returns the prediction dict itself (see the class docstring)."""

  def call(self, features: Features, training=None) -> Union[Embeddings, Prediction]:
    raise NotImplementedError(f"{type(self).__name__} must implement call(features).")


class MaskPredictor(Part):
  """Mask-transformer head: pixel feature and slot embeddings -> prediction dict.

  ``call(pixel_feature, class_embedding, mask_embedding, training=None) -> Prediction``:
    pixel_feature: ``[batch, h, w, c]`` (non-activated).
    class_embedding, mask_embedding: ``[batch, N, d]``.
    returns: ``common.PRED_CLASS_LOGITS`` ``[batch, N, num_classes + 1]``,
      ``common.PRED_MASK_LOGITS`` ``[batch, h, w, N]`` and, where the losses need
      it, ``common.PRED_PIXEL_EMBEDDING`` ``[batch, h, w, D]``.
  """

  def call(self, pixel_feature: tf.Tensor, class_embedding: tf.Tensor,
           mask_embedding: tf.Tensor, training=None) -> Prediction:
    raise NotImplementedError(f"{type(self).__name__} must implement call(pixel_feature, "
                              "class_embedding, mask_embedding).")


class PixelHead(Part):
  """Per-pixel head: features -> per-pixel class logits.

  ``call(features, training=None) -> tf.Tensor``:
    features: a ``Features`` dict (encoder endpoints or decoder features).
    returns: logits ``[batch, h, w, num_classes]`` at the head's output stride.
  """

  def call(self, features: Features, training=None) -> tf.Tensor:
    raise NotImplementedError(f"{type(self).__name__} must implement call(features).")


class FeatureHead(Part):
  """Head on one feature map: ``[batch, h, w, c]`` -> logits ``[batch, h, w, num_classes]``.

  ``call(feature, training=None) -> tf.Tensor`` (e.g. ReMaX's per-stage semantic
  head on a k-means key).
  """

  def call(self, feature: tf.Tensor, training=None) -> tf.Tensor:
    raise NotImplementedError(f"{type(self).__name__} must implement call(feature).")


class SegmentationModel(keras.Model):
  """Meta-architecture: images -> prediction dict, what training, evaluation and export run.

  ``call(images, training=None) -> Dict[str, tf.Tensor]``:
    images: float ``[batch, height, width, 3]`` normalised to [-1, 1].
    returns: the model's outputs under ``common.PRED_*`` keys.
  """

  @property
  def training_only_layers(self) -> List[keras.layers.Layer]:
    """Layers used only by the training losses (default: none): left out of
    ``params`` and of the SavedModel, never run outside training."""
    return []


def check_part(owner: str, slot: str, part, contract: type, optional: bool = False) -> None:
  """Raises a TypeError unless ``part`` is a ``contract`` (or None when ``optional``).

  Args:
    owner: the class checking, for the message (e.g. "MaskTransformer").
    slot: the argument the part was given as (e.g. "pixel_encoder").
    part: the part.
    contract: the base class it must subclass.
    optional: None is accepted.
  """
  if part is None and optional:
    return
  if not isinstance(part, contract):
    summary = contract.__doc__.strip().splitlines()[0].rstrip(".")
    raise TypeError(f"{owner}.{slot} must be a {contract.__module__}.{contract.__name__} "
                    f"({summary}), got {type(part).__name__}.")


def check_features(owner: str, part: _FeatureMaker, features) -> None:
  """Checks a ``PixelEncoder`` / ``PixelDecoder``'s output against its declaration.

  Run at trace time (static shapes only): the output is a dict, holds every
  declared ``"stride<s>"`` key, and each has the declared width.

  Raises:
    ValueError: naming the part, the key and what was declared.
  """
  name = type(part).__name__
  if not isinstance(features, dict):
    raise ValueError(f"{owner}: {name} must return a dict of features, got "
                     f"{type(features).__name__}.")
  declared = part.output_channels
  if declared is None:
    return
  for key, channels in declared.items():
    if key not in features:
      raise ValueError(f"{owner}: {name} declares output {key!r} but returns "
                       f"{sorted(features)}.")
    width = features[key].shape[-1]
    if width is not None and int(width) != int(channels):
      raise ValueError(f"{owner}: {name} declares {key!r} with {channels} channels, "
                       f"returns {int(width)}.")
