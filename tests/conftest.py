"""Shared test fixtures and paths."""

import os
import subprocess
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Two real COCO images with their panoptic annotations, committed with the tests
# (tests/fixtures/coco_panoptic_sample/README.md gives their source and licences).
COCO_SAMPLE_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "coco_panoptic_sample")


def run_main(*args, timeout=600):
  """Runs ``python main.py ARGS`` from the repository root; returns CompletedProcess."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "main.py"), *args],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


@pytest.fixture
def coco_sample_dir():
  """The committed COCO panoptic sample folder (never skipped: it ships with the tests)."""
  return COCO_SAMPLE_DIR


def pytest_collection_modifyitems(items):
  """Groups the tests for pytest-xdist's ``--dist loadgroup`` (the README's command).

  Each test file runs whole on one worker, so its module-scoped fixtures are built
  once; the tests that read the session fixture ``exported_families``
  (tests/export/conftest.py: every family built and exported in one process) run
  on one worker together.
  """
  for item in items:
    group = ("exported_families" if "exported_families" in item.fixturenames
             else item.nodeid.split("::")[0])
    item.add_marker(pytest.mark.xdist_group(group))
