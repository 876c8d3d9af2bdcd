"""Packaging: every import is declared, Cityscapes is an extra, and a built package
carries the recipes and resolves them by name from any folder.

The wheel layout is made by the same build step as ``pip install .``
(``setup.py``'s build_py, run here in-process into a temporary folder), and the
installed package is then imported from there by a child process started in an
empty folder, with the checkout nowhere on its path. The real ``pip install .``
into a fresh virtualenv needs the network and minutes; its command is in
README.md.
"""

import ast
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import textwrap

import pytest

from deeplab_panoptic.cli import recipes
from tests.conftest import REPO_ROOT

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PACKAGE_DIR = os.path.join(REPO_ROOT, "deeplab_panoptic")
EXTRA_HINT = "pip install 'deeplab_panoptic[cityscapes]'"


def _pyproject():
  with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
    return tomllib.load(f)["project"]


def _name(requirement: str) -> str:
  """The normalised distribution name of a requirement string (PEP 503)."""
  name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement).group(0)
  return re.sub(r"[-_.]+", "-", name).lower()


def _imported_top_level_modules():
  """{top-level module: first file that imports it} for the package and main.py."""
  found = {}
  paths = [os.path.join(REPO_ROOT, "main.py")]
  for directory, dirs, files in os.walk(PACKAGE_DIR):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    paths += [os.path.join(directory, f) for f in files if f.endswith(".py")]
  for path in sorted(paths):
    with open(path, encoding="utf-8") as f:
      tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        names = [node.module]
      else:
        continue
      for name in names:
        found.setdefault(name.split(".")[0], os.path.relpath(path, REPO_ROOT))
  return found


def test_every_import_is_declared():
  project = _pyproject()
  declared = {_name(r) for r in project["dependencies"]}
  extras = {_name(r) for rs in project["optional-dependencies"].values() for r in rs}
  distributions = importlib.metadata.packages_distributions()
  undeclared = []
  for module, where in sorted(_imported_top_level_modules().items()):
    if module in sys.stdlib_module_names or module == "deeplab_panoptic":
      continue
    names = {_name(d) for d in distributions.get(module, [])}
    assert names, f"{where}: imports {module}, which no installed distribution provides"
    if not names & (declared | extras):
      undeclared.append(f"{module} ({where}; from {sorted(names)})")
  assert not undeclared, "imported but not declared in pyproject.toml: " + ", ".join(undeclared)


def test_cityscapes_is_an_extra_and_its_imports_name_it():
  project = _pyproject()
  assert "cityscapesscripts" not in {_name(r) for r in project["dependencies"]}
  assert "cityscapesscripts" in {_name(r) for r in project["optional-dependencies"]["cityscapes"]}
  for extra in ("test", "dev"):
    assert extra in project["optional-dependencies"]
  importers = [where for module, where in _imported_top_level_modules().items()
               if module == "cityscapesscripts"]
  for directory, _, files in os.walk(PACKAGE_DIR):
    for f in files:
      path = os.path.join(directory, f)
      if f.endswith(".py") and "cityscapesscripts" in open(path, encoding="utf-8").read():
        source = open(path, encoding="utf-8").read()
        imports = source.count("from cityscapesscripts")
        assert source.count(EXTRA_HINT) >= imports, f"{path}: an import without the hint"
  assert importers


def test_a_missing_cityscapes_package_names_the_extra(monkeypatch):
  from deeplab_panoptic.data import cityscapes  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.data import dataset_info  # pylint: disable=g-import-not-at-top
  info = dataset_info._cityscapes()  # pylint: disable=protected-access
  for name in ("cityscapesscripts", "cityscapesscripts.helpers",
               "cityscapesscripts.helpers.labels"):
    monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
  with pytest.raises(ValueError, match=re.escape(EXTRA_HINT)):
    dataset_info._cityscapes()  # pylint: disable=protected-access
  with pytest.raises(ValueError, match=re.escape(EXTRA_HINT)):
    cityscapes._label_table(info)  # pylint: disable=protected-access


