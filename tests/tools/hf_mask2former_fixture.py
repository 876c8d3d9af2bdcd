"""The Hugging Face Mask2Former golden fixtures (tools/golden/hf_mask2former_golden.py).

tests/fixtures/hf_mask2former/{swin,resnet}/: ``config.json`` + ``model.safetensors``
(``save_pretrained``), ``golden.npz`` (inputs and reference outputs; see the
generator's docstring) and ``metadata.json`` (the versions, the mean / std).
"""

import json
import os
from typing import Dict

import numpy as np

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf_mask2former")
PREFIX_ENCODER = "model.pixel_level_module.encoder."


def fixture_file(name: str, filename: str) -> str:
  return os.path.join(FIXTURES, name, filename)


def fixture_config(name: str) -> dict:
  with open(fixture_file(name, "config.json")) as f:
    return json.load(f)


def metadata(name: str) -> dict:
  with open(fixture_file(name, "metadata.json")) as f:
    return json.load(f)


def golden(name: str) -> Dict[str, np.ndarray]:
  with np.load(fixture_file(name, "golden.npz")) as data:
    return {k: data[k] for k in data.files}


IMAGENET = {"mean": tuple(metadata("resnet")["image_mean"]),
            "std": tuple(metadata("resnet")["image_std"])}
