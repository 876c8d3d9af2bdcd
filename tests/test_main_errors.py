"""Bad command lines end with one clear line and a non-zero exit status, before
TensorFlow is imported; ``--help`` lists every flag and exits 0.

Each command runs ``main.py`` in a child process through a small probe that
reports, as the process exits, whether ``tensorflow`` was ever imported: every
start-up check must fail before it is. (Wall times are measured by
``benchmarks/startup_errors.py``, not asserted here.)
"""

import dataclasses
import inspect
import os
import subprocess
import sys

import pytest

from deeplab_panoptic.cli import errors
from deeplab_panoptic.cli import preflight
from deeplab_panoptic.cli import recipes
from deeplab_panoptic.cli import source_index
from deeplab_panoptic.cli import value_types
from deeplab_panoptic.cli.gin_statements import Reference
from tests.conftest import REPO_ROOT

QUICKSTART = "experiments/quickstart/kmax_deeplab_shapes.gin"
MAIN = os.path.join(REPO_ROOT, "main.py")
_MARK = "TENSORFLOW_IMPORTED="
# Runs main.py as __main__ and, at exit (after sys.exit), says whether TF was imported.
_PROBE = ("import atexit, runpy, sys\n"
          "atexit.register(lambda: sys.stderr.write('\\n%s%s\\n' % "
          f"({_MARK!r}, 'tensorflow' in sys.modules)))\n"
          "sys.argv = sys.argv[1:]\n"
          "runpy.run_path(sys.argv[0], run_name='__main__')\n")


class Result:
  """A finished command: exit status, stdout, stderr (probe line removed)."""

  def __init__(self, proc):
    self.returncode = proc.returncode
    self.stdout = proc.stdout
    lines = proc.stderr.splitlines()
    marks = [l for l in lines if l.startswith(_MARK)]
    assert marks, proc.stderr[-2000:]
    self.tensorflow_imported = marks[-1] == _MARK + "True"
    self.stderr = "\n".join(l for l in lines if not l.startswith(_MARK))

  @property
  def lines(self):
    return [l for l in self.stderr.strip().splitlines() if l.strip()]


