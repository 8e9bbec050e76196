"""`hpcvision train`: the training loop, top to bottom.

One custom loop for every strategy (Keras 3's `fit` breaks under MultiWorkerMirroredStrategy and
ParameterServerStrategy on TF 2.21): a `tf.function` step run by `strategy.run` (all-reduce), or
scheduled by a `ClusterCoordinator` on the workers (parameter servers). Our own int64 `step`
variable drives the schedule, checkpoint names and resume.

Stopping early is agreed by all workers: each step all-reduces a small vector that carries, besides
loss and accuracy counts, "this worker got SIGTERM/SIGUSR1 or passed its deadline" and "this worker
wants a timed checkpoint". So every worker saves and stops after the same step, and the job exits 0.
(TF's PreemptionCheckpointHandler does the same through the coordination service, but exits with its
own restart code and owns the checkpoint manager; one extra float in an existing all-reduce is simpler.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcvision.cluster.discovery import env_int
from hpcvision.cluster.plan import plan_cluster
from hpcvision.cluster.service_plan import dispatcher_address
from hpcvision.cluster.walltime import job_deadline
from hpcvision.errors import UserError
from hpcvision.train import checkpoint as ckpt_lib
from hpcvision.train import inputs, optim
from hpcvision.train.strategy import Role, make_strategy, resolve_role, serve_until_chief_exits
from hpcvision.train.summaries import Summaries

log = logging.getLogger("hpcvision.train")

# Positions in the per-step vector that is summed over replicas.
LOSS, TOP1, TOP5, COUNT, STOP, SAVE = range(6)
RESUME_HINT = "to resume it, use the settings of its run.yaml; for a new run, another --checkpoint-dir"


class StopRequest:
    """Set by SIGTERM/SIGUSR1 (what PBS and Slurm send before walltime) or by the job's deadline.

    Once a signal asked to stop, further ones are ignored until the process exits: schedulers and
    `launch` repeat them, and one arriving during the final flush or TensorFlow's slow shutdown
    would turn a saved, clean stop into exit 143. Without a signal, leaving restores the handlers.
    """

    def __init__(self, deadline: float | None, margin_s: float):
        self.signal_name: str | None = None
        self.stop_at = None if deadline is None else deadline - margin_s
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGUSR1)}

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *_exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.signal_name else handler)

    def _on_signal(self, signum, _frame) -> None:
        self.signal_name = signal.Signals(signum).name  # acted on at the next step boundary

    def reason(self) -> str | None:
        if self.signal_name:
            return self.signal_name
        if self.stop_at is not None and time.time() >= self.stop_at:
            return "deadline"
        return None


@dataclasses.dataclass
class Run:
    """One training process: its place in the cluster, what it trains, and the state a checkpoint holds."""

    cfg: Any  # TrainConfig, image_size and num_classes filled in from the model and the data
    role: Role
    strategy: Any
    info: inputs.DataInfo
    global_batch: int
    steps_per_epoch: int
    total_steps: int
    loss_scaling: bool  # float16 policy: the optimizer scales the loss
    model: Any
    optimizer: Any
    step: Any  # int64 tf.Variable, ours: drives the schedule, checkpoint names and resume
    epoch: Any  # int64 tf.Variable, saved with each checkpoint
    learning_rate: Callable[[], Any]
    checkpoint: Any  # tf.train.Checkpoint(model=, optimizer=, step=, epoch=)
    manager: Any  # its tf.train.CheckpointManager in cfg.checkpoint_dir
    restored: str | None  # the checkpoint this run resumed from
    start_step: int
    coordinator: Any  # ClusterCoordinator with parameter servers, else None
    summaries: Summaries  # writes only on the chief
    service_attempt: int = 0  # --data-service: names this attempt's jobs on the input service (same on all trainers)


@dataclasses.dataclass(frozen=True)
class Steps:
    """The compiled functions of a run."""

    train: Callable  # (iterator, flags [stop, save]) -> per-step vector summed over replicas
    evaluate: Callable  # (images, labels) -> [loss sum, top-1 hits, top-5 hits, examples]
    sync_batch_norm: Callable | None  # multi-worker only: workers' batch-norm statistics -> their mean
    eval_model: Any = None  # the model built at --eval-image-size when that differs (weights copied in)


def train(cfg) -> int:
    """Train as `cfg` says (resuming from its checkpoint dir); the process exit code."""
    role, cfg = _join_cluster(cfg)
    if role.runs_server_only:
        return serve_until_chief_exits(role)
    run = build_run(cfg, role)
    steps = make_steps(run)
    with StopRequest(job_deadline(run.cfg.deadline), run.cfg.deadline_margin_s) as stop:
        # Kept until after the final save: tearing down an input pipeline waits for its work in flight (seconds).
        feed = _Feed(run)
        step_value, reason = train_until_done_or_stopped(run, steps, feed, stop)
        step_value = finish(run, steps, step_value, reason)
    run.summaries.flush()
    if run.role.kind == "multi-worker" and not reason:
        exit_with_the_other_workers(run)
    return run.cfg.incomplete_exit_code if reason and step_value < run.total_steps else 0


def exit_with_the_other_workers(run: Run) -> None:
    """End this finished all-reduce worker's process together with the others (exit 0, never returns).

    Left to Python, a worker's teardown took 10-18 s (the input pipeline's work in flight, the coordination
    service) and its agent never says goodbye: whichever process outlived the other by TensorFlow's 10 s
    heartbeat timeout logged "tasks have crashed" or "Failed to send RPC to coordination service" (3 of 5
    runs of the 8-epoch demo), though everything was saved. So: one last all-reduce (every worker is here,
    past its last collective and save), logs flushed, then out without teardown.
    """
    import tensorflow as tf

    _sum_over_workers(run.strategy, tf.zeros([1]), run.role.num_workers, tf).numpy()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(0)


def _join_cluster(cfg) -> tuple[Role, Any]:
    """This process's role in the cluster (planned once), with GPUs and threads set before TensorFlow starts;
    `cfg` with --data-service auto replaced by the dispatcher's address, found from the same discovery."""
    plan = plan_cluster(cfg.num_ps)
    plan.log_notes()
    if cfg.data_service == "auto":
        where, why = dispatcher_address(plan.found)
        log.info("--data-service auto: the dispatcher at %s (%s)", where, why)
        cfg = dataclasses.replace(cfg, data_service=where)
    if plan.visible_gpus is not None:  # must be set before TensorFlow initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = plan.visible_gpus
    import tensorflow as tf

    role = resolve_role(plan, cfg.strategy, len(tf.config.list_physical_devices("GPU")))
    _apply_thread_settings(role.kind)
    return role, cfg


