"""Builds and runs an experiment from gin: train, eval, train_and_eval, export, summary."""

import contextlib
import dataclasses
import os
import tempfile
from typing import Callable, List, Optional, Sequence

import gin
import orbit
import tensorflow as tf
import tf_keras as keras
from absl import logging

from deeplab_panoptic import common
from deeplab_panoptic.data import dataset_info as dataset_info_lib
from deeplab_panoptic.data import input_config as input_config_lib
from deeplab_panoptic.data import reader
from deeplab_panoptic.data import record_count
from deeplab_panoptic.export import saved_model
from deeplab_panoptic.losses.criterion import Criterion
from deeplab_panoptic.modeling import base as modeling_base
from deeplab_panoptic.modeling.meta_arch import MaskTransformer
from deeplab_panoptic.postprocess import base as postprocess_base
from deeplab_panoptic.postprocess.panoptic import PixelwisePanopticPostprocessor
from deeplab_panoptic.training import ema as ema_lib
from deeplab_panoptic.training import evaluator as evaluator_lib
from deeplab_panoptic.training import init_checkpoint as init_checkpoint_lib
from deeplab_panoptic.training import model_summary
from deeplab_panoptic.training import optimizers
from deeplab_panoptic.training import profiler as profiler_lib
from deeplab_panoptic.training import strategies
from deeplab_panoptic.training import trainer as trainer_lib
from deeplab_panoptic.training.optimizers import DynamicLossScale
from deeplab_panoptic.training.optimizers import OptimizerGroup
from deeplab_panoptic.utils import data_paths
from deeplab_panoptic.utils import files

_POLICIES = {None: "float32", "float32": "float32", "bfloat16": "mixed_bfloat16",
             "float16": "mixed_float16"}


def set_precision_policy(mixed_precision: Optional[str]) -> str:
  """Sets the global tf_keras dtype policy; returns its name.

  Args:
    mixed_precision: None / "float32", "bfloat16" or "float16".

  Raises:
    ValueError: for any other value.
  """
  if mixed_precision not in _POLICIES:
    raise ValueError(f"ExperimentConfig.mixed_precision={mixed_precision!r}; use None, "
                     "'bfloat16' (TPU) or 'float16' (GPU).")
  keras.mixed_precision.set_global_policy(_POLICIES[mixed_precision])
  return _POLICIES[mixed_precision]

MODES = ("train", "eval", "train_and_eval", "continuous_eval", "export", "summary")


