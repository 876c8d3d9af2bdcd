"""Parameter and multiply-add counts of a model, as the papers report them."""

import collections
import contextlib
import dataclasses
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling import base as modeling_base
from deeplab_panoptic.ops import resize


def count_params(variables: Sequence[tf.Variable]) -> int:
  """Number of scalars in ``variables`` (unique by identity)."""
  seen = {}
  for v in variables:
    seen[id(v)] = int(np.prod(v.shape.as_list()))
  return int(sum(seen.values()))


@contextlib.contextmanager
def zero_initial_values() -> Iterator[None]:
  """Variables created inside start at zeros instead of their initializer's draw.

  For counting (parameters, multiply-adds), where only the variables' shapes
  matter: drawing the random initial values is most of the time a large model
  takes to build on a CPU (ConvNeXt-L kMaX: 16 s of CPU with the draws, 6 s
  without). A variable created without a static shape or dtype keeps its
  initializer.
  """
  def creator(next_creator, **kwargs):
    shape, dtype = kwargs.get("shape"), kwargs.get("dtype")
    if (callable(kwargs.get("initial_value")) and dtype is not None and shape is not None
        and tf.TensorShape(shape).is_fully_defined()):
      kwargs["initial_value"] = lambda: tf.zeros(shape, dtype)
    return next_creator(**kwargs)

  with tf.variable_creator_scope(creator):
    yield


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


# Op types that do no multiply-adds the papers count: data movement, shapes,
# element-wise arithmetic and activations, reductions, normalisation pieces,
# pooling and resizing (the papers' M-Adds leave them out). An op type in
# neither this set nor _COUNTED is reported as uncounted, never taken as 0.
NO_MAC_OPS = frozenset({
    # graph plumbing, variables, constants
    "Placeholder", "Const", "Identity", "IdentityN", "NoOp", "ReadVariableOp",
    "VarHandleOp", "StopGradient", "PreventGradient", "Shape", "ShapeN", "Size",
    "Rank", "Cast", "Bitcast", "CheckNumerics", "EnsureShape", "Assert",
    # data movement and shape changes
    "Reshape", "Squeeze", "ExpandDims", "Transpose", "ConcatV2", "Concat", "Pack",
    "Unpack", "Split", "SplitV", "Slice", "StridedSlice", "Tile", "BroadcastTo",
    "BroadcastArgs", "Pad", "PadV2", "MirrorPad", "Fill", "ZerosLike", "OnesLike",
    "Range", "GatherV2", "GatherNd", "ResourceGather", "ScatterNd",
    "TensorScatterUpdate", "Where", "Select", "SelectV2", "OneHot", "Reverse",
    "ReverseV2", "Roll", "SpaceToBatchND", "BatchToSpaceND", "SpaceToDepth",
    "DepthToSpace", "ExtractImagePatches", "MatrixBandPart", "DiagPart",
    # element-wise arithmetic, comparisons, activations
    "AddV2", "Add", "AddN", "Sub", "Mul", "RealDiv", "Div", "DivNoNan", "FloorDiv",
    "FloorMod", "Mod", "Maximum", "Minimum", "Neg", "Abs", "Sign", "Square",
    "SquaredDifference", "Sqrt", "Rsqrt", "Reciprocal", "Pow", "Exp", "Log",
    "Log1p", "Erf", "Erfc", "Sin", "Cos", "Atan2", "Floor", "Ceil", "Round", "Relu",
    "Relu6", "Elu",
    "Selu", "LeakyRelu", "Softplus", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
    "BiasAdd", "ClipByValue", "Equal", "NotEqual", "Greater", "GreaterEqual",
    "Less", "LessEqual", "LogicalAnd", "LogicalOr", "LogicalNot", "IsFinite",
    "IsNan",
    # reductions and normalisation (statistics, not products with weights)
    "Sum", "Mean", "Max", "Min", "Prod", "All", "Any", "ArgMax", "ArgMin", "TopKV2",
    "Cumsum", "FusedBatchNormV3", "FusedBatchNorm",
    # pooling and resizing
    "MaxPool", "AvgPool", "ResizeBilinear", "ResizeNearestNeighbor", "ResizeBicubic",
})