def build_run(cfg, role: Role) -> Run:
    """Strategy, model, optimizer and checkpoints of this run, restored from its newest checkpoint."""
    import keras
    import tensorflow as tf

    spec = _model_spec(cfg)
    loss_scaling = set_precision(cfg.mixed_precision, tf, keras)
    strategy = make_strategy(role, cfg.collective_timeout_s)
    service_attempt = _agreed_attempt(strategy, role) if cfg.data_service else 0
    if cfg.seed is not None:
        keras.utils.set_random_seed(cfg.seed)
    info = inputs.describe_data(cfg)
    cfg = dataclasses.replace(cfg, image_size=cfg.image_size or spec.image_size, num_classes=info.num_classes)
    global_batch = cfg.batch_size * strategy.num_replicas_in_sync * cfg.accumulate  # examples per update
    steps_per_epoch = max(1, info.examples_per_epoch // global_batch)
    # Refuses another model, class count, optimizer or (unless allowed) global batch before building anything.
    shift = ckpt_lib.check_resume(cfg, global_batch, steps_per_epoch, info.examples_per_epoch)
    cfg = dataclasses.replace(cfg, global_batch=global_batch, step_shift=shift, allow_batch_change=False)
    total_steps = cfg.steps or max(1, math.ceil(cfg.epochs * steps_per_epoch) - shift)
    with strategy.scope():
        model, optimizer, step, epoch, learning_rate = _build_model_and_optimizer(
            cfg, spec.has_aux, loss_scaling, global_batch, steps_per_epoch, total_steps,
            strategy.num_replicas_in_sync)
    # The weights' moving averages also under the model's own names, for evaluate and export (optim.py).
    averages = {"ema": optim.ema_variables(optimizer)} if cfg.ema_decay else {}
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, epoch=epoch, **averages)
    checkpoint_dir = Path(cfg.checkpoint_dir)
    restored = ckpt_lib.restore_newest(checkpoint, checkpoint_dir, model=f"--model {cfg.model} with "
                                       f"{cfg.num_classes} classes", hint=RESUME_HINT)
    if restored is None and cfg.init_checkpoint:
        from hpcvision.train.init_weights import load_initial_weights

        load_initial_weights(model, cfg.init_checkpoint, [c["wnid"] for c in info.labels["classes"]])
    elif restored is None and cfg.freeze_backbone:
        log.warning("--freeze-backbone without --init-checkpoint: only the head trains, on random features")
    start_step = int(step.numpy())
    # Written only now that the checkpoint is known to hold this model, and not at all when nothing is
    # left to do (a finished run's folder may be read-only).
    writes_here = role.is_chief and start_step < total_steps
    if writes_here:
        ckpt_lib.tidy_checkpoint_dir(checkpoint_dir)  # before the manager reads the state file
        ckpt_lib.write_run_files(cfg, info.labels, checkpoint_dir)
    manager = tf.train.CheckpointManager(checkpoint, str(checkpoint_dir), max_to_keep=cfg.keep_checkpoints,
                                         checkpoint_name=ckpt_lib.CHECKPOINT_NAME)
    log.info("%s: %s strategy, %d replica(s), global batch %d%s, %d steps/epoch, %d steps; %s", role.name,
             role.kind, strategy.num_replicas_in_sync, global_batch,
             f" ({cfg.accumulate} micro-batches of {global_batch // cfg.accumulate})" if cfg.accumulate > 1 else "",
             steps_per_epoch, total_steps,
             f"resumed from {restored} at step {start_step}" if restored else "starting at step 0")
    coordinator = None
    if role.kind == "parameter-server":
        coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    return Run(cfg=cfg, role=role, strategy=strategy, info=info, global_batch=global_batch,
               steps_per_epoch=steps_per_epoch, total_steps=total_steps, loss_scaling=loss_scaling, model=model,
               optimizer=optimizer, step=step, epoch=epoch, learning_rate=learning_rate, checkpoint=checkpoint,
               manager=manager, restored=restored, start_step=start_step, coordinator=coordinator,
               summaries=_open_summaries(cfg, writes_here, start_step, model, info.labels),
               service_attempt=service_attempt)


