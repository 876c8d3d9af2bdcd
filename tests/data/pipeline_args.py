"""Test helper: ``reader.build_dataset`` from flat keyword settings.

The tests name each setting directly (``crop_size=..., min_scale=...``); this
sorts them into the three records by their field names.
"""

import dataclasses

from deeplab_panoptic.data import input_config
from deeplab_panoptic.data import reader

_RECORDS = {
    "config": input_config.InputConfig,
    "augmentation": input_config.AugmentationConfig,
    "pipeline": input_config.PipelineConfig,
}


def split_settings(**settings):
  """{record argument name: record} for the given settings (unknown ones raise)."""
  out = {}
  for argument, cls in _RECORDS.items():
    names = {f.name for f in dataclasses.fields(cls)}
    mine = {k: settings.pop(k) for k in list(settings) if k in names}
    if mine or argument != "config":
      out[argument] = cls(**mine)
  if settings:
    raise TypeError(f"unknown settings {sorted(settings)}")
  return out


def build_dataset_from_flat(file_pattern, dataset_info, is_training, batch_size,
                            input_context=None, **settings):
  return reader.build_dataset(file_pattern, dataset_info, is_training, batch_size,
                              input_context=input_context, **split_settings(**settings))