@gin.configurable
@dataclasses.dataclass
class ExperimentConfig:
  """What to run, from gin.

  Attributes:
    train_file_pattern: TFRecords of the training split; a bare file name
      (``'train-*.tfrecord'``) is read under ``data_dir``, a path as it is.
    eval_file_pattern: TFRecords of the evaluation split (the same rule).
    data_dir: the dataset folder, ``%DATA_DIR`` in the dataset gin files
      (``utils/data_paths.py``).
    train_batch_size: global training batch size.
    eval_batch_size: global evaluation batch size.
    train_steps: total training steps.
    steps_per_loop: steps between console/TensorBoard summaries.
    checkpoint_interval: steps between checkpoints.
    eval_interval: steps between evaluations in train_and_eval (None: at the end).
    max_checkpoints: checkpoints kept.
    eval_input_size: model input (H, W) for building the model and for gmacs;
      default: the recipe's one crop-size binding, ``InputConfig.crop_size``.
    jit_compile: compile the training step with XLA (needs the "tpu" matcher).
    prepare_data: optional callable run before anything reads data (the shapes
      quickstart generates its dataset here when missing).
    continuous_eval_timeout: seconds continuous_eval waits for a new checkpoint.
    model: the meta-architecture class, built with no arguments (its parts come
      from gin): ``@MaskTransformer`` (a set of (class, mask) predictions) or
      ``@SemanticSegmenter`` (per-pixel classes).
    loss: the loss class, ``(batch, outputs) -> {name: scalar}`` with
      common.LOSS_TOTAL: ``@Criterion``, its terms set by a configs/losses/ file.
    postprocessor: the inference class (a ``postprocess.base.Postprocessor``: it
      declares the results it makes, and evaluation, results.json and the
      SavedModel follow that declaration), called with ``is_thing``,
      ``label_divisor`` and ``ignore_label`` of the dataset
      (``@SemanticPostprocessor`` for per-pixel models;
      ``@PixelwisePanopticPostprocessor``, MaX-DeepLab's per-pixel argmax;
      ``@MaskWiseMergingPostprocessor``, Panoptic SegFormer's Algorithm 1; or
      ``@MaskFormerMergingPostprocessor``, MaskFormer's mask-wise merging, which
      CMT-DeepLab uses).
    mixed_precision: None (float32), "bfloat16" (TPU; also runs on CPU) or
      "float16" (GPU, with a dynamic loss scale). The model computes in that
      type with float32 variables; its outputs, the losses and the
      postprocessing are float32. Export and summary always build float32.
    loss_scale: the DynamicLossScale built for "float16" (its gin arguments set
      the initial scale and growth).
    init_checkpoint: a checkpoint prefix or directory of another run to start
      from when ``model_dir`` holds no checkpoint yet (a run that resumes ignores
      it): fine-tuning, or a pretrained pixel encoder.
    init_checkpoint_parts: the model parts read from it (``"pixel_encoder"``,
      ``"pixel_decoder"``, ``"transformer_decoder"``, ...) or ``("all",)``.
    profile_steps: ``(first, last)``: a TensorBoard profile of these training
      steps (1-based) under ``<model_dir>/train`` (``training/profiler.py``);
      ``--profile_steps=a,b`` sets it. None: no profile.
    init_checkpoint_layout: ``"ours"`` (written by main.py or the importers) or
      ``"model_garden_backbone"`` (a Model Garden checkpoint's ``backbone``, e.g.
      its ImageNet ResNets, read into a ``ResNetEncoder``).
  """
  train_file_pattern: Optional[str] = None
  eval_file_pattern: Optional[str] = None
  data_dir: Optional[str] = None
  train_batch_size: int = 16
  eval_batch_size: int = 16
  train_steps: int = 1000
  steps_per_loop: int = 100
  checkpoint_interval: int = 1000
  eval_interval: Optional[int] = None
  max_checkpoints: int = 3
  eval_input_size: Optional[Sequence[int]] = None
  jit_compile: bool = False
  prepare_data: Optional[Callable[[], None]] = None
  continuous_eval_timeout: int = 3600
  model: Callable[[], keras.Model] = MaskTransformer
  loss: Callable[[], Callable] = Criterion
  checkpoint_data_iterator: bool = False
  deterministic_ops: bool = False
  seed: Optional[int] = None
  postprocessor: Callable[..., Callable] = PixelwisePanopticPostprocessor
  mixed_precision: Optional[str] = None
  loss_scale: Callable[[], DynamicLossScale] = DynamicLossScale
  init_checkpoint: Optional[str] = None
  init_checkpoint_parts: Sequence[str] = (init_checkpoint_lib.ALL_PARTS,)
  init_checkpoint_layout: str = "ours"
  profile_steps: Optional[Sequence[int]] = None

  def __post_init__(self):
    if self.eval_input_size is None:
      self.eval_input_size = input_config_lib.InputConfig().crop_size


