"""SavedModel export: images in three encodings, the declared result maps at the original resolution out.

Signatures (every one returns the same outputs, see :class:`PanopticExportModule`):

* ``serving_default``: ``images`` uint8 ``[batch, height, width, 3]``, any size,
  batch >= 1 (one size per request, as a dense tensor has).
* ``serve_encoded_images``: ``encoded_images`` string ``[batch]``, JPEG / PNG (or
  GIF / BMP) files. Images of one request may differ in size.
* ``serve_tf_example``: ``serialized_examples`` string ``[batch]``, serialized
  ``tf.train.Example`` in this library's TFRecord schema (``data/tfrecord.py``);
  only the image is used, a stored label is checked and ignored. Sizes may differ.
* ``serve_padded_batch``: ``images`` uint8 ``[batch, height, width, 3]`` holding
  images of mixed sizes, each at the top-left of its slot (the rest is ignored),
  and ``image_sizes`` int32 ``[batch, 2]``, each image's (height, width). What
  ``deeplab_panoptic.load(...).predict`` sends.

One more signature returns the model's raw outputs instead (see
:meth:`PanopticExportModule.serve_logits`):

* ``serve_logits``: ``images`` uint8 ``[batch, height, width, 3]`` (one size) ->
  the model outputs the postprocessor reads (``pred_class_logits``
  ``[batch, N, num_classes + 1]`` and ``pred_mask_logits`` ``[batch, h, w, N]`` for
  a mask transformer, ``pred_semantic_logits`` for a per-pixel model), float32,
  over the padded model input, with ``resized_height`` / ``resized_width`` (the
  image's part of it) and ``original_height`` / ``original_width``.

When the images of a request differ in size, the maps are returned padded
bottom/right with void to the largest height and width of the request, and
``original_height`` / ``original_width`` say which part belongs to each image.

The dataset description (classes, dataset category ids, colours, label divisor,
ignore label) travels inside the SavedModel: ``loaded.export_info()`` returns it
as JSON (see :func:`read_export_info`), and ``assets.extra/export_info.json``
holds the same text for tools that do not load TensorFlow.
"""

import json
import os
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic import common
from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.data import input_config as input_config_lib
from deeplab_panoptic.data import preprocessing
from deeplab_panoptic.data import tfrecord
from deeplab_panoptic.modeling import base as modeling_base
from deeplab_panoptic.ops import resize as resize_ops
from deeplab_panoptic.postprocess import base as postprocess_base
from deeplab_panoptic.postprocess import resolution

# Per mask slot: the panoptic label (semantic * label_divisor + instance) of the
# segment the slot belongs to, -1 when it holds no pixel at the original size.
SEGMENT_IDS = "segment_ids"

SERVING_DEFAULT = "serving_default"
SERVE_ENCODED_IMAGES = "serve_encoded_images"
SERVE_TF_EXAMPLE = "serve_tf_example"
SERVE_PADDED_BATCH = "serve_padded_batch"
SERVE_LOGITS = "serve_logits"
# Signature name -> its input name (or names).
SIGNATURE_INPUTS = {
    SERVING_DEFAULT: "images",
    SERVE_ENCODED_IMAGES: "encoded_images",
    SERVE_TF_EXAMPLE: "serialized_examples",
    SERVE_PADDED_BATCH: ("images", "image_sizes"),
    SERVE_LOGITS: "images",
}
EXPORT_INFO_FILE = os.path.join("assets.extra", "export_info.json")