def _conv_macs(op: tf.Operation) -> int:
  out = op.outputs[0].shape.as_list()
  kernel = op.inputs[1].shape.as_list()
  per_output = kernel[0] * kernel[1] * (kernel[2] if op.type == "Conv2D" else 1)
  return int(np.prod(out) * per_output)


def _matmul_macs(op: tf.Operation) -> int:
  a = op.inputs[0].shape.as_list()
  out = op.outputs[0].shape.as_list()
  if op.type == "MatMul":
    inner = a[0] if op.get_attr("transpose_a") else a[1]
  else:
    inner = a[-2] if op.get_attr("adj_x") else a[-1]
  return int(np.prod(out) * inner)


def _einsum_op_macs(op: tf.Operation) -> int:
  return _einsum_macs(op.get_attr("equation").decode(),
                      [t.shape.as_list() for t in op.inputs])


_COUNTED = {"Conv2D": _conv_macs, "DepthwiseConv2dNative": _conv_macs,
            "MatMul": _matmul_macs, "BatchMatMul": _matmul_macs,
            "BatchMatMulV2": _matmul_macs, "BatchMatMulV3": _matmul_macs,
            "Einsum": _einsum_op_macs}


def _is_resize(op: tf.Operation) -> bool:
  """Whether ``op`` is one of ``ops.resize``'s interpolation matmuls."""
  return any(part == resize.RESIZE_SCOPE or part.startswith(resize.RESIZE_SCOPE + "_")
             for part in op.name.split("/")[:-1])


def _op_macs(op: tf.Operation) -> Optional[int]:
  """Multiply-adds of one graph op (0 for a ``NO_MAC_OPS`` type); None when the
  op cannot be counted (an unknown type, or a counted type without static shapes)."""
  if op.type in NO_MAC_OPS or _is_resize(op):
    return 0
  counter = _COUNTED.get(op.type)
  if counter is None:
    return None
  try:
    return counter(op)
  except (TypeError, ValueError):
    return None  # Unknown dims: not countable statically.


@dataclasses.dataclass(frozen=True)
class MacReport:
  """Multiply-adds of a forward pass, with what could not be counted.

  Attributes:
    macs: multiply-adds per image of the ops that were counted.
    uncounted: op type -> number of ops of that type the counter cannot count
      (their multiply-adds are missing from ``macs``); empty when ``macs`` is
      complete.
  """
  macs: int
  uncounted: Dict[str, int]

  def uncounted_text(self) -> str:
    """``"none"`` or ``"TypeA x2, TypeB x1"`` (sorted by type)."""
    if not self.uncounted:
      return "none"
    return ", ".join(f"{t} x{n}" for t, n in sorted(self.uncounted.items()))


class UncountedOpsError(ValueError):
  """Raised by :func:`count_macs` when some ops of the model cannot be counted."""


def mac_report(model: keras.Model, input_size: Tuple[int, int],
               batch_size: int = 1) -> MacReport:
  """Multiply-adds of one inference forward pass at ``input_size``, per image.

  Counts convolutions, matrix products and einsums (where the papers' M-Adds come
  from); the ``NO_MAC_OPS`` types (element-wise ops, data movement, ...) count 0,
  as the papers leave them out. Every other op is listed in ``uncounted``.

  Args:
    model: called as ``model(images [batch_size, H, W, 3], training=False)``.
    input_size: (H, W).
    batch_size: the traced batch; the count is divided by it.

  Returns:
    A :class:`MacReport`.
  """
  spec = tf.TensorSpec([batch_size, input_size[0], input_size[1], 3], tf.float32)
  fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
  total, uncounted = 0, collections.Counter()
  for op in fn.graph.get_operations():
    macs = _op_macs(op)
    if macs is None:
      uncounted[op.type] += 1
    else:
      total += macs
  return MacReport(total // batch_size, dict(uncounted))


def count_macs(model: keras.Model, input_size: Tuple[int, int], batch_size: int = 1) -> int:
  """:func:`mac_report`'s ``macs``, only when every op was counted.

  Raises:
    UncountedOpsError: naming every op type that could not be counted.
  """
  report = mac_report(model, input_size, batch_size)
  if report.uncounted:
    raise UncountedOpsError(
        f"count_macs: cannot count the multiply-adds of {report.uncounted_text()} "
        "(teach training/model_summary.py to count the type, or add it to NO_MAC_OPS "
        "if it does none).")
  return report.macs
