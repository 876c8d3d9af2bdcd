"""Parameter and multiply-add counts of a model, as the papers report them."""

from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base as modeling_base


def count_params(variables: Sequence[tf.Variable]) -> int:
  """Number of scalars in ``variables`` (unique by identity)."""
  seen = {}
  for v in variables:
    seen[id(v)] = int(np.prod(v.shape.as_list()))
  return int(sum(seen.values()))


def parameter_counts(model: modeling_base.SegmentationModel) -> Dict[str, int]:
  """``params``: the inference model (training-only heads excluded, as the papers
  count, BN statistics included as deeplab2's Keras counts do); ``train_params``:
  every trainable variable, training-only heads included."""
  modeling_base.check_part("parameter_counts", "model", model,
                           modeling_base.SegmentationModel)
  training_only = {id(v) for layer in model.training_only_layers for v in layer.weights}
  inference = [v for v in model.weights if id(v) not in training_only]
  return {"params": count_params(inference),
          "train_params": count_params(model.trainable_weights)}


def _einsum_macs(equation: str, shapes) -> int:
  inputs, output = equation.replace(" ", "").split("->")
  sizes = {}
  for spec, shape in zip(inputs.split(","), shapes):
    for letter, dim in zip(spec, shape):
      sizes[letter] = dim
  letters = set("".join(inputs.split(",")))
  return int(np.prod([sizes[c] for c in letters]))


def _op_macs(op: tf.Operation) -> int:
  """Multiply-adds of one graph op with static shapes (0 for cheap ops)."""
  try:
    if op.type in ("Conv2D", "DepthwiseConv2dNative"):
      out = op.outputs[0].shape.as_list()
      kernel = op.inputs[1].shape.as_list()
      per_output = kernel[0] * kernel[1] * (kernel[2] if op.type == "Conv2D" else 1)
      return int(np.prod(out) * per_output)
    if op.type == "MatMul":
      a = op.inputs[0].shape.as_list()
      out = op.outputs[0].shape.as_list()
      inner = a[0] if op.get_attr("transpose_a") else a[1]
      return int(np.prod(out) * inner)
    if op.type in ("BatchMatMulV2", "BatchMatMulV3", "BatchMatMul"):
      a = op.inputs[0].shape.as_list()
      out = op.outputs[0].shape.as_list()
      inner = a[-2] if op.get_attr("adj_x") else a[-1]
      return int(np.prod(out) * inner)
    if op.type == "Einsum":
      eq = op.get_attr("equation").decode()
      return _einsum_macs(eq, [t.shape.as_list() for t in op.inputs])
  except (TypeError, ValueError):
    return 0  # Unknown dims: not countable statically.
  return 0


def count_macs(model: keras.Model, input_size: Tuple[int, int], batch_size: int = 1) -> int:
  """Multiply-adds of one inference forward pass at ``input_size``, per image.

  Counts convolutions, matrix products and einsums (where the papers' M-Adds come
  from); element-wise ops are left out, as the papers do.
  """
  spec = tf.TensorSpec([batch_size, input_size[0], input_size[1], 3], tf.float32)
  fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
  total = sum(_op_macs(op) for op in fn.graph.get_operations())
  return total // batch_size
