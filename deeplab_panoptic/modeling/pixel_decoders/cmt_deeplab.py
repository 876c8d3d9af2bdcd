"""CMT-DeepLab pixel decoder, Recursive Feature Network (RFN) and pass-through decoder.

``CMTPixelDecoder`` is MaX-DeepLab's decoder (``max_deeplab.py``) where a stage
may take only the running feature (``fuse_skips`` False): CMT appends its six
dual-path axial-transformer blocks as two consecutive stride-16 stages (stage-5
width, then stage-4 width), and the second one continues from the first alone;
fusing the encoder's stage-5 output there as well would add a second 2048 ->
1024 projection (2.1M) that the paper's +29.1M "stronger decoder" leaves no room
for.

RFN stacks the whole model (backbone and transformer layers) ``num_networks``
times. The paper connects the copies at stride 4, with no FPN, and averages their
stride-4 features, which it found ~0.2 PQ better than DetectoRS' fusion module.
Choices where the paper is silent (docs/models/cmt_deeplab.md):

  * connection: the previous network's stride-4 output goes through a 1x1
    conv + BN (``connection_filters`` wide, the backbone's stride-4 width) and is
    added to the next backbone's last stride-4 feature (AxialResNet ``feedback``);
  * the cluster centres continue: the next network starts from the previous
    network's final CMT state (memory, clustering logits S, reference embedding
    e and the list of supervised layers), so every layer of both copies is
    supervised and the residual paths of eq. 6 and eq. 9 run through both;
  * the output is the last network's features, its ``"stride<s>"`` feature at
    the connection stride replaced by the mean of all networks' ones.

Because the second backbone needs the image, RFN is the pixel *encoder* of the
``MaskTransformer`` (each copy being an encoder + decoder pair) and
``PassThroughPixelDecoder`` is its pixel decoder.
"""

from typing import Callable, Dict

import gin
import tensorflow as tf
import tf_keras as keras

from deeplab_panoptic.common import MEMORY
from deeplab_panoptic.modeling import base
from deeplab_panoptic.modeling.layers import conv
from deeplab_panoptic.modeling.pixel_decoders.max_deeplab import MaXPixelDecoder


@gin.configurable
class CMTPixelDecoder(MaXPixelDecoder):
  """``MaXPixelDecoder`` under CMT-DeepLab's gin name.

  Input / output and arguments as ``MaXPixelDecoder`` (the memory entry may be a
  CMT state dict, ``layers/cmt_layer.py``); the CMT recipes set
  ``fuse_skips = (True, False, True, True)`` so the second stride-16 stage takes
  the running feature alone (see the module docstring).
  """


@gin.configurable
class RecursiveFeatureNetwork(base.PixelEncoder):
  """``num_networks`` stacked (encoder, decoder) pairs connected at one stride.

  Input: images ``[B, H, W, 3]``. Output: the last decoder's features
  ``{"stride<s>": [B, H/s, W/s, c_s], MEMORY: state}`` with the connection
  stride's feature averaged over the networks.

  Args:
    pixel_encoder_factory: builds one backbone (``@AxialResNet``); copies after
      the first are built with ``learn_memory=False``.
    pixel_decoder_factory: builds one decoder (``@MaXPixelDecoder``).
    num_networks: copies (CMT: 2).
    connection_stride: stride of the connection and the averaged feature (4).
    connection_filters: width of the backbone's feature at that stride.
  """

  def __init__(self, pixel_encoder_factory: Callable[..., keras.layers.Layer] = gin.REQUIRED,
               pixel_decoder_factory: Callable[..., keras.layers.Layer] = gin.REQUIRED,
               num_networks: int = 2, connection_stride: int = 4,
               connection_filters: int = 256, **kwargs):
    super().__init__(**kwargs)
    if num_networks < 1:
      raise ValueError(f"RecursiveFeatureNetwork.num_networks must be >= 1, got "
                       f"{num_networks}.")
    self._key = f"stride{connection_stride}"
    self.encoders = [pixel_encoder_factory(name="network1_encoder")]
    self.encoders += [pixel_encoder_factory(learn_memory=False, name=f"network{i + 1}_encoder")
                      for i in range(1, num_networks)]
    self.decoders = [pixel_decoder_factory(name=f"network{i + 1}_decoder")
                     for i in range(num_networks)]
    self._connections = [conv.ConvBN(connection_filters, 1, name=f"connection{i + 1}")
                         for i in range(1, num_networks)]
    for slot, parts, contract in (("pixel_encoder_factory", self.encoders, base.PixelEncoder),
                                  ("pixel_decoder_factory", self.decoders, base.PixelDecoder)):
      base.check_part("RecursiveFeatureNetwork", slot, parts[0], contract)
    # The last network's features (the connection stride's averaged keeps its width).
    self.output_channels = self.decoders[-1].output_channels

  def call(self, images: tf.Tensor, training=None) -> Dict[str, tf.Tensor]:
    features = None
    connected = []
    for i, (encoder, decoder) in enumerate(zip(self.encoders, self.decoders)):
      if features is None:
        endpoints = encoder(images, training=training)
      else:
        if self._key not in features or MEMORY not in features:
          raise ValueError(f"RecursiveFeatureNetwork needs {self._key!r} and {MEMORY!r} "
                           f"from each decoder; it gives {sorted(features)}.")
        feedback = {self._key: self._connections[i - 1](features[self._key],
                                                         training=training)}
        endpoints = encoder(images, training=training, feedback=feedback,
                            initial_memory=features[MEMORY])
      features = dict(decoder(endpoints, training=training))
      if self._key not in features:
        raise ValueError(f"RecursiveFeatureNetwork: decoder {i + 1} gives no "
                         f"{self._key!r} ({sorted(features)}).")
      connected.append(features[self._key])
    features[self._key] = tf.add_n(connected) / float(len(connected))
    return features


@gin.configurable
class PassThroughPixelDecoder(base.PixelDecoder):
  """Identity pixel decoder, for pixel encoders that already decode (RFN).

  Returns its input's features (``output_channels`` None: the encoder's).
  """

  def call(self, endpoints: Dict[str, tf.Tensor], training=None) -> Dict[str, tf.Tensor]:
    del training
    return dict(endpoints)