def _agreed_attempt(strategy, role: Role) -> int:
    """A random number all trainers of this attempt share (the first worker's): it names the input service's
    jobs, so a restart at the same step never joins a pass its previous attempt used up."""
    import random

    import tensorflow as tf

    if role.kind == "parameter-server":
        raise UserError("--data-service is for all-reduce or one-process training; with parameter servers "
                        "each worker reads its own input")
    mine = random.randrange(1 << 24) if role.worker_index == 0 else 0  # exact as a float32
    if role.kind != "multi-worker":
        return mine
    return int(_sum_over_workers(strategy, tf.constant([float(mine)]), role.num_workers, tf).numpy()[0])


def _open_summaries(cfg, writes_here: bool, start_step: int, model, labels: dict) -> Summaries:
    """TensorBoard writers (when this process `writes_here`: the chief, with steps to do), starting with
    the model's layer graph and a few training inputs with their boxes and class names."""
    summaries = Summaries(Path(cfg.checkpoint_dir) / "logs" if writes_here else None)
    summaries.model_graph(model, step=start_step)
    samples = inputs.sample_inputs(cfg, cfg.image_size, labels) if writes_here else None
    if samples is not None:
        summaries.sample_inputs(*samples, step=start_step)
    return summaries


def _model_spec(cfg):
    """The registry's spec of `cfg.model`; UserError for a missing checkpoint dir or an unknown model."""
    from hpcvision.models import model_spec

    if not cfg.checkpoint_dir:
        raise UserError("--checkpoint-dir is required")
    return model_spec(cfg.model)  # ModelError is a UserError: one line for an unknown name