def fit_and_pad(images: tf.Tensor, input_size: Tuple[int, int],
                eval_resize: str = preprocessing.FIT_SHRINK_ONLY, short_side: int = 800,
                max_long_side: int = 1333):
  """The reader's evaluation preprocessing, on a batch of same-size images.

  The resized size comes from ``preprocessing.eval_resize_size`` (the function the
  reader uses), the image is resized bilinearly only when that size differs, padded
  bottom/right with raw value 127.5 and normalised to [-1, 1].

  Args:
    images: uint8 ``[batch, height, width, 3]``.
    input_size: static ``(H, W)`` of the model input.
    eval_resize, short_side, max_long_side: as ``InputConfig``'s ``eval_resize``,
      ``eval_short_side``, ``eval_max_long_side``.

  Returns:
    ``(inputs [batch, H, W, 3] float32, (resized_height, resized_width))``.
  """
  height, width = input_size
  x = tf.cast(images, tf.float32)
  shape = tf.shape(images)[1:3]
  size = preprocessing.eval_resize_size(shape, (height, width), eval_resize, short_side,
                                        max_long_side)
  # The reader's resize, so the exported model sees the evaluation's pixels.
  x = tf.cond(tf.reduce_all(tf.equal(size, shape)), lambda: x,
              lambda: resize_ops.resize_bilinear(x, size))
  rh, rw = size[0], size[1]
  x = tf.pad(x, [[0, 0], [0, height - rh], [0, width - rw], [0, 0]],
             constant_values=preprocessing.IMAGE_PAD_VALUE)
  x = preprocessing.normalize_image(x)
  return tf.ensure_shape(x, [None, height, width, 3]), (rh, rw)


class _Untracked:
  """Holds a value out of TensorFlow's object tracking (and so out of SavedModels)."""

  def __init__(self, value: Any):
    self.value = value


