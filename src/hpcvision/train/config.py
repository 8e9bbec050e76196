"""`TrainConfig`: every knob of `hpcvision train`, from defaults < `--config run.yaml` < flags.

The run's checkpoint directory keeps a copy (`run.yaml`), so `evaluate`/`export` rebuild the exact
model and a restarted job continues with the same settings. Preprocessing options are the `input:`
section (`hpcvision.data.input_config.InputConfig`); their flags stay flat (`--augment`, `--pad`...).
`LaunchConfig`: the options of `hpcvision launch`, which passes the rest on to each `train` process.
`RunsConfig`: the options of `hpcvision runs`, which compares the runs' folders.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from hpcvision.cluster.launch import GRACE_S
from hpcvision.config import option, required
from hpcvision.data.input_config import InputConfig
from hpcvision.errors import UserError

STRATEGIES = ["auto", "one", "mirrored", "multi-worker", "parameter-server"]
OPTIMIZERS = ["sgd", "rmsprop", "adam", "adamw", "lion", "lamb"]
SCHEDULES = ["cosine", "step", "constant"]
PRECISIONS = ["auto", "off", "mixed_bfloat16", "mixed_float16"]


@dataclass
class TrainConfig:
    """Settings of one training run (learning rate is for batch 256, scaled by the global batch)."""

    data: str | None = option(None, "directory with the TFRecord shards and their manifest",
                              needed="required unless --synthetic or --checkpoint-dir holds a run.yaml")
    train_name: str = option("train", "shard name of the training split")
    val_name: str = option("validation", "shard name of the validation split (skipped if absent)")
    val_data: str | None = option(None, "directory with the validation shards and their manifest, when not "
                                  "in --data (e.g. the original's separate train/ and validation/ folders)")
    model: str = option("resnet50", "network name (see `hpcvision models`)")
    checkpoint_dir: str | None = option(None, "where checkpoints, run.yaml, labels.json and logs go",
                                        needed="required, here or in --config")
    epochs: float = option(1.0, "epochs to train (ignored when --steps is set)", above=0)
    steps: int | None = option(None, "total training steps (overrides --epochs; 0 = use --epochs)", minimum=0)
    batch_size: int = option(32, "batch size per replica (global batch = this x replicas)", minimum=1)
    image_size: int | None = option(None, "input resolution (default: the model's published size)", minimum=1)
    strategy: str = option("auto", "distribution strategy", choices=STRATEGIES)
    num_ps: int = option(0, "parameter-server tasks expected in the cluster (for discovery)", minimum=0)
    optimizer: str = option("sgd", "sgd (Nesterov momentum), rmsprop, adam, adamw, lion or lamb (Keras')",
                            choices=OPTIMIZERS)
    momentum: float = option(0.9, "momentum of sgd/rmsprop", minimum=0, maximum=1)
    learning_rate: float = option(0.1, "base learning rate for a global batch of 256", above=0)
    warmup_epochs: float = option(0.0, "linear warm-up length in epochs", minimum=0)
    schedule: str = option("cosine", "decay after warm-up", choices=SCHEDULES)
    step_epochs: list[float] = field(
        default_factory=lambda: [30.0, 60.0, 80.0],
        metadata={"help": "epochs at which the step schedule divides the rate by 10", "minimum": 0},
    )
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy", minimum=0, maximum=1)
    weight_decay: float = option(1e-4, "decoupled weight decay (not on biases and normalisation)", minimum=0)
    clip_norm: float = option(0.0, "clip the gradient to this global norm, over all replicas (0 = off)", minimum=0)
    ema_decay: float = option(0.0, "keep an exponential moving average of the weights with this decay per "
                              "update, used by evaluation and export (0 = off; e.g. 0.9998)", minimum=0, below=1)
    accumulate: int = option(1, "gradient accumulation: one update from N micro-batches of --batch-size per "
                             "replica (the global batch, and the learning rate's scaling, is N times larger)",
                             minimum=1, maximum=64)
    sync_batch_norm: bool = option(False, "batch-norm statistics over the global batch (all replicas), not "
                                   "each replica's (Keras' synchronized BatchNormalization; all-reduce strategies)")
    aux_loss_weight: float = option(0.3, "weight of auxiliary-head losses (googlenet, inception_v3)", minimum=0)
    mixed_precision: str = option(
        "off", "auto = bf16 on a CPU with AVX512_BF16/AMX (else float32), fp16 with loss scaling on GPU", choices=PRECISIONS
    )
    input: InputConfig = field(
        default_factory=InputConfig,
        metadata={"help": "how images become model inputs: training crop and flip, normalisation, evaluation crop"},
    )
    xla: bool = option(False, "compile the train step with XLA (jit_compile)")
    seed: int | None = option(None, "seed for initialisation and data order (deterministic runs)",
                              minimum=0, maximum=2**32 - 1)  # what NumPy's seed accepts
    data_service: str | None = option(
        None, "HOST:PORT of a tf.data service dispatcher (`hpcvision data serve`): training batches are made "
        "there from --data, each example once per epoch; evaluation stays local. auto: where `data serve` plans "
        "it, the first GPU-less host in HPCVISION_GPUS at the job's base port (127.0.0.1 alone)",
        metavar="HOST:PORT|auto")
    synthetic: bool = option(False, "random input tensors instead of --data (benchmarks)")
    num_classes: int | None = option(None, "classes for --synthetic runs (otherwise from the manifest)", minimum=1)
    examples_per_epoch: int | None = option(None, "override the manifest's count (synthetic runs)", minimum=1)
    checkpoint_every_steps: int = option(1000, "checkpoint every N steps (0 = off)", minimum=0)
    checkpoint_every_minutes: float = option(30.0, "checkpoint every M minutes (0 = off)", minimum=0)
    keep_checkpoints: int = option(5, "checkpoints to keep", minimum=1)
    log_every: int = option(50, "progress line and scalar summaries every N steps", minimum=1)
    histogram_every: int = option(1000, "weight histograms and first-layer filters every N steps (0 = off)",
                                 minimum=0)
    eval_every_epochs: float = option(1.0, "evaluate on the validation shards every N epochs (0 = end only)",
                                     minimum=0)
    eval: bool = option(True, "evaluate on the validation shards when they exist")
    deadline: str | None = option(None, "job end time (epoch s, ISO, +HH:MM:SS); default from the scheduler")
    deadline_margin_s: float = option(300.0, "checkpoint and stop this many seconds before the deadline",
                                     minimum=0)
    incomplete_exit_code: int = option(
        0, "exit code after stopping early with steps left (signal/deadline); job scripts with --resubmit use 3",
        minimum=0, maximum=255)
    collective_timeout_s: float = option(600.0, "a peer silent this long is an error, not a hang (all-reduce)",
                                        above=0)
    # Fine-tuning (train/init_weights.py) and resumes (train/checkpoint.py check_resume).
    init_checkpoint: str | None = option(
        None, "start from these weights, by layer name and shape (step, optimizer state and schedule from zero; "
        "a head of another class count starts fresh): a run folder (its newest checkpoint), a checkpoint prefix, "
        "an export folder, a .keras file or a .weights.h5/.h5 file (keras.applications' vgg16, inception_v3); "
        "used only while --checkpoint-dir holds no checkpoint", metavar="PATH")
    freeze_backbone: bool = option(False, "train only the classifier layers (logits, and the auxiliary heads' "
                                   "*_logits); the rest keeps its weights and its batch norm runs in inference mode")
    allow_batch_change: bool = option(
        False, "resume with another global batch: training continues at the epoch reached, the schedule at that "
        "epoch in steps of the new batch, the learning rate scaled to the new batch")
    # Bookkeeping that train writes into run.yaml (no flags): what a resume compares and continues from.
    global_batch: int | None = option(None, "the global batch of the run's steps so far", minimum=1, recorded=True)
    step_shift: int = option(0, "added to the step counter to count epochs in steps of the current global batch "
                             "(nonzero after a batch change)", minimum=-(2**62), maximum=2**62, recorded=True)

    def __post_init__(self) -> None:
        if self.data_service:  # a bad address is one line before TensorFlow starts (or a job script is written)
            from hpcvision.data.service import parse_address

            if self.data_service != "auto":  # auto: resolved with the cluster plan (train.loop)
                parse_address(self.data_service)
            if self.synthetic:
                raise UserError("--data-service makes batches from --data; it does not go with --synthetic")


@dataclass(frozen=True)
class LaunchConfig:
    """Everything `hpcvision launch` needs: the local cluster's shape and the `train` arguments."""

    train_args: tuple[str, ...] = required("-- then the `hpcvision train` options", positional=True,
                                           nargs=argparse.REMAINDER)
    workers: int = option(2, "worker processes", minimum=1)
    ps: int = option(0, "parameter servers; >0 adds a chief", minimum=0)
    threads: int = option(1, "intra-op threads per process, 0 = as many as TensorFlow picks", minimum=0)
    grace: float = option(GRACE_S, "seconds between SIGTERM and SIGKILL when stopping the others", minimum=0)


@dataclass(frozen=True)
class RunsConfig:
    """Everything `hpcvision runs` needs: which run folders, and how to print them."""

    dirs: tuple[str, ...] = required("run folders (train's --checkpoint-dir), or folders of them such as a sweep's",
                                     positional=True, metavar="DIR")
    csv: bool = option(False, "print CSV instead of aligned columns")