def run_cli(*args, cwd=REPO_ROOT):
  """``python main.py ARGS`` from ``cwd``; TF's own log level is left unset."""
  env = dict(os.environ)
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  proc = subprocess.run([sys.executable, "-c", _PROBE, MAIN, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  return Result(proc)


def assert_one_line_error(result, starts_with):
  """Non-zero exit, exactly one stderr line starting with ``starts_with``, no
  traceback, and TensorFlow never imported (so no TF log line either)."""
  assert result.returncode == 2, result.stderr[-2000:]
  assert len(result.lines) == 1, result.stderr[-2000:]
  assert result.lines[0].startswith(starts_with), result.lines[0]
  assert "Traceback" not in result.stderr
  assert not result.tensorflow_imported
  return result.lines[0]


def test_help_lists_every_flag_and_exits_0():
  result = run_cli("--help")
  assert result.returncode == 0, result.stderr[-2000:]
  for flag in ("--gin_file", "--gin_param", "--mode", "--model_dir", "--strategy",
               "--num_gpus", "--tpu", "--profile_steps", "--[no]list_recipes"):
    assert f"  {flag}: " in result.stdout, flag
  assert "<train|eval|train_and_eval|continuous_eval|export|summary>" in result.stdout
  assert "quickstart/kmax_deeplab_shapes" in result.stdout  # the help text itself
  assert not result.tensorflow_imported


@pytest.mark.parametrize("args, expected", [
    (("--profile_steps=3",),
     "error: --profile_steps='3': expected two training steps 'a,b' with 1 <= a <= b, "
     "e.g. --profile_steps=100,110"),
    (("--profile_steps=1,2", "--mode=eval"),
     "error: --profile_steps profiles training steps; --mode=eval does not train "
     "(use train or train_and_eval)."),
])
def test_a_bad_profile_steps_is_one_line(tmp_path, args, expected):
  line = assert_one_line_error(
      run_cli(f"--gin_file={QUICKSTART}", f"--model_dir={tmp_path}", *args), "error:")
  assert line == expected


def test_a_wrong_value_type_is_caught():
  line = assert_one_line_error(
      run_cli(f"--gin_file={QUICKSTART}", "--gin_param=ExperimentConfig.train_steps='ten'",
              "--mode=summary"), "error: bad gin configuration:")
  assert line == ("error: bad gin configuration: "
                  "--gin_param=\"ExperimentConfig.train_steps='ten'\": "
                  "ExperimentConfig.train_steps takes int, got 'ten' (a str)")


def test_a_binding_that_does_not_parse():
  assert_one_line_error(run_cli(f"--gin_file={QUICKSTART}", "--gin_param=((",
                                "--mode=summary"),
                        "error: bad gin configuration: --gin_param='((': cannot parse:")


def test_an_int_for_a_size_pair():
  line = assert_one_line_error(
      run_cli(f"--gin_file={QUICKSTART}", "--gin_param=ExperimentConfig.eval_input_size=128",
              "--mode=summary"), "error: bad gin configuration:")
  assert line.endswith("ExperimentConfig.eval_input_size takes Optional[Sequence[int]], "
                       "got 128 (an int)")


def test_an_unknown_recipe_name_suggests_the_closest(tmp_path):
  line = assert_one_line_error(
      run_cli("--gin_file=coco/kmax_r50_1281_15k", "--mode=train",
              f"--model_dir={tmp_path}"), "error: gin file not found: coco/kmax_r50_1281_15k")
  assert "did you mean coco/kmax_r50_1281_150k?" in line


def test_missing_gin_file(tmp_path):
  assert_one_line_error(run_cli("--gin_file=experiments/nope.gin", "--mode=train",
                                f"--model_dir={tmp_path}"),
                        "error: gin file not found: experiments/nope.gin")


def test_unwritable_model_dir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  model_dir = os.path.join(str(blocker), "run")
  assert_one_line_error(run_cli(f"--gin_file={QUICKSTART}", "--mode=train",
                                f"--model_dir={model_dir}"),
                        f"error: model_dir {model_dir!r} is not writable")


def test_a_recipe_whose_dataset_is_missing(tmp_path):
  """From an empty folder, by recipe name: the COCO TFRecords are not there."""
  line = assert_one_line_error(
      run_cli("--gin_file=coco/kmax_r50_1281_150k", "--mode=train_and_eval",
              f"--model_dir={tmp_path / 'run'}", cwd=str(tmp_path)),
      "error: no dataset files match "
      "ExperimentConfig.train_file_pattern='data/coco/train-*.tfrecord' "
      "(configs/datasets/coco.gin:")
  assert "--mode=train_and_eval" in line and str(tmp_path) in line


def test_unknown_gin_binding():
  line = assert_one_line_error(
      run_cli(f"--gin_file={QUICKSTART}", "--gin_param=MaskTransformerr.output_stride=4",
              "--mode=summary"), "error: bad gin configuration:")
  assert "unknown configurable MaskTransformerr (did you mean MaskTransformer?)" in line


def test_unknown_parameter_and_where_in_a_file(tmp_path):
  bad = tmp_path / "typo.gin"
  bad.write_text(f"include '{QUICKSTART}'\n\nExperimentConfig.train_stepz = 10\n")
  line = assert_one_line_error(run_cli(f"--gin_file={bad}", "--mode=summary"),
                               f"error: bad gin configuration: {bad}:3: ")
  assert line.endswith("ExperimentConfig has no parameter train_stepz "
                       "(did you mean train_steps?)")


def test_undefined_macro():
  assert_one_line_error(
      run_cli(f"--gin_file={QUICKSTART}", "--gin_param=InputConfig.crop_size=%CROP",
              "--mode=summary"),
      "error: bad gin configuration: --gin_param='InputConfig.crop_size=%CROP': "
      "macro %CROP is used but never defined")


def test_typo_in_mode(tmp_path):
  line = assert_one_line_error(run_cli(f"--gin_file={QUICKSTART}", "--mode=trian",
                                       f"--model_dir={tmp_path}"), "error: flag --mode=trian")
  assert "train_and_eval" in line


def test_list_recipes():
  result = run_cli("--list_recipes")
  assert result.returncode == 0
  names = result.stdout.split()
  assert "quickstart/kmax_deeplab_shapes" in names and "coco/kmax_r50_1281_150k" in names
  assert not result.tensorflow_imported


# ------------------------------------------------------------ in-process checks


def test_every_recipe_passes_the_start_up_checks():
  """No false alarm: every shipped recipe (and the TPU overrides) passes."""
  names = recipes.recipe_names()
  assert len(names) >= 40
  for name in names:
    preflight.check_gin([name], [])
  preflight.check_gin([QUICKSTART, os.path.join(REPO_ROOT, "tpu", "overrides.gin")], [])


def test_the_data_check_follows_the_mode(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = preflight.check_gin(["coco/kmax_r50_1281_150k"], [])
  for mode in ("export", "summary"):
    preflight.check_data(config, mode)  # read no data
  os.makedirs("data/coco")
  open("data/coco/train-00000-of-00001.tfrecord", "wb").close()
  preflight.check_data(config, "train")
  with pytest.raises(errors.UsageError, match="eval_file_pattern='data/coco/val-"):
    preflight.check_data(config, "eval")
  # A later binding wins, as in gin.
  moved = preflight.check_gin(["coco/kmax_r50_1281_150k"],
                              ["ExperimentConfig.train_file_pattern='elsewhere/*'"])
  with pytest.raises(errors.UsageError, match="--gin_param="):
    preflight.check_data(moved, "train")
  # The shapes quickstart makes its own data.
  preflight.check_data(preflight.check_gin(["quickstart/kmax_deeplab_shapes"], []), "train")


def test_a_macro_is_resolved_before_the_type_check():
  preflight.check_gin([QUICKSTART], ["STEPS = 5", "ExperimentConfig.train_steps = %STEPS"])
  with pytest.raises(errors.UsageError, match=r"train_steps takes int, got 5\.0"):
    preflight.check_gin([QUICKSTART], ["STEPS = 5.0", "ExperimentConfig.train_steps = %STEPS"])


@pytest.mark.parametrize("annotation,value,fits", [
    ("int", 3, True), ("int", True, False), ("int", 3.0, False), ("float", 3, True),
    ("bool", 1, False), ("str", "a", True), ("Optional[int]", None, True),
    ("int", None, False), ("Tuple[int, int]", (1, 2), True),
    ("Tuple[int, int]", [1, 2], True), ("Tuple[int, int]", (1, 2, 3), False),
    ("Tuple[int, ...]", (1, 2, 3), True), ("Sequence[int]", (1, "a"), False),
    ("Sequence[str]", ("all",), True), ("Optional[Sequence[int]]", 128, False),
    ("Callable[[], None]", Reference("f", False), True),
    ("Callable[[], None]", "f", False), ("int", Reference("f", True), True),
    ("int", Reference("f", False), False), ("keras.Model", 7, True),
    ("Literal['a', 'b']", "b", True), ("Literal['a', 'b']", "c", False),
    ("int | None", None, True), ("Dict[str, int]", {"a": 1}, True),
])
def test_value_types(annotation, value, fits):
  import ast  # pylint: disable=g-import-not-at-top
  assert value_types.fits(ast.parse(annotation, mode="eval").body, value) is fits


def _gin_params(entry):
  """The parameters gin accepts for a registered configurable (None: any)."""
  import gin  # pylint: disable=g-import-not-at-top
  target = entry.wrapped
  if inspect.isclass(target):
    target = gin.config._find_class_construction_fn(target)  # pylint: disable=protected-access
  target = inspect.unwrap(target)
  spec = inspect.getfullargspec(target)
  if spec.varkw:
    params = None
  else:
    params = frozenset(spec.args + spec.kwonlyargs) - {"self", "cls"}
  if entry.allowlist:
    return frozenset(entry.allowlist)
  if entry.denylist and params is not None:
    return params - frozenset(entry.denylist)
  return params


def test_the_source_index_agrees_with_gin():
  """The index read from the source names the configurables gin registers when the
  package is imported, with the same parameters wherever the index lists them."""
  import gin  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import registry  # pylint: disable=g-import-not-at-top,unused-import
  registered = {entry.selector: entry
                for _, entry in gin.config._REGISTRY.items()  # pylint: disable=protected-access
                if entry.module.startswith("deeplab_panoptic")}
  indexed = {c.selector: c for c in source_index.configurables()
             if not c.selector.startswith(tuple(s + "." for s in registry.SKIPPED))}
  assert set(indexed) == set(registered)
  for selector, configurable in indexed.items():
    if configurable.params is not None:
      assert configurable.params == _gin_params(registered[selector]), selector


def test_typed_fields_are_the_dataclass_fields():
  from deeplab_panoptic.training.experiment import ExperimentConfig  # pylint: disable=g-import-not-at-top
  (indexed,) = source_index.matching("ExperimentConfig")
  assert list(indexed.fields) == [f.name for f in dataclasses.fields(ExperimentConfig)]


def test_a_file_that_does_not_parse_names_its_line(tmp_path):
  bad = tmp_path / "bad.gin"
  bad.write_text(f"include '{QUICKSTART}'\n\nExperimentConfig.train_steps = 10 10\n")
  with pytest.raises(errors.UsageError, match=f"^bad gin configuration: {bad}:3: cannot parse"):
    preflight.check_gin([str(bad)], [])
  missing = tmp_path / "missing_include.gin"
  missing.write_text("include 'configs/nope.gin'\n")
  with pytest.raises(errors.UsageError, match=f"{missing}:1: included file not found: "
                     "configs/nope.gin"):
    preflight.check_gin([str(missing)], [])