def _build_model_and_optimizer(cfg, aux: bool, loss_scaling: bool, global_batch: int, steps_per_epoch: int,
                               total_steps: int, replicas: int):
    """(model, optimizer, step, epoch, learning rate): the trained state, built in the strategy's scope."""
    import tensorflow as tf

    from hpcvision.models import build_model

    model = build_model(cfg.model, cfg.num_classes, cfg.image_size, aux=aux,
                        synchronized_batch_norm=cfg.sync_batch_norm)
    if cfg.freeze_backbone:  # before the optimizer is built: it keeps state for the head only
        from hpcvision.train.init_weights import freeze_backbone

        freeze_backbone(model)
    first = tf.VariableAggregation.ONLY_FIRST_REPLICA
    step = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=first, name="step")
    epoch = tf.Variable(0, dtype=tf.int64, trainable=False, aggregation=first, name="epoch")
    peak_rate = optim.scaled_learning_rate(cfg.learning_rate, global_batch)

    def learning_rate():
        # step_shift places the counter in epochs after a batch change (0 otherwise).
        return optim.learning_rate_at(step + cfg.step_shift, peak=peak_rate, steps_per_epoch=steps_per_epoch,
                                      total_steps=total_steps + cfg.step_shift, warmup_epochs=cfg.warmup_epochs,
                                      schedule=cfg.schedule, step_epochs=cfg.step_epochs)

    # Keras clips each replica's gradient before its all-reduce; the step hands it the all-reduced gradient
    # divided by the replicas instead (_make_train_step), whose norm is the global one / replicas.
    optimizer = optim.make_optimizer(cfg.optimizer, learning_rate, momentum=cfg.momentum,
                                     weight_decay=cfg.weight_decay, loss_scaling=loss_scaling,
                                     clip_norm=cfg.clip_norm / replicas, ema_decay=cfg.ema_decay)
    optimizer.build(model.trainable_variables)
    return model, optimizer, step, epoch, learning_rate


def make_steps(run: Run) -> Steps:
    """The train step, the eval step and (multi-worker) the batch-norm sync, as tf.functions."""
    moving_stats = [v for v in run.model.non_trainable_variables if v.dtype.startswith("float")]
    sync = None
    if run.role.kind == "multi-worker" and moving_stats:
        sync = _make_batch_norm_sync(run.strategy, moving_stats)
    eval_model = None
    if run.cfg.input.eval_size(run.cfg.image_size) != run.cfg.image_size:
        eval_model = _model_at(run, run.cfg.input.eval_size(run.cfg.image_size))
    return Steps(_make_train_step(run), _make_eval_step(run, eval_model or run.model), sync, eval_model)


def _model_at(run: Run, image_size: int):
    """The run's network built at another resolution, in the strategy's scope (its weights are copied in
    before each evaluation: their shapes do not depend on the resolution)."""
    from hpcvision.models import build_model, model_spec

    with run.strategy.scope():
        return build_model(run.cfg.model, run.info.num_classes, image_size, aux=model_spec(run.cfg.model).has_aux)