@gin.configurable(denylist=["model", "postprocessor", "dataset_info"])
class PanopticExportModule(tf.Module):
  """Serving module around a trained model and its postprocessor.

  The outputs follow the results the postprocessor declares
  (``postprocess/base.py``; ``export_info()["results"]`` lists them): ``panoptic``
  gives ``panoptic`` and the ``segment_*`` tensors, ``semantic`` gives
  ``semantic``, ``instance`` gives ``instance``, ``segment_classes`` and
  ``segment_scores``; every signature also returns ``original_height`` /
  ``original_width``. For a panoptic model (``B`` images, ``N`` mask slots,
  ``H x W`` the largest original size in the request -- the image size when all
  agree):

  * ``panoptic`` int32 ``[B, H, W]``: ``semantic * label_divisor + instance``,
    void ``ignore_label * label_divisor`` (also the padding).
  * ``semantic`` int32 ``[B, H, W]``: train ids, ``ignore_label`` at void.
  * ``instance`` int32 ``[B, H, W]``: instance ids, 0 for stuff and void.
  * ``segment_classes`` int32 ``[B, N]``: the class of each slot, -1 for a slot
    the postprocessor dropped (as the postprocessor returns it).
  * ``segment_scores`` float32 ``[B, N]``: the class confidence of each slot.
  * ``segment_ids`` int32 ``[B, N]``: the panoptic label of the segment each slot
    belongs to, -1 when it holds no pixel at the original resolution.
  * ``segment_areas`` int32 ``[B, N]``: pixels of that segment at the original
    resolution (0 with id -1). Stuff slots of one class form one segment, so they
    share its id and area: count each segment id once.
  * ``original_height``, ``original_width`` int32 ``[B]``.

  Args:
    model: the trained model.
    postprocessor: a ``postprocess.base.Postprocessor``; a panoptic one may also
      return ``SEGMENT_IDS`` (per slot, at the model input size). Without
      ``SEGMENT_IDS`` the per-pixel-argmax convention is assumed: a thing slot
      ``i`` has instance ``i + 1``, stuff slots instance 0.
    input_size: model input size (H, W); default: the recipe's
      ``InputConfig.crop_size`` (the evaluation crop size).
    eval_resize, short_side, max_long_side: the evaluation resize of the reader;
      default: ``InputConfig``'s ``eval_resize``, ``eval_short_side``,
      ``eval_max_long_side``, so the SavedModel preprocesses as evaluation does.
    dataset_info: the dataset description stored in the SavedModel; default: the
      gin-selected ``dataset_info()``.
  """

  def __init__(self, model: keras.Model, postprocessor: Callable,
               input_size: Optional[Sequence[int]] = None,
               eval_resize: Optional[str] = None, short_side: Optional[int] = None,
               max_long_side: Optional[int] = None,
               dataset_info: Optional[dataset_info_lib.DatasetInfo] = None):
    super().__init__(name="panoptic_export")
    # The SavedModel holds the inference model only: the model is kept untracked
    # and only the variables outside its `training_only_layers` (semantic heads,
    # ReMaX heads; the serving graph never runs them) are tracked and saved.
    self._model_holder = _Untracked(model)
    modeling_base.check_part("PanopticExportModule", "model", model,
                             modeling_base.SegmentationModel)
    training_only = {id(v) for layer in model.training_only_layers for v in layer.weights}
    self.inference_variables = [v for v in model.weights if id(v) not in training_only]
    self.postprocessor = postprocessor
    self.results = postprocess_base.check_results(type(postprocessor).__name__,
                                                  postprocessor.results)
    config = input_config_lib.InputConfig(
        **({} if input_size is None else {"crop_size": tuple(input_size)}))
    eval_resize = config.eval_resize if eval_resize is None else eval_resize
    short_side = config.eval_short_side if short_side is None else short_side
    max_long_side = config.eval_max_long_side if max_long_side is None else max_long_side
    self.input_size = config.crop_size
    self._resize = (eval_resize, short_side, max_long_side)
    info = dataset_info if dataset_info is not None else dataset_info_lib.dataset_info()
    self._info = info
    self._export_info_json = json.dumps({
        "dataset_info": dataset_info_lib.to_json(info),
        "input_size": list(self.input_size),
        "eval_resize": eval_resize, "short_side": short_side,
        "max_long_side": max_long_side,
        "signatures": SIGNATURE_INPUTS,
        "results": sorted(self.results),
    })

  @property
  def model(self) -> keras.Model:
    return self._model_holder.value

  @property
  def export_info_json(self) -> str:
    return self._export_info_json

  @property
  def signatures(self) -> Dict[str, Any]:
    """Signature name -> concrete function, as ``tf.saved_model.save`` takes them."""
    return {SERVING_DEFAULT: self.serve, SERVE_ENCODED_IMAGES: self.serve_encoded_images,
            SERVE_TF_EXAMPLE: self.serve_tf_example,
            SERVE_PADDED_BATCH: self.serve_padded_batch, SERVE_LOGITS: self.serve_logits}

  # ------------------------------------------------------------------ signatures
  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  def serve(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """uint8 ``[B, H, W, 3]`` -> the outputs listed in the class docstring."""
    batch = tf.shape(images)[0]
    inputs, (rh, rw) = fit_and_pad(images, self.input_size, *self._resize)
    resized = tf.tile(tf.stack([rh, rw])[tf.newaxis], [batch, 1])
    original = tf.tile(tf.shape(images)[tf.newaxis, 1:3], [batch, 1])
    return self._predict(inputs, resized, original)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="encoded_images")])
  def serve_encoded_images(self, encoded_images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """string ``[B]`` image files -> the outputs listed in the class docstring."""
    def decode(data: tf.Tensor) -> tf.Tensor:
      return tf.io.decode_image(data, channels=3, dtype=tf.uint8, expand_animations=False)
    return self._predict_each(encoded_images, decode)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="serialized_examples")])
  def serve_tf_example(self, serialized_examples: tf.Tensor) -> Dict[str, tf.Tensor]:
    """string ``[B]`` serialized tf.Examples -> the outputs listed in the class docstring."""
    def decode(data: tf.Tensor) -> tf.Tensor:
      return tfrecord.decode_record(data, source="the serving request")[common.IMAGE]
    return self._predict_each(serialized_examples, decode)

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, None, 3], tf.uint8, name="images"),
      tf.TensorSpec([None, 2], tf.int32, name="image_sizes")])
  def serve_padded_batch(self, images: tf.Tensor, image_sizes: tf.Tensor
                         ) -> Dict[str, tf.Tensor]:
    """Images of mixed sizes in one dense batch -> the outputs of the class docstring.

    Args:
      images: uint8 ``[B, H, W, 3]``; image ``b`` is ``images[b, :h_b, :w_b]``.
      image_sizes: int32 ``[B, 2]``, ``(h_b, w_b)``, each in ``[1, (H, W)]``.
    """
    # A size outside its slot would silently crop or pad the image: refuse it.
    checks = [tf.debugging.assert_positive(image_sizes, message="image_sizes must be >= 1"),
              tf.debugging.assert_less_equal(
                  image_sizes, tf.shape(images)[tf.newaxis, 1:3],
                  message="image_sizes exceed the padded images' height / width")]
    with tf.control_dependencies(checks):
      images = tf.identity(images)

    def crop(element: Tuple[tf.Tensor, tf.Tensor]) -> tf.Tensor:
      image, size = element
      return image[:size[0], :size[1]]
    return self._predict_each((images, image_sizes), crop)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
  def serve_logits(self, images: tf.Tensor) -> Dict[str, tf.Tensor]:
    """uint8 ``[B, H, W, 3]`` -> the raw model outputs the postprocessor reads.

    Returns:
      Each key of the postprocessor's ``required_outputs`` (e.g.
      ``pred_class_logits`` ``[B, N, C + 1]``, ``pred_mask_logits`` ``[B, h, w, N]``)
      float32, computed on the padded model input ``input_size``; and int32 ``[B]``
      ``resized_height`` / ``resized_width`` (the image's part of that input) and
      ``original_height`` / ``original_width``.
    """
    batch = tf.shape(images)[0]
    inputs, (rh, rw) = fit_and_pad(images, self.input_size, *self._resize)
    outputs = resolution.model_outputs(self.model, inputs)
    result = {key: outputs[key] for key in self.postprocessor.required_outputs}
    result[common.RESIZED_HEIGHT] = tf.fill([batch], rh)
    result[common.RESIZED_WIDTH] = tf.fill([batch], rw)
    result[common.ORIGINAL_HEIGHT] = tf.fill([batch], tf.shape(images)[1])
    result[common.ORIGINAL_WIDTH] = tf.fill([batch], tf.shape(images)[2])
    return result

  @tf.function(input_signature=[])
  def export_info(self) -> tf.Tensor:
    """The export description (dataset, input size, resize, signatures) as JSON."""
    return tf.constant(self._export_info_json)

  # ------------------------------------------------------------------ internals
  def _predict_each(self, data: Any, decode: Callable[[Any], tf.Tensor]
                    ) -> Dict[str, tf.Tensor]:
    """Decodes and preprocesses each element on its own (sizes may differ).

    Args:
      data: a tensor (or a tuple of tensors) with the images on axis 0.
      decode: one element of ``data`` -> uint8 ``[height, width, 3]``.
    """
    height, width = self.input_size

    def one(element: Any):
      image = decode(element)
      inputs, (rh, rw) = fit_and_pad(image[tf.newaxis], self.input_size, *self._resize)
      return inputs[0], tf.stack([rh, rw]), tf.shape(image)[:2]

    inputs, resized, original = tf.map_fn(
        one, data, fn_output_signature=(tf.TensorSpec([height, width, 3], tf.float32),
                                        tf.TensorSpec([2], tf.int32),
                                        tf.TensorSpec([2], tf.int32)))
    return self._predict(inputs, resized, original)

  def _predict(self, inputs: tf.Tensor, resized: tf.Tensor, original: tf.Tensor
               ) -> Dict[str, tf.Tensor]:
    """Model, postprocessor, and the undoing of the preprocessing.

    Args:
      inputs: float32 ``[B, H, W, 3]`` model inputs.
      resized: int32 ``[B, 2]`` valid (height, width) inside each padded input.
      original: int32 ``[B, 2]`` original (height, width) of each image.

    Returns:
      The outputs listed in the class docstring.
    """
    info = self._info
    # The evaluator calls the same two functions: evaluation scores the served maps.
    predictions = resolution.infer_at_input_size(self.model, self.postprocessor, inputs)
    map_keys = postprocess_base.result_maps(self.results)
    voids = postprocess_base.map_void_values(self.results, info.label_divisor,
                                             info.ignore_label)
    maps = tf.stack([predictions[key] for key in map_keys], axis=-1)   # [B, H, W, M]
    maps = resolution.restore_original_resolution(
        maps, resized, original, void=[voids[key] for key in map_keys])
    outputs = {key: maps[..., c] for c, key in enumerate(map_keys)}
    for key in postprocess_base.result_mask_stacks(self.results):
      stack = tf.cast(predictions[key], tf.uint8)                      # [B, H, W, K]
      stack = resolution.restore_original_resolution(
          stack, resized, original, void=[0] * stack.shape[-1], dtype=tf.uint8)
      outputs[key] = tf.cast(stack, tf.bool)
    outputs.update({key: predictions[key]
                    for key in postprocess_base.result_slot_tensors(self.results)})
    if postprocess_base.PANOPTIC in self.results:
      segment_ids = self._segment_ids(predictions)
      areas = self._areas(outputs[common.PANOPTIC], segment_ids)
      outputs[SEGMENT_IDS] = tf.where(areas > 0, segment_ids, -1)
      outputs[common.SEGMENT_AREAS] = areas
    outputs[common.ORIGINAL_HEIGHT] = original[:, 0]
    outputs[common.ORIGINAL_WIDTH] = original[:, 1]
    return outputs

  def _segment_ids(self, predictions: Dict[str, tf.Tensor]) -> tf.Tensor:
    """int32 ``[B, N]`` panoptic label of each slot's segment, -1 for dropped slots."""
    if SEGMENT_IDS in predictions:
      return predictions[SEGMENT_IDS]
    classes = predictions[common.SEGMENT_CLASSES]
    num_slots = tf.shape(classes)[1]
    is_thing = tf.gather(tf.constant(self._info.is_thing, tf.bool), tf.maximum(classes, 0))
    instance = tf.where(is_thing, tf.range(1, num_slots + 1)[tf.newaxis], 0)
    return tf.where(classes >= 0, classes * self._info.label_divisor + instance, -1)

  def _areas(self, panoptic: tf.Tensor, segment_ids: tf.Tensor) -> tf.Tensor:
    """Pixels of each slot's segment in ``panoptic`` (0 for id -1).

    Args:
      panoptic: int32 ``[B, H, W]`` at the original resolution.
      segment_ids: int32 ``[B, N]``.

    Returns:
      int32 ``[B, N]``.
    """
    info = self._info
    # Every label is below (ignore_label + 1) * label_divisor: one histogram per
    # image, all in one bincount through per-image offsets.
    num_labels = (info.ignore_label + 1) * info.label_divisor
    batch = tf.shape(panoptic)[0]
    flat = tf.reshape(panoptic, [batch, -1]) + tf.range(batch)[:, tf.newaxis] * num_labels
    counts = tf.math.bincount(flat, minlength=batch * num_labels,
                              maxlength=batch * num_labels, dtype=tf.int32)
    counts = tf.reshape(counts, [batch, num_labels])
    areas = tf.gather(counts, tf.clip_by_value(segment_ids, 0, num_labels - 1), batch_dims=1)
    return tf.where(segment_ids >= 0, areas, 0)


