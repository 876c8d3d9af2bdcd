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
from deeplab_panoptic.modeling.pixel_encoders import axial_resnet
from deeplab_panoptic.modeling.pixel_decoders import max_deeplab as max_pixel_decoder
from deeplab_panoptic.modeling.transformer_decoders import max_deeplab as max_transformer_decoder
from deeplab_panoptic.modeling.pixel_encoders import pvtv2
from deeplab_panoptic.modeling.pixel_decoders import deformable as deformable_pixel_decoder
from deeplab_panoptic.modeling.transformer_decoders import panoptic_segformer as panoptic_segformer_decoder
from deeplab_panoptic.postprocess import mask_merging
from deeplab_panoptic.postprocess import maskformer_merging
from deeplab_panoptic.modeling.layers import cmt_layer
from deeplab_panoptic.modeling.pixel_decoders import cmt_deeplab as cmt_pixel_decoder
from deeplab_panoptic.modeling.transformer_decoders import cmt_deeplab as cmt_transformer_decoder
from deeplab_panoptic.modeling.pixel_encoders import convnext
from deeplab_panoptic.modeling.pixel_encoders import mobilenet