def _make_train_step(run: Run):
    """One synchronous step on every replica: (iterator, flags) -> the per-step vector summed over replicas."""
    import tensorflow as tf

    cfg, model, optimizer = run.cfg, run.model, run.optimizer
    replicas = run.strategy.num_replicas_in_sync
    clips_reduced = cfg.clip_norm > 0 and replicas > 1

    def gradients_and_sums(images, labels):
        """One (micro-)batch: its gradients (loss scaled to the update's global batch) and batch sums."""
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            losses, logits = optim.per_example_loss(outputs, labels, num_classes=run.info.num_classes,
                                                    label_smoothing=cfg.label_smoothing,
                                                    aux_weight=cfg.aux_loss_weight)
            loss = tf.nn.compute_average_loss(losses, global_batch_size=run.global_batch)
            if model.losses:  # once per update, however many micro-batches it has
                loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses)) / cfg.accumulate
            scaled = optimizer.scale_loss(loss) if run.loss_scaling else loss
        gradients = tape.gradient(scaled, model.trainable_variables)
        if cfg.accumulate > 1:  # a while_loop carries tensors only (a frozen layer has None)
            gradients = [tf.zeros_like(v) if g is None else g for g, v in zip(gradients, model.trainable_variables,
                                                                              strict=True)]
        return gradients, _batch_sums(losses, logits, labels, tf)

    def accumulated(images, labels):
        """Summed gradients and sums of the `accumulate` micro-batches [N, B, ...] (one update from them)."""
        def add_one(i, gradients, sums):
            more, more_sums = gradients_and_sums(images[i], labels[i])
            return i + 1, [g + m for g, m in zip(gradients, more, strict=True)], sums + more_sums

        gradients, sums = gradients_and_sums(images[0], labels[0])
        if cfg.sync_batch_norm:  # its all-reduce cannot sit in a while_loop (merge_call): unrolled, N copies
            for i in range(1, cfg.accumulate):
                _, gradients, sums = add_one(i, gradients, sums)
            return gradients, sums
        _, gradients, sums = tf.while_loop(lambda i, *_: i < cfg.accumulate, add_one, (tf.constant(1), gradients, sums))
        return gradients, sums

    def replica_step(images, labels, flags):
        if cfg.accumulate > 1:
            gradients, sums = accumulated(images, labels)
        else:
            gradients, sums = gradients_and_sums(images, labels)
        if clips_reduced:  # one all-reduce more: Keras clips before its own all-reduce (see _build_model...)
            gradients = [g / replicas for g in tf.distribute.get_replica_context().all_reduce("SUM", gradients)]
        optimizer.apply(gradients, model.trainable_variables)
        return tf.concat([sums, flags], axis=0)

    if cfg.xla:
        replica_step = tf.function(replica_step, jit_compile=True)

    @tf.function
    def train_step(iterator, flags):
        images, labels = next(iterator)
        sums = run.strategy.reduce("SUM", run.strategy.run(replica_step, args=(images, labels, flags)), axis=None)
        run.step.assign_add(1)
        return sums

    return train_step


def _make_eval_step(run: Run, model):
    """(images, labels) -> [loss sum, top-1 hits, top-5 hits, examples] of `model` in inference mode."""
    import tensorflow as tf

    @tf.function
    def eval_step(images, labels):
        losses, logits = optim.per_example_loss(model(images, training=False), labels,
                                                num_classes=run.info.num_classes, label_smoothing=0.0,
                                                aux_weight=0.0)
        return _batch_sums(losses, logits, labels, tf)

    return eval_step


def _make_batch_norm_sync(strategy, moving_stats):
    """A tf.function that sets each of `moving_stats` to its mean over all replicas."""
    import tensorflow as tf

    @tf.function
    def sync_moving_stats():
        # Batch-norm statistics are updated per worker (Keras 3 does not all-reduce them), so workers
        # drift apart; their mean is what a global-batch moving average would be. Done before saves.
        def average():
            local = [tf.identity(v.value) for v in moving_stats]
            averaged = tf.distribute.get_replica_context().all_reduce("MEAN", local)
            for variable, value in zip(moving_stats, averaged, strict=True):
                variable.assign(value)

        strategy.run(average)

    return sync_moving_stats


@dataclasses.dataclass
class _Window:
    """Per-step sums since the last progress line (with parameter servers: the steps' remote values)."""

    sums: Any = dataclasses.field(default_factory=lambda: _zeros())
    start: float = dataclasses.field(default_factory=time.monotonic)
    pending: list = dataclasses.field(default_factory=list)


