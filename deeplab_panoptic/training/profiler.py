"""A TensorBoard profile of chosen training steps (``--profile_steps=a,b``).

``tf.profiler.experimental`` records every op on the host and the devices from
just before step ``a`` to the end of step ``b`` (1-based global steps) and
writes ``<logdir>/plugins/profile/<run>/<host>.xplane.pb``: with ``logdir`` the
run's ``<model_dir>/train``, TensorBoard's Profile tab shows it beside the
training curves (it needs the ``tensorboard-plugin-profile`` package).

The trainer calls ``before_step`` and ``after_step`` around each step with a
step number it counts on the host, so the profiled steps are not serialised by
reading the step counter from the device.
"""

from typing import Optional, Sequence

import tensorflow as tf
from absl import logging


class StepProfiler:
  """Starts the profiler before step ``first`` and stops it after step ``last``.

  Args:
    steps: ``(first, last)``, 1-based global training steps, ``1 <= first <= last``.
    logdir: where the profile goes (TensorBoard's log directory).
  """

  def __init__(self, steps: Sequence[int], logdir: str):
    steps = tuple(int(s) for s in steps)
    if len(steps) != 2 or not 1 <= steps[0] <= steps[1]:
      raise ValueError(f"ExperimentConfig.profile_steps={tuple(steps)}: give two training "
                       "steps (first, last) with 1 <= first <= last.")
    self.first, self.last = steps
    self.logdir = logdir
    self._running = False
    self._done = False

  @property
  def running(self) -> bool:
    return self._running

  def before_step(self, step: int) -> None:
    """Starts profiling when ``step`` (about to run) is in the window (a resumed
    run that starts inside it profiles the rest)."""
    if not self._running and not self._done and self.first <= step <= self.last:
      tf.profiler.experimental.start(self.logdir)
      self._running = True

  def after_step(self, step: int) -> None:
    """Stops after the last profiled step (the caller has waited for it to finish)."""
    if self._running and step >= self.last:
      self.stop()

  def stop(self) -> Optional[str]:
    """Stops and writes the profile (also when training ends inside the window)."""
    if not self._running:
      return None
    tf.profiler.experimental.stop()
    self._running, self._done = False, True
    msg = (f"train | profile of steps {self.first}..{self.last} written to "
           f"{self.logdir}/plugins/profile (TensorBoard, tab Profile)")
    print(msg, flush=True)
    logging.info(msg)
    return msg
