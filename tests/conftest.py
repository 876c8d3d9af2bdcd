"""Shared test fixtures and paths."""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DIR = os.path.join(os.path.dirname(REPO_ROOT), "shared")
COCO_SAMPLE_DIR = os.path.join(SHARED_DIR, "data", "coco_panoptic_sample")


def run_main(*args, timeout=600):
  """Runs ``python main.py ARGS`` from the repository root; returns CompletedProcess."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "main.py"), *args],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


@pytest.fixture
def coco_sample_dir():
  if not os.path.isdir(COCO_SAMPLE_DIR):
    pytest.skip(f"the real COCO sample is not at {COCO_SAMPLE_DIR} "
                "(../shared is absent in this checkout)")
  return COCO_SAMPLE_DIR