def train_until_done_or_stopped(run: Run, steps: Steps, feed: _Feed, stop: StopRequest) -> tuple[int, str | None]:
    """Step from the restored step to the last on `feed`'s batches, saving and evaluating on schedule;
    (step, stop reason)."""
    cfg = run.cfg
    eval_every = max(1, round(cfg.eval_every_epochs * run.steps_per_epoch)) if cfg.eval_every_epochs > 0 else 0
    step_value, last_save = run.start_step, time.monotonic()
    window, reason = _Window(), None
    while step_value < run.total_steps and reason is None:
        timed_save = cfg.checkpoint_every_minutes > 0 and \
            time.monotonic() - last_save >= 60 * cfg.checkpoint_every_minutes
        reason, timed_save = _take_step(run, steps, feed.at(step_value), stop.reason(), timed_save, window,
                                        trace=step_value == run.start_step)
        step_value += 1
        if step_value % cfg.log_every == 0 or step_value == run.total_steps or reason:
            window = _report_window(run, step_value, window)
        if cfg.histogram_every and step_value % cfg.histogram_every == 0:
            run.summaries.weights(run.model, step_value)
        every_steps = cfg.checkpoint_every_steps and step_value % cfg.checkpoint_every_steps == 0
        if (every_steps or timed_save) and not reason and step_value < run.total_steps:
            _join_workers(run)
            save(run, steps, step_value)
            last_save = time.monotonic()
        at_eval = eval_every and (step_value + cfg.step_shift) % eval_every == 0
        if at_eval and step_value < run.total_steps and not reason:
            _join_workers(run)
            evaluate(run, steps, step_value)
    return step_value, reason


def _take_step(run: Run, steps: Steps, iterator, local_stop: str | None, timed_save: bool, window: _Window, *,
               trace: bool) -> tuple[str | None, bool]:
    """Run one step (with parameter servers: schedule it); (stop reason, save agreed by all workers)."""
    import tensorflow as tf

    if trace:  # the first step's graph goes to TensorBoard
        run.summaries.trace_on()
    if run.coordinator is not None:
        window.pending.append(run.coordinator.schedule(steps.train, args=(iterator, tf.zeros([2]))))
        reason = local_stop
    else:
        sums = steps.train(iterator, tf.constant([float(local_stop is not None), float(timed_save)]))
        sums = sums.numpy()
        window.sums += sums
        timed_save = sums[SAVE] > 0
        reason = local_stop or ("a peer's stop request" if sums[STOP] > 0 else None)
    if trace:
        run.summaries.trace_export(run.start_step + 1)
    return reason, timed_save


def _report_window(run: Run, step_value: int, window: _Window) -> _Window:
    """Log and summarise the steps in `window`; a fresh window."""
    if run.coordinator is not None:
        window.sums = sum((remote.fetch() for remote in window.pending), _zeros())
        window.pending = []
    _report(run, step_value, window.sums, time.monotonic() - window.start)
    return _Window()


def _join_workers(run: Run) -> None:
    """With parameter servers: wait until every scheduled step has run (before saving or evaluating)."""
    if run.coordinator is not None:
        run.coordinator.join()


class _Feed:
    """The training batches: one iterator for the whole run (epochs follow each other inside it), or with
    --data-service one per epoch (a service job each)."""

    def __init__(self, run: Run):
        self.run, self.iterator, self.until = run, None, 0

    def at(self, step_value: int):
        """The iterator whose next element is step `step_value + 1`'s input."""
        if self.iterator is None or step_value >= self.until:
            self.iterator = None  # the old pipeline goes before the next starts
            self.iterator, self.until = _make_iterator(self.run, step_value)
        return self.iterator


