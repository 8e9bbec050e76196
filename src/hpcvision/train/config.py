"""`TrainConfig`: every knob of `hpcvision train`, from defaults < `--config run.yaml` < flags.

The run's checkpoint directory keeps a copy (`run.yaml`), so `evaluate`/`export` rebuild the exact
model and a restarted job continues with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STRATEGIES = ["auto", "one", "mirrored", "multi-worker", "parameter-server"]
OPTIMIZERS = ["sgd", "rmsprop", "adam"]
SCHEDULES = ["cosine", "step", "constant"]
PRECISIONS = ["auto", "off", "mixed_bfloat16", "mixed_float16"]


def _opt(default, help_text: str, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass
class TrainConfig:
    """Settings of one training run (learning rate is for batch 256, scaled by the global batch)."""

    data: str | None = _opt(None, "directory with the TFRecord shards and their manifest")
    train_name: str = _opt("train", "shard name of the training split")
    val_name: str = _opt("validation", "shard name of the validation split (skipped if absent)")
    model: str = _opt("resnet50", "network name (see `hpcvision models`)")
    checkpoint_dir: str | None = _opt(None, "where checkpoints, run.yaml, labels.json and logs go")
    epochs: float = _opt(1.0, "epochs to train (ignored when --steps is set)")
    steps: int | None = _opt(None, "total training steps (overrides --epochs)")
    batch_size: int = _opt(32, "batch size per replica (global batch = this x replicas)")
    image_size: int | None = _opt(None, "input resolution (default: the model's published size)")
    strategy: str = _opt("auto", "distribution strategy", choices=STRATEGIES)
    num_ps: int = _opt(0, "parameter-server tasks expected in the cluster (for discovery)")
    optimizer: str = _opt("sgd", "sgd (Nesterov momentum), rmsprop or adam", choices=OPTIMIZERS)
    momentum: float = _opt(0.9, "momentum of sgd/rmsprop")
    learning_rate: float = _opt(0.1, "base learning rate for a global batch of 256")
    warmup_epochs: float = _opt(0.0, "linear warm-up length in epochs")
    schedule: str = _opt("cosine", "decay after warm-up", choices=SCHEDULES)
    step_epochs: list[float] = field(
        default_factory=lambda: [30.0, 60.0, 80.0],
        metadata={"help": "epochs at which the step schedule divides the rate by 10"},
    )
    label_smoothing: float = _opt(0.1, "label smoothing of the cross-entropy")
    weight_decay: float = _opt(1e-4, "decoupled weight decay (not on biases and normalisation)")
    aux_loss_weight: float = _opt(0.3, "weight of auxiliary-head losses (googlenet, inception_v3)")
    mixed_precision: str = _opt(
        "off", "auto = bf16 on CPU, fp16 with loss scaling on GPU", choices=PRECISIONS
    )
    augment: str = _opt("inception", "training crops: inception (boxes), pad_crop (small images), none",
                         choices=["inception", "pad_crop", "none"])
    normalize: str | None = _opt(None, "pixel scaling: imagenet (mean/std) or unit ([0, 1])",
                                 choices=["imagenet", "unit"])
    flip: bool | None = _opt(None, "random horizontal flips in training (default: on)")
    pad: int | None = _opt(None, "pad_crop padding in pixels (default: image_size // 8)")
    area_range: list[float] | None = _opt(None, "inception crop area range (default: 0.08 1.0)")
    aspect_ratio_range: list[float] | None = _opt(None, "inception crop aspect range (default: 0.75 1.333)")
    min_object_covered: float | None = _opt(None, "inception crop: fraction of a box kept (default: 0.1)")
    min_crop_size: int | None = _opt(None, "smallest crop side in pixels (default: 8)")
    central_fraction: float | None = _opt(None, "evaluation central crop (default: 0.875 inception, else 1.0)")
    xla: bool = _opt(False, "compile the train step with XLA (jit_compile)")
    seed: int | None = _opt(None, "seed for initialisation and data order (deterministic runs)")
    synthetic: bool = _opt(False, "random input tensors instead of --data (benchmarks)")
    num_classes: int | None = _opt(None, "classes for --synthetic runs (otherwise from the manifest)")
    examples_per_epoch: int | None = _opt(None, "override the manifest's count (synthetic runs)")
    checkpoint_every_steps: int = _opt(1000, "checkpoint every N steps (0 = off)")
    checkpoint_every_minutes: float = _opt(30.0, "checkpoint every M minutes (0 = off)")
    keep_checkpoints: int = _opt(5, "checkpoints to keep")
    log_every: int = _opt(50, "progress line and scalar summaries every N steps")
    histogram_every: int = _opt(1000, "weight histograms and first-layer filters every N steps (0 = off)")
    eval_every_epochs: float = _opt(1.0, "evaluate on the validation shards every N epochs (0 = end only)")
    eval: bool = _opt(True, "evaluate on the validation shards when they exist")
    deadline: str | None = _opt(None, "job end time (epoch s, ISO, +HH:MM:SS); default from the scheduler")
    deadline_margin_s: float = _opt(300.0, "checkpoint and stop this many seconds before the deadline")
    incomplete_exit_code: int = _opt(
        0, "exit code after stopping early with steps left (signal/deadline); job scripts with --resubmit use 3"
    )
    collective_timeout_s: float = _opt(600.0, "a peer silent this long is an error, not a hang (all-reduce)")

