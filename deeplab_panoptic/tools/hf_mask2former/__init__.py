"""Hugging Face ``Mask2FormerForUniversalSegmentation`` weights -> our parts.

One module per part, each with ``assign(part, weights, prefix) -> names used``
(``weights``: the state dict's arrays, read with safetensors' numpy API; the
names keep their prefix); ``python -m deeplab_panoptic.tools.import_hf_mask2former``
composes them:

| module | part | prefix |
|---|---|---|
| ``encoders`` | ``SwinEncoder`` / ``TorchvisionResNetEncoder`` | ``model.pixel_level_module.encoder.`` |
| ``pixel_decoder`` | ``DeformableEncoder`` | ``model.pixel_level_module.decoder.`` |
| ``transformer_decoder`` | ``Mask2FormerDecoder`` | ``model.transformer_module.``, ``class_predictor.`` |
"""
