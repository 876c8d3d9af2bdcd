"""What ``--strategy=mirrored`` runs on, and the line that says so.

``main.py --strategy=mirrored`` binds ``build_strategy.distribution_strategy``
(``main.flag_bindings``); every run prints ``strategies.describe``. One fresh
process (the CPU split must come before TensorFlow initialises its devices):
the CPU split into 2 logical devices gives 2 mirrored replicas; ``mirrored``
without the split and without ``--num_gpus`` on this GPU-less machine is one
replica on the CPU, and the line says ``CPU:0``.
"""

import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {repo!r})
    import gin
    from deeplab_panoptic import main as main_lib
    from deeplab_panoptic.training import strategies
    main_lib.FLAGS(["main.py", "--strategy=mirrored"])
    gin.parse_config(main_lib.flag_bindings() + ["build_strategy.num_cpu_devices = 2"])
    split = strategies.build_strategy()
    print("SPLIT", strategies.describe(split), strategies.is_chief(split))
    gin.clear_config()
    gin.parse_config(main_lib.flag_bindings())
    print("PLAIN", strategies.describe(strategies.build_strategy()))
""")


def test_mirrored_on_two_logical_cpus_and_without_gpus():
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env.pop("TF_CONFIG", None)
  proc = subprocess.run([sys.executable, "-c", _SCRIPT.format(repo=REPO_ROOT)],
                        cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = dict(l.split(" ", 1) for l in proc.stdout.splitlines() if l[:5] in ("SPLIT", "PLAIN"))
  assert lines["SPLIT"] == ("strategy | MirroredStrategy | 2 replica(s) in sync | "
                            "this worker: CPU:0, CPU:1 True")
  assert lines["PLAIN"] == "strategy | MirroredStrategy | 1 replica(s) in sync | this worker: CPU:0"
