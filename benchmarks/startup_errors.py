"""Wall time of each start-up error of ``main.py``: how fast a user mistake fails.

Usage:
  python benchmarks/startup_errors.py [--repeats 5]

Runs each bad command line of ``tests/test_main_errors.py`` (``--help`` too) from
an empty temporary folder, ``--repeats`` times, and prints per case the median
and the slowest wall time, the exit status and the one line printed. Every check
runs before TensorFlow is imported, so each should take well under the 3 s
budget (about half a second on a 2-core VM, most of it Python start-up, absl and
reading the package's source for the configurable index).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAIN = os.path.join(REPO_ROOT, "main.py")
QUICKSTART = "quickstart/kmax_deeplab_shapes"


def cases(folder: str):
  """(name, argv) of each case; ``folder`` is an empty working directory."""
  blocker = os.path.join(folder, "a_file")
  with open(blocker, "w", encoding="utf-8") as f:
    f.write("not a directory")
  run = os.path.join(folder, "run")
  return [
      ("--help", ["--help"]),
      ("train_steps='ten'", [f"--gin_file={QUICKSTART}", "--mode=train", f"--model_dir={run}",
                             "--gin_param=ExperimentConfig.train_steps='ten'"]),
      ("((", [f"--gin_file={QUICKSTART}", "--mode=train", f"--model_dir={run}",
              "--gin_param=(("]),
      ("eval_input_size=128", [f"--gin_file={QUICKSTART}", "--mode=train", f"--model_dir={run}",
                               "--gin_param=ExperimentConfig.eval_input_size=128"]),
      ("unknown recipe name", ["--gin_file=coco/kmax_r50_1281_15k", "--mode=train",
                               f"--model_dir={run}"]),
      ("unwritable model_dir", [f"--gin_file={QUICKSTART}", "--mode=train",
                                f"--model_dir={os.path.join(blocker, 'run')}"]),
      ("dataset missing", ["--gin_file=coco/kmax_r50_1281_150k", "--mode=train_and_eval",
                           f"--model_dir={run}"]),
  ]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  with tempfile.TemporaryDirectory() as folder:
    for name, argv in cases(folder):
      times = []
      for _ in range(args.repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, MAIN, *argv], cwd=folder, env=env,
                              capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
      output = proc.stderr if proc.returncode else proc.stdout
      line = (output.strip().splitlines() or [""])[-1 if proc.returncode else 0]
      print(f"{name:22s} median {statistics.median(times):.2f} s  max {max(times):.2f} s  "
            f"exit {proc.returncode}  {line[:110]}")


if __name__ == "__main__":
  main()
