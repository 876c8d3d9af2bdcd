"""Imports every gin-configurable module so gin files can name them."""

# pylint: disable=unused-import
from deeplab_panoptic.data import dataset_info
from deeplab_panoptic.modeling import heads
from deeplab_panoptic.modeling import meta_arch
from deeplab_panoptic.modeling.pixel_decoders import kmax as kmax_pixel_decoder
from deeplab_panoptic.modeling.pixel_encoders import resnet
from deeplab_panoptic.modeling.transformer_decoders import kmax as kmax_transformer_decoder
from deeplab_panoptic.training import experiment
from deeplab_panoptic.training import optimizers
from deeplab_panoptic.training import strategies
from deeplab_panoptic.data import convert
from deeplab_panoptic.data import reader
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.losses import mask_losses
from deeplab_panoptic.postprocess import panoptic
from deeplab_panoptic.losses import panoptic_segformer