def _build_package(target):
  """Runs setup.py's build_py (what ``pip install .`` runs) into ``target``."""
  spec = importlib.util.spec_from_file_location("deeplab_setup", os.path.join(REPO_ROOT,
                                                                               "setup.py"))
  setup = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(setup)  # not __main__: defines the command, builds nothing
  from setuptools.dist import Distribution  # pylint: disable=g-import-not-at-top
  cwd = os.getcwd()
  os.chdir(REPO_ROOT)  # setup.py's paths are relative to the project, as under pip
  try:
    packages = ["deeplab_panoptic"] + [
        "deeplab_panoptic." + os.path.relpath(d, PACKAGE_DIR).replace(os.sep, ".")
        for d, _, files in os.walk(PACKAGE_DIR)
        if "__init__.py" in files and d != PACKAGE_DIR]
    command = setup.BuildPyWithGinFiles(Distribution({"packages": packages,
                                                      "script_name": "setup.py"}))
    command.initialize_options()
    command.build_lib = str(target)
    command.finalize_options()
    command.run()
  finally:
    os.chdir(cwd)


def test_a_built_package_resolves_recipes_by_name_from_anywhere(tmp_path):
  site = tmp_path / "site-packages"
  stale = site / "deeplab_panoptic" / "gin_files" / "experiments" / "deleted_recipe.gin"
  stale.parent.mkdir(parents=True)
  stale.write_text("# a recipe deleted since the last build: not shipped again\n")
  _build_package(site)
  shipped = sorted(os.path.relpath(os.path.join(d, f), site / "deeplab_panoptic" / "gin_files")
                   for d, _, fs in os.walk(site / "deeplab_panoptic" / "gin_files")
                   for f in fs)
  in_checkout = sorted(os.path.relpath(os.path.join(d, f), REPO_ROOT)
                       for top in ("experiments", "configs")
                       for d, _, fs in os.walk(os.path.join(REPO_ROOT, top))
                       for f in fs if f.endswith(".gin"))
  assert shipped == in_checkout
  empty = tmp_path / "empty"
  empty.mkdir()
  script = textwrap.dedent("""
      import os, sys
      import gin
      from deeplab_panoptic.cli import preflight, recipes
      assert recipes.search_roots() == [recipes.PACKAGE_DATA_DIR], recipes.search_roots()
      assert recipes.PACKAGE_DATA_DIR.startswith(sys.argv[1])
      names = recipes.recipe_names()
      for name in names:  # every recipe, its includes through the package data
        preflight.check_gin([name], [])
      path = recipes.resolve("coco/kmax_r50_1281_150k")
      assert path == os.path.join(recipes.PACKAGE_DATA_DIR, "experiments", "coco",
                                  "kmax_r50_1281_150k.gin"), path
      assert recipes.resolve("experiments/coco/kmax_r50_1281_150k.gin") == path
      # gin's own parse finds the include lines through the search paths.
      recipes.add_search_paths()
      gin.parse_config_files_and_bindings([recipes.resolve("quickstart/kmax_deeplab_shapes")],
                                          [], skip_unknown=True)
      print(len(names), "tensorflow" in sys.modules)
  """)
  env = dict(os.environ, PYTHONPATH=str(site))
  proc = subprocess.run([sys.executable, "-c", script, str(site)], cwd=str(empty), env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  count, tensorflow_imported = proc.stdout.split()
  assert int(count) >= 40 and tensorflow_imported == "False"
  assert "ERROR" not in proc.stderr and "Path not found" not in proc.stderr, proc.stderr


def test_a_checkout_resolves_recipes_from_another_folder(tmp_path, monkeypatch):
  """The editable install (and python main.py) read the checkout's own files."""
  monkeypatch.chdir(tmp_path)
  assert REPO_ROOT in recipes.search_roots()
  assert recipes.resolve("quickstart/kmax_deeplab_shapes") == os.path.join(
      REPO_ROOT, "experiments", "quickstart", "kmax_deeplab_shapes.gin")
  assert recipes.find_include("configs/datasets/coco.gin") == os.path.join(
      REPO_ROOT, "configs", "datasets", "coco.gin")


@pytest.mark.parametrize("nodes,user_value,expected", [
    ([], None, "3"), (["/dev/nvidia0"], None, "2"), (["/dev/dxg"], None, "2"),
    (["/dev/accel0"], None, "2"), ([], "0", "0"), (["/dev/nvidia0"], "1", "1")])
def test_the_cuda_probe_line_is_hidden_only_without_a_gpu(monkeypatch, nodes, user_value,
                                                          expected):
  from deeplab_panoptic import main as main_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(main_lib.glob, "glob",
                      lambda pattern: [n for n in nodes if n[:-1] == pattern.split("[")[0]])
  monkeypatch.setattr(main_lib.os.path, "exists", lambda path: path in nodes)
  if user_value is None:
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  else:
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", user_value)
  main_lib.quiet_tensorflow_start_up()
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == expected