def export_saved_model(module: PanopticExportModule, export_dir: str) -> str:
  """Writes the SavedModel (all signatures) to ``export_dir`` through a temporary directory.

  Returns:
    ``export_dir``.
  """
  tmp_dir = export_dir.rstrip("/") + ".tmp"
  if tf.io.gfile.exists(tmp_dir):
    tf.io.gfile.rmtree(tmp_dir)
  tf.saved_model.save(module, tmp_dir, signatures=module.signatures)
  tf.io.gfile.makedirs(os.path.join(tmp_dir, os.path.dirname(EXPORT_INFO_FILE)))
  with tf.io.gfile.GFile(os.path.join(tmp_dir, EXPORT_INFO_FILE), "w") as f:
    f.write(module.export_info_json)
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rmtree(export_dir)
  tf.io.gfile.rename(tmp_dir, export_dir)
  return export_dir


def read_export_info(loaded: Any) -> Dict[str, Any]:
  """The export description of a loaded SavedModel.

  Args:
    loaded: ``tf.saved_model.load(export_dir)``.

  Returns:
    ``{"dataset_info": {...}, "input_size": [H, W], ...}``.

  Raises:
    ValueError: if the SavedModel was not written by :func:`export_saved_model`.
  """
  if not hasattr(loaded, "export_info"):
    raise ValueError("The SavedModel holds no export_info: export it again with "
                     "this version (python main.py --mode=export).")
  return json.loads(loaded.export_info().numpy().decode("utf-8"))


def dataset_info_from_export(export_info: Dict[str, Any]) -> dataset_info_lib.DatasetInfo:
  """The dataset description stored in an export."""
  data = export_info["dataset_info"]
  return dataset_info_lib.from_categories_list(
      data.get("name", "dataset"), data["categories"], int(data["label_divisor"]),
      int(data["ignore_label"]), source="the SavedModel's export_info")