def _make_iterator(run: Run, step_value: int):
    """(the distributed input from `step_value` on, the step where it ends): the end of training, or with
    --data-service the end of this epoch. `step_shift` places the step in epochs after a batch change."""
    cfg = run.cfg
    if run.coordinator is not None:  # async workers: each reads all files in its own random order
        fn = inputs.train_dataset_fn(cfg, cfg.image_size, run.info.num_classes, steps_per_epoch=run.steps_per_epoch,
                                     first_step=0, last_step=run.total_steps, seeded=False)
        return iter(run.coordinator.create_per_worker_dataset(lambda: fn(None))), run.total_steps
    first = step_value + cfg.step_shift
    fn = inputs.train_dataset_fn(cfg, cfg.image_size, run.info.num_classes, steps_per_epoch=run.steps_per_epoch,
                                 first_step=first, last_step=run.total_steps + cfg.step_shift,
                                 service_attempt=run.service_attempt)
    until = step_value + run.steps_per_epoch - first % run.steps_per_epoch if cfg.data_service else run.total_steps
    return iter(run.strategy.distribute_datasets_from_function(fn)), until


def save(run: Run, steps: Steps, step_value: int) -> None:
    """Write checkpoint `ckpt-<step_value>` (chief); other multi-worker workers join in to a scratch dir."""
    import tensorflow as tf

    if steps.sync_batch_norm is not None:
        steps.sync_batch_norm()
    run.epoch.assign((step_value + run.cfg.step_shift) // run.steps_per_epoch)
    if run.role.is_chief:
        path = run.manager.save(checkpoint_number=step_value)
        log.info("checkpoint %s written (step %d)", path, step_value)
    else:  # MWMS: every worker must take part in the save; only the chief's copy is kept
        scratch = tempfile.mkdtemp(prefix="hpcvision-ckpt-")
        tf.train.CheckpointManager(run.checkpoint, scratch, max_to_keep=1).save(checkpoint_number=step_value)
        shutil.rmtree(scratch, ignore_errors=True)


def evaluate(run: Run, steps: Steps, step_value: int) -> None:
    """Loss, top-1 and top-5 on the validation shards (split over multi-workers), logged and summarised."""
    import tensorflow as tf

    cfg, role = run.cfg, run.role
    if not (cfg.eval and run.info.has_validation):
        return
    if steps.sync_batch_norm is not None:
        steps.sync_batch_norm()
    sharded = role.kind == "multi-worker"
    dataset = inputs.eval_dataset(cfg, cfg.input.eval_size(cfg.image_size), num_workers=role.num_workers if sharded else 1,
                                  worker_index=role.worker_index if sharded else 0)
    totals = tf.zeros([4])
    with optim.ema_weights_in(run.model, run.optimizer):  # the averages, when kept, are what is evaluated
        if steps.eval_model is not None:
            steps.eval_model.set_weights(run.model.get_weights())
        for images, labels in dataset:
            totals += steps.evaluate(images, labels)
    if sharded:
        totals = _sum_over_workers(run.strategy, totals, role.num_workers, tf)
    loss, top1, top5, count = (float(v) for v in totals.numpy())
    if role.is_chief:  # records whose image does not decode were dropped: say how many, and how to name them
        from hpcvision.data.pipeline import report_skipped

        report_skipped(inputs.val_dir(cfg), cfg.val_name, int(count))
    count = max(count, 1.0)
    log.info("eval step %d: loss %.4f top-1 %.4f top-5 %.4f (%d images)", step_value, loss / count,
             top1 / count, top5 / count, count)
    run.summaries.scalars(step_value, {"loss": loss / count, "top1": top1 / count, "top5": top5 / count}, "eval")
    run.summaries.flush()


def finish(run: Run, steps: Steps, step_value: int, reason: str | None) -> int:
    """Final save, then a final eval and the weights' digest, or how to resume; the last step."""
    if run.coordinator is not None:
        run.coordinator.join()
        step_value = int(run.step.numpy())  # the workers' increments, all of them (assign_add is atomic)
    if step_value > run.start_step or not run.restored:
        save(run, steps, step_value)
    if reason:
        log.info("stopping at step %d of %d (%s); the same command resumes from the checkpoint", step_value,
                 run.total_steps, reason)
    else:
        evaluate(run, steps, step_value)
        run.summaries.weights(run.model, step_value)
        log.info("finished at step %d; weights sha256 %s", step_value, weights_digest(run.model))
    return step_value


def _batch_sums(losses, logits, labels, tf):
    """[loss sum, top-1 hits, top-5 hits, examples] of one batch (hits of mixed labels: their largest class)."""
    if len(labels.shape) == 2:
        labels = tf.argmax(labels, axis=-1, output_type=tf.int32)
    k = min(5, logits.shape[-1])
    return tf.stack([
        tf.reduce_sum(losses),
        tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32)),
        tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32)),
        tf.cast(tf.shape(labels)[0], tf.float32),
    ])


