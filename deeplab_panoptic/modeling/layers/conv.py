"""Convolution / dense building blocks with batch norm and activation."""

from typing import Optional

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.modeling.layers.drop_path import DropPath


@gin.configurable(allowlist=["gelu_approximate"])
def get_activation(name: Optional[str], gelu_approximate: bool = True):
  """Returns a callable activation; ``None`` or "none" is the identity.

  ``gelu_approximate`` (gin): "gelu" is the tanh approximation, much faster on CPU
  and equal within 1e-3; False gives the exact erf form, as deeplab2 (needed for
  output parity with imported deeplab2 checkpoints).
  """
  if name is None or name == "none":
    return tf.identity
  if name == "gelu":
    return lambda x: tf.nn.gelu(x, approximate=gelu_approximate)
  return keras.activations.get(name)


@gin.configurable(allowlist=["momentum", "epsilon", "synchronized"])
def batch_norm(gamma_zero: bool = False, gamma_init: Optional[float] = None,
               name: Optional[str] = None, axis: int = -1,
               momentum: float = 0.99, epsilon: float = 1e-3,
               synchronized: bool = False) -> keras.layers.Layer:
  """Batch norm; ``gamma_zero`` starts a residual branch as the identity.

  ``momentum`` (Keras convention, deeplab2: 0.99) and ``epsilon`` come from gin;
  short CPU runs use a lower momentum so the moving statistics used at inference
  keep up with the fast-changing early weights. ``synchronized`` (gin) computes
  the batch statistics over the global batch of all replicas (an all-reduce per
  layer), as the papers' recipes do with 1-8 images per TPU core; it changes
  nothing with one replica.
  """
  if gamma_zero:
    init = "zeros"
  elif gamma_init is not None:
    init = keras.initializers.Constant(gamma_init)
  else:
    init = "ones"
  return keras.layers.BatchNormalization(
      axis=axis, momentum=momentum, epsilon=epsilon, gamma_initializer=init, name=name,
      synchronized=synchronized)


class ConvBN(keras.layers.Layer):
  """Conv2D (or depthwise-separable conv) -> BN -> activation.

  Input ``[batch, height, width, in_channels]``; output
  ``[batch, height / strides, width / strides, filters]``.
  """

  def __init__(self, filters: int, kernel_size: int = 1, strides: int = 1,
               activation: Optional[str] = None, use_bn: bool = True,
               bn_gamma_zero: bool = False, separable: bool = False,
               use_bias: Optional[bool] = None, dilation_rate: int = 1, **kwargs):
    super().__init__(**kwargs)
    self._act = get_activation(activation)
    use_bias = (not use_bn) if use_bias is None else use_bias
    self._depthwise = None
    if separable:
      # Depthwise conv + BN + act, then the pointwise conv below (as deeplab2).
      self._depthwise = keras.layers.DepthwiseConv2D(
          kernel_size, strides=strides, padding="same", use_bias=False, name="depthwise")
      self._depthwise_bn = batch_norm(name="depthwise_bn")
      kernel_size, strides = 1, 1
    self._conv = keras.layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=use_bias,
        dilation_rate=dilation_rate, kernel_initializer="he_normal", name="conv")
    self._bn = batch_norm(gamma_zero=bn_gamma_zero, name="bn") if use_bn else None

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    if self._depthwise is not None:
      x = self._act(self._depthwise_bn(self._depthwise(x), training=training))
    x = self._conv(x)
    if self._bn is not None:
      x = self._bn(x, training=training)
    return self._act(x)


@gin.configurable(allowlist=["activated_shortcut"])
class BottleneckBlock(keras.layers.Layer):
  """Residual bottleneck block: 1x1 -> 3x3 -> 1x1 (x expansion), no final activation.

  As in deeplab2, the block activates its (non-activated) input on entry, its last
  BN starts at gamma 0 and its output is not activated. ``activated_shortcut``:
  the projection shortcut (or identity) takes the activated input, as deeplab2's
  blocks (needed for parity with its checkpoints); False takes the raw input.
  ``dilation_rate``: atrous rate of the 3x3 conv.

  Input ``[batch, height, width, channels]``; output ``[batch, height, width,
  filters * expansion]``.
  """

  def __init__(self, filters: int, expansion: int = 4, activation: str = "gelu",
               drop_path_rate: float = 0.0, activated_shortcut: bool = True,
               dilation_rate: int = 1, **kwargs):
    super().__init__(**kwargs)
    self._act = get_activation(activation)
    self._activated_shortcut = activated_shortcut
    self._out_channels = filters * expansion
    self._conv1 = ConvBN(filters, 1, activation=activation, name="conv1")
    self._conv2 = ConvBN(filters, 3, activation=activation, dilation_rate=dilation_rate,
                         name="conv2")
    self._conv3 = ConvBN(self._out_channels, 1, bn_gamma_zero=True, name="conv3")
    self._shortcut = None
    self._drop_path = DropPath(drop_path_rate)

  def build(self, input_shape):
    if input_shape[-1] != self._out_channels:
      self._shortcut = ConvBN(self._out_channels, 1, name="shortcut")
    super().build(input_shape)

  def call(self, x: tf.Tensor, training=None) -> tf.Tensor:
    y = self._act(x)
    if self._activated_shortcut:
      x = y
    shortcut = x if self._shortcut is None else self._shortcut(x, training=training)
    y = self._conv1(y, training=training)
    y = self._conv2(y, training=training)
    y = self._conv3(y, training=training)
    return shortcut + self._drop_path(y, training=training)