class Experiment:
  """Everything one ``main.py`` call needs, built under the strategy."""

  def __init__(self, model_dir: str, mode: str):
    if mode not in MODES:
      raise ValueError(f"Unknown --mode={mode!r}; choose one of {', '.join(MODES)}.")
    self.mode = mode
    self.model_dir = model_dir
    self.config = ExperimentConfig()
    if self.config.seed is not None:
      # Before any layer exists: layers pick their random generator when built.
      keras.utils.set_random_seed(self.config.seed)
      keras.backend.experimental.enable_tf_random_generator()
    if self.config.deterministic_ops:
      tf.config.experimental.enable_op_determinism()
    self.info = dataset_info_lib.dataset_info()
    self.strategy = strategies.build_strategy()
    # Only the chief writes into model_dir; another worker of a multi-worker run
    # writes its (identical) checkpoints, summaries and results into a temporary
    # folder removed at the end, as Model Garden does (official/core/train_lib.py).
    self.is_chief = strategies.is_chief(self.strategy)
    self.write_dir = model_dir if self.is_chief else tempfile.mkdtemp(
        prefix=f"deeplab_panoptic_worker{strategies.task_id(self.strategy)}_")
    # Layers take the global policy when they are constructed (always set, so an
    # earlier Experiment in the same process leaves nothing behind). A float32
    # export / summary reads the same float32 variables.
    self.precision = None if mode in ("export", "summary") else self.config.mixed_precision
    set_precision_policy(self.precision)
    # A summary reads the variables' shapes only: zeros instead of the random draws.
    initial_values = (model_summary.zero_initial_values() if mode == "summary"
                      else contextlib.nullcontext())
    with self.strategy.scope(), initial_values:
      self.model = self.config.model()
      if not isinstance(self.model, modeling_base.SegmentationModel):
        raise TypeError(f"ExperimentConfig.model built a {type(self.model).__name__}, not a "
                        "modeling.base.SegmentationModel (@MaskTransformer, "
                        "@SemanticSegmenter).")
      self.postprocessor = self.config.postprocessor(
          is_thing=self.info.is_thing, label_divisor=self.info.label_divisor,
          ignore_label=self.info.ignore_label)
      if not isinstance(self.postprocessor, postprocess_base.Postprocessor):
        raise TypeError(f"ExperimentConfig.postprocessor built a "
                        f"{type(self.postprocessor).__name__}, not a "
                        "postprocess.base.Postprocessor (which declares its results).")
      self._build_model()

  def _build_model(self) -> None:
    """Creates every variable and checks the model against the postprocessor's
    declaration and the dataset (outputs it reads, number of classes)."""
    h, w = self.config.eval_input_size
    self.model(tf.zeros([1, h, w, 3]), training=True)  # Creates every variable.
    outputs = self.model(tf.zeros([1, h, w, 3]), training=False)
    self.postprocessor.check_model_outputs(outputs)

  # --------------------------------------------------------------------------
  def summary(self) -> dict:
    counts = model_summary.parameter_counts(self.model)
    # Ops the counter cannot count are listed, not silently taken as 0.
    report = model_summary.mac_report(self.model, tuple(self.config.eval_input_size))
    counts["gmacs"] = report.macs / 1e9
    counts["uncounted_ops"] = report.uncounted_text()
    return counts

  def _prepare_data(self) -> None:
    if self.config.prepare_data is not None:
      self.config.prepare_data()

  def file_pattern(self, training: bool) -> Optional[str]:
    """The TFRecords of a split, bare file names under ``ExperimentConfig.data_dir``."""
    cfg = self.config
    return data_paths.under_data_dir(
        cfg.train_file_pattern if training else cfg.eval_file_pattern, cfg.data_dir)

  def _dataset(self, training: bool):
    cfg = self.config
    pattern = self.file_pattern(training)
    if not pattern:
      raise ValueError(f"ExperimentConfig.{'train' if training else 'eval'}_file_pattern "
                       "is not set in the gin files.")
    if not tf.io.gfile.glob(pattern):
      raise FileNotFoundError(f"No files match {pattern!r} "
                              f"(ExperimentConfig.{'train' if training else 'eval'}_file_pattern).")
    scope = "train" if training else "eval"
    batch_size = cfg.train_batch_size if training else cfg.eval_batch_size

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
      # One pipeline per host, sharded by input_context, batched per replica.
      if not training and input_context.num_input_pipelines > 1:
        # The evaluator's metrics live in each process: every host scores the
        # whole split, so that the chief's results.json covers it.
        input_context = tf.distribute.InputContext(
            1, 0, input_context.num_replicas_in_sync)
      with gin.config_scope(scope):
        ds = reader.build_dataset(
            file_pattern=pattern, dataset_info=self.info, is_training=training,
            batch_size=batch_size, input_context=input_context)
      if training:
        # A TPU replica's infeed (and an XLA step) takes no strings: the image
        # names, which only evaluation writes out, stay on the host.
        ds = ds.map(lambda b: {k: v for k, v in b.items() if v.dtype != tf.string})
      return ds

    return self.strategy.distribute_datasets_from_function(dataset_fn)

  def _optimizer(self) -> OptimizerGroup:
    backbone = self.model.pixel_encoder.trainable_variables
    ids = {id(v) for v in backbone}
    others = [v for v in self.model.trainable_variables if id(v) not in ids]
    with self.strategy.scope():
      loss_scale = self.config.loss_scale() if self.precision == "float16" else None
      return OptimizerGroup(backbone, others, loss_scale=loss_scale,
                            variable_paths=optimizers.variable_paths(self.model))

  def _loss(self):
    return self.config.loss()

  def _checkpoint(self, optimizer: Optional[OptimizerGroup], global_step: tf.Variable,
                  directory: Optional[str] = None, **extra_items):
    items = {"model": self.model, **extra_items}
    if optimizer is not None:
      items.update(optimizer.checkpoint_items())
    checkpoint = tf.train.Checkpoint(global_step=global_step, **items)
    return tf.train.CheckpointManager(
        checkpoint, directory or self.model_dir, max_to_keep=self.config.max_checkpoints,
        step_counter=global_step, checkpoint_interval=self.config.checkpoint_interval)

  def _evaluator(self, global_step: tf.Variable,
                 ema: Optional[ema_lib.EmaWeights]) -> evaluator_lib.PanopticEvaluator:
    return evaluator_lib.PanopticEvaluator(
        self.strategy, self.model, self.postprocessor, self._dataset(False), self.info,
        self.write_dir, global_step, ema=ema,
        num_images=record_count.count_records(self.file_pattern(False)))

  def _training_ema(self, optimizer: OptimizerGroup) -> Optional[ema_lib.EmaWeights]:
    """The optimizers' averages of the trainable weights; None without EMA."""
    variables = self.model.trainable_variables
    averages = optimizer.moving_averages(variables)
    if averages is None:
      return None
    with self.strategy.scope():
      return ema_lib.EmaWeights(variables, averages)

  def _ema_to_restore(self) -> Optional[ema_lib.EmaWeights]:
    """Empty averages for the checkpoint's ``ema`` entry when EMA is on (no optimizer built)."""
    if not optimizers.ema_enabled():
      return None
    with self.strategy.scope():
      return ema_lib.EmaWeights.for_restore(self.model.trainable_variables)

  def _profiler(self) -> Optional[profiler_lib.StepProfiler]:
    steps = self.config.profile_steps
    if not steps:
      return None
    return profiler_lib.StepProfiler(steps, os.path.join(self.write_dir, "train"))

  def write_operative_config(self) -> None:
    files.write_text_atomic(os.path.join(self.write_dir, "operative_config.gin"),
                            gin.operative_config_str())

  # --------------------------------------------------------------------------
  def run(self) -> Optional[dict]:
    if self.mode == "summary":
      return self.summary()
    tf.io.gfile.makedirs(self.model_dir)
    if self.mode != "export":
      print(strategies.describe(self.strategy), flush=True)
    if not self.is_chief:
      print(f"worker {strategies.task_id(self.strategy)} (not the chief): writes to "
            f"{self.write_dir}, removed at the end; the chief writes {self.model_dir}",
            flush=True)
    try:
      self._prepare_data()
      if self.mode in ("train", "train_and_eval"):
        with trainer_lib.PreemptionWatcher() as preemption:
          return self._train(preemption)
      return self._eval_or_export()
    finally:
      if not self.is_chief:
        tf.io.gfile.rmtree(self.write_dir)

  def _train(self, preemption: trainer_lib.PreemptionWatcher) -> Optional[dict]:
    cfg = self.config
    optimizer = self._optimizer()
    global_step = optimizer.iterations
    train_ds = self._dataset(True)
    trainer = trainer_lib.PanopticTrainer(
        self.strategy, self.model, self._loss(), optimizer, train_ds,
        cfg.train_batch_size, cfg.train_steps, jit_compile=cfg.jit_compile,
        preemption=preemption, profiler=self._profiler())
    ema = self._training_ema(optimizer)
    evaluator = self._evaluator(global_step, ema) if self.mode == "train_and_eval" else None
    extra = {"train_data": trainer.data_iterator()} if cfg.checkpoint_data_iterator else {}
    if ema is not None:
      extra[ema_lib.CHECKPOINT_KEY] = ema
    generators = self._layer_random_generators()
    if generators:
      extra["layer_random_generators"] = generators
    manager = self._checkpoint(optimizer, global_step, self.write_dir, **extra)
    if cfg.init_checkpoint and tf.train.latest_checkpoint(self.model_dir) is None:
      # A fresh run only: a resumed run continues from its own checkpoint.
      read = init_checkpoint_lib.initialize_from_checkpoint(
          self.model, cfg.init_checkpoint, cfg.init_checkpoint_parts,
          cfg.init_checkpoint_layout)
      print(f"Initialised from {read} ({cfg.init_checkpoint_layout} layout).", flush=True)
    controller = orbit.Controller(
        strategy=self.strategy, trainer=trainer, evaluator=evaluator,
        global_step=global_step, steps_per_loop=cfg.steps_per_loop,
        checkpoint_manager=manager, summary_interval=cfg.steps_per_loop,
        summary_dir=os.path.join(self.write_dir, "train"),
        eval_summary_dir=os.path.join(self.write_dir, "eval"))
    if not self.is_chief and tf.train.latest_checkpoint(self.model_dir):
      # A resumed run: this worker's own folder is empty; it reads the chief's.
      controller.restore_checkpoint(tf.train.latest_checkpoint(self.model_dir))
    if ema is not None:
      # After the restore or warm start: the averages begin at these weights.
      ema.start_from_weights()
    self.write_operative_config()
    self._write_config_summary(global_step)
    try:
      if evaluator is None:
        controller.train(cfg.train_steps)
      else:
        controller.train_and_evaluate(cfg.train_steps, eval_steps=-1,
                                      eval_interval=cfg.eval_interval or cfg.train_steps)
    except trainer_lib.TrainingPreempted as e:
      path = manager.save(checkpoint_number=global_step, check_interval=False)
      e.message = f"{e.message}; checkpoint saved to {path} (rerun to resume)"
      print(e.message, flush=True)
      logging.warning(e.message)
      raise
    finally:
      if trainer.profiler is not None:
        trainer.profiler.stop()  # training ended inside the profiled steps
    manager.save(checkpoint_number=global_step, check_interval=False)
    self.write_operative_config()
    return evaluator.last_results if evaluator is not None else None

  def _eval_or_export(self) -> Optional[dict]:
    cfg = self.config
    if self.mode == "export":
      step = self.restore_latest()
      path = saved_model.export_saved_model(self.export_module(),
                                            os.path.join(self.write_dir, "export"))
      print(f"export | step {step} | SavedModel written to {path}", flush=True)
      return {"export_dir": path}
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    ema = self._ema_to_restore()
    manager = self._checkpoint(None, global_step, **_ema_items(ema))
    evaluator = self._evaluator(global_step, ema)
    controller = orbit.Controller(
        strategy=self.strategy, evaluator=evaluator, global_step=global_step,
        checkpoint_manager=manager, eval_summary_dir=os.path.join(self.write_dir, "eval"))
    if self.mode == "eval":
      self._restore(manager)
      controller.evaluate(steps=-1)
    else:
      controller.evaluate_continuously(steps=-1, timeout=cfg.continuous_eval_timeout)
    self.write_operative_config()
    return evaluator.last_results

  def _write_config_summary(self, step: tf.Variable) -> None:
    """The operative gin config as TensorBoard text (train/, tab "Text")."""
    # Indented lines render as a code block in TensorBoard's markdown.
    text = "\n".join("    " + line for line in gin.operative_config_str().splitlines())
    writer = tf.summary.create_file_writer(os.path.join(self.write_dir, "train"))
    with writer.as_default():
      tf.summary.text("operative_config", text, step=step)
    writer.flush()
    writer.close()

  def _layer_random_generators(self) -> List[tf.random.Generator]:
    """The tf.random.Generator of every Keras random layer (dropout), in model order.

    Keras leaves them out of checkpoints on purpose; a run with ``seed`` saves
    them beside the model so that a resumed run continues their streams. Random
    ops outside Keras layers (``tf.random.uniform``) have no saved state.
    """
    generators = []
    for layer in self.model.submodules:
      generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
      if isinstance(generator, tf.random.Generator):
        generators.append(generator)
    return generators

  def restore_latest(self) -> int:
    """Reads the model weights of ``model_dir``'s latest checkpoint; returns its step.

    With ``make_optimizer.use_ema`` the weights are the checkpoint's moving
    averages (``training/ema.py``), the weights that export and serve.

    Raises:
      FileNotFoundError: when ``model_dir`` holds no checkpoint.
    """
    global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    ema = self._ema_to_restore()
    self._restore(self._checkpoint(None, global_step, **_ema_items(ema)))
    step = int(global_step.numpy())
    if ema is not None:
      ema.check_ready(f"--mode={self.mode} of {self.model_dir}")
      ema.swap()  # For good: this model only serves.
      msg = (f"{self.mode} | step {step} | the model holds the EMA of the weights "
             "(make_optimizer.use_ema)")
      print(msg, flush=True)
      logging.info(msg)
    return step

  def export_module(self) -> saved_model.PanopticExportModule:
    """The model as it is now, with its postprocessor, in a serving module (what
    ``--mode=export`` saves and ``deeplab_panoptic.load`` calls)."""
    return saved_model.PanopticExportModule(self.model, self.postprocessor,
                                            dataset_info=self.info)

  def _restore(self, manager: tf.train.CheckpointManager) -> None:
    path = manager.latest_checkpoint
    if path is None:
      raise FileNotFoundError(f"No checkpoint in {self.model_dir}: train first "
                              "(--mode=train or train_and_eval).")
    # Only the model (and step) are needed: optimizer slots are left unread.
    manager.checkpoint.restore(path).expect_partial()
    logging.info("Restored %s", path)


def _ema_items(ema: Optional[ema_lib.EmaWeights]) -> dict:
  """The checkpoint item of the averages, when there are any."""
  return {} if ema is None else {ema_lib.CHECKPOINT_KEY: ema}