def _sum_over_workers(strategy, totals, num_workers: int, tf):
    """Sum a per-worker vector over workers (each worker's first local replica contributes once)."""
    local = max(1, strategy.num_replicas_in_sync // num_workers)

    def contribution(values):
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        return values * tf.cast(tf.equal(replica % local, 0), tf.float32)

    return strategy.reduce("SUM", strategy.run(contribution, args=(totals,)), axis=None)


def _report(run: Run, step_value: int, window, seconds: float) -> None:
    """Progress line and scalar summaries for the steps since the last report (`window`: their sums)."""
    rate = float(run.learning_rate())
    count = max(float(window[COUNT]), 1.0)
    steps = max(count / run.global_batch, 1.0)
    images_per_s = count / max(seconds, 1e-9)
    loss, top1, top5 = window[LOSS] / count, window[TOP1] / count, window[TOP5] / count
    eta = (run.total_steps - step_value) * seconds / steps
    if run.role.is_chief:
        log.info("step %d/%d epoch %.2f loss %.4f top-1 %.3f top-5 %.3f lr %.4g %.1f img/s ETA %s", step_value,
                 run.total_steps, (step_value + run.cfg.step_shift) / run.steps_per_epoch, loss, top1, top5, rate,
                 images_per_s, _clock(eta))
    run.summaries.scalars(step_value, {
        "loss": loss, "top1": top1, "top5": top5, "learning_rate": rate,
        "images_per_sec/global": images_per_s,
        "images_per_sec/worker": images_per_s / max(run.role.num_workers, 1),
    })


def _zeros():
    import numpy as np

    return np.zeros(6, np.float64)


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def weights_digest(model) -> str:
    """sha256 over all model weights: equal on every worker after synchronous training."""
    digest = hashlib.sha256()
    for variable in model.weights:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()[:16]


def set_precision(choice: str, tf, keras) -> bool:
    """Apply the Keras dtype policy for --mixed-precision `choice` (auto: by device); True when the loss must
    be scaled (float16)."""
    if choice == "auto":
        if tf.config.list_physical_devices("GPU"):
            choice = "mixed_float16"
        else:  # emulated bfloat16 is slower than float32: only where the CPU computes it natively
            choice = "mixed_bfloat16" if cpu_has_bfloat16() else "off"
        log.info("--mixed-precision auto: %s", "float32" if choice == "off" else choice)
    keras.mixed_precision.set_global_policy("float32" if choice == "off" else choice)
    return choice == "mixed_float16"


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True when the CPU has bfloat16 instructions (AVX512_BF16 or AMX-BF16); False where it cannot be told."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split()}
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _apply_thread_settings(kind: str) -> None:
    """Honour TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS (set per process by `hpcvision launch`)."""
    intra, inter = (env_int(os.environ, name) if os.environ.get(name) else 0
                    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS"))
    if kind == "parameter-server" and inter == 1:
        # One inter-op thread deadlocks the ClusterCoordinator's remote calls (the chief stalls
        # after its first step, measured on TF 2.21): leave the default instead.
        log.warning("TF_NUM_INTEROP_THREADS=1 hangs parameter-server training; using TensorFlow's default")
        inter = 0
    if not (intra or inter):
        return
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)
