"""Training throughput of hpcvision's model definitions on Keras 3 + JAX with bf16 mixed precision.

Each model trains on one synthetic batch kept on the device (no input pipeline in the way) with a
jitted, stateless JAX train step (forward, loss, backward, SGD+Nesterov update); img/s excludes the
compile and warm-up steps. `keras.applications.ResNet50` is trained the same way in the same run as the
baseline, and the reference figure from /work/shared/TF-NOTES.md (torch.compile ResNet-50 on one H200)
is printed next to it.

    python3 benchmarks/gpu_models.py --models resnet50 resnet18 vgg16 googlenet inception_v3 alexnet \
        --batch-size 256 --steps 30 --json gpu.json      # on a GPU machine (needs jax with CUDA, keras)
    python3 benchmarks/gpu_models.py --quick             # tiny CPU smoke run (tests/test_models.py)
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

# Torch reference: torch.compile ResNet-50, one H200, batch 256, bf16, synthetic 224^2 (TF-NOTES.md).
REFERENCE = {
    "name": "torch.compile ResNet-50, one H200, batch 256, bf16, synthetic 224px",
    "img_per_s": 6699.0,
}
BASELINE = "keras.applications.ResNet50"
FULL_MODELS = ["resnet50", "resnet18", "vgg16", "googlenet", "inception_v3", "alexnet"]
QUICK_MODELS = ["resnet50", "resnet18"]
PRECISION = "mixed_bfloat16"
AUX_LOSS_WEIGHT = (
    0.3  # GoogLeNet's weight for its auxiliary losses (Inception v3 used 0.4): only the cost matters
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=None, help=f"default: {' '.join(FULL_MODELS)}")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=None, help="default: each model's published size")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--no-baseline", action="store_true", help=f"skip {BASELINE}")
    parser.add_argument("--max-seconds", type=float, default=None, help="start no new model after this long")
    parser.add_argument(
        "--json", type=Path, default=None, help="write the figures here (rewritten after each model)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny CPU smoke run: 2 models, 32 px, batch 4, 2 steps"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.image_size, args.batch_size, args.steps, args.warmup = 32, 4, 2, 1
    args.models = args.models or (QUICK_MODELS if args.quick else FULL_MODELS)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # The backend is fixed when keras is first imported, so set it (and CPU for --quick) before that.
    os.environ["KERAS_BACKEND"] = "jax"
    if args.quick:
        os.environ["JAX_PLATFORMS"] = "cpu"
        # A smoke run checks that everything runs, not speed: LLVM's cheapest level halves compile time.
        os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # runs from a bare checkout too
    import jax
    import keras

    device = jax.devices()[0]
    report = {
        "device": f"{device.platform}: {device.device_kind}",
        "backend": f"keras {keras.__version__} + jax {jax.__version__}",
        "precision": PRECISION,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "models": [],
        "baseline": None,
        "reference": REFERENCE,
    }
    print(
        f"device {report['device']} | {report['backend']} | bf16 mixed | batch {args.batch_size} | {args.steps} timed steps"
    )
    print(f"{'model':<30} {'px':>4} {'params M':>9} {'compile s':>9} {'ms/step':>8} {'img/s':>9}  loss   convs")

    def record(result: dict, baseline: bool = False) -> None:
        print(
            f"{result['model']:<30} {result['image_size']:>4} {result['params_m']:>9.2f} {result['compile_s']:>9.1f}"
            f" {result['step_ms']:>8.1f} {result['img_per_s']:>9.1f}  {result['final_loss']:.3f}  {result['conv_policy']}",
            flush=True,
        )
        if baseline:
            report["baseline"] = result
        else:
            report["models"].append(result)
        if result["model"] == "resnet50":
            print_ratios(report)
        if args.json:  # rewritten after every model, so a run stopped by a time limit keeps what it measured
            args.json.write_text(json.dumps(report, indent=2) + "\n")

    started = time.perf_counter()
    jobs = [] if args.no_baseline else [BASELINE]
    for name in jobs + args.models:
        if args.max_seconds and time.perf_counter() - started > args.max_seconds:
            print(f"{name}: skipped, past --max-seconds {args.max_seconds:.0f}")
            report.setdefault("skipped", []).append(name)
            continue
        try:
            record(*measure(name, args))
        except Exception as error:  # one model failing must not lose the figures of the others
            print(f"{name}: FAILED: {type(error).__name__}: {error}", flush=True)
            report.setdefault("failed", {})[name] = f"{type(error).__name__}: {error}"
        free_memory()

    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 1 if report.get("failed") else 0


def print_ratios(report: dict) -> None:
    """Print (and store in `report`) our ResNet-50 against the same-run baseline and the torch reference."""
    ours = next(m for m in report["models"] if m["model"] == "resnet50")
    if report["baseline"]:
        report["ratio_resnet50_vs_baseline"] = ours["img_per_s"] / report["baseline"]["img_per_s"]
        print(
            f"  ratio: hpcvision resnet50 / {BASELINE} = {report['ratio_resnet50_vs_baseline']:.3f} (same run)"
        )
    report["ratio_resnet50_vs_reference"] = ours["img_per_s"] / REFERENCE["img_per_s"]
    print(
        f"  reference: {REFERENCE['name']}: {REFERENCE['img_per_s']:,.0f} img/s; hpcvision resnet50 / reference"
        f" = {report['ratio_resnet50_vs_reference']:.3f} (comparable only at 224 px, batch 256, on an H200)"
    )


def measure(name: str, args: argparse.Namespace) -> tuple[dict, bool]:
    """Build `name` (a registered model or the baseline) and time its training; returns (result, is_baseline)."""
    import keras

    from hpcvision.models import build_model, model_spec

    # Every time: keras.backend.clear_session() between models resets the global policy to float32.
    keras.mixed_precision.set_global_policy(PRECISION)
    if name == BASELINE:
        size = args.image_size or 224
        with fast_initialization():
            model = keras.applications.ResNet50(
                weights=None, input_shape=(size, size, 3), classes=args.num_classes, classifier_activation=None
            )
        return time_training(model, BASELINE, size, args), True
    spec = model_spec(name)
    size = args.image_size or spec.image_size
    with fast_initialization():
        model = build_model(name, args.num_classes, size, aux=spec.has_aux)
    return time_training(model, f"{name} (+aux heads)" if spec.has_aux else name, size, args), False


def time_training(model, label: str, image_size: int, args: argparse.Namespace) -> dict:
    """Compile a jitted train step for `model`, run warm-up steps, then time `args.steps` steps."""
    import jax
    import keras

    optimizer = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9, nesterov=True)
    optimizer.build(model.trainable_variables)
    step = make_train_step(model, optimizer)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    image_key, label_key = jax.random.split(jax.random.key(0))
    images = jax.random.normal(image_key, (args.batch_size, image_size, image_size, 3), "float32")
    labels = jax.random.randint(label_key, (args.batch_size,), 0, args.num_classes)

    start = time.perf_counter()
    state, loss = step(state, images, labels)
    loss.block_until_ready()
    compile_s = time.perf_counter() - start
    for _ in range(args.warmup):
        state, loss = step(state, images, labels)
    loss.block_until_ready()
    start = time.perf_counter()
    for _ in range(args.steps):
        state, loss = step(state, images, labels)
    final_loss = float(loss)  # waits for the last step
    elapsed = time.perf_counter() - start
    return {
        "model": label,
        "image_size": image_size,
        "params_m": model.count_params() / 1e6,
        "conv_policy": next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)).dtype_policy.name,
        "compile_s": compile_s,
        "step_ms": 1000 * elapsed / args.steps,
        "img_per_s": args.batch_size * args.steps / elapsed,
        "final_loss": final_loss,
    }


def make_train_step(model, optimizer):
    """A jitted (state, images, labels) -> (state, loss) step; auxiliary outputs add to the loss."""
    import jax
    import keras

    cross_entropy = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def loss_fn(trainable, non_trainable, images, labels):
        outputs, non_trainable = model.stateless_call(trainable, non_trainable, images, training=True)
        outputs = outputs if isinstance(outputs, list | tuple) else [outputs]
        loss = cross_entropy(labels, outputs[0])
        for aux_logits in outputs[1:]:
            loss = loss + AUX_LOSS_WEIGHT * cross_entropy(labels, aux_logits)
        return loss, non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state, images, labels):
        trainable, non_trainable, optimizer_state = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, images, labels)
        trainable, optimizer_state = optimizer.stateless_apply(optimizer_state, grads, trainable)
        return (trainable, non_trainable, optimizer_state), loss

    return jax.jit(train_step, donate_argnums=0)


class fast_initialization:  # noqa: N801 (used as a context manager, reads like `with` + verb)
    """Build a model with its initial weights computed by ONE jitted program instead of one per weight.

    Keras' JAX backend runs each variable's initializer eagerly, compiling a small XLA program per weight
    shape: 40-100 s for GoogLeNet or Inception v3 on a CPU, minutes of a lent GPU's time over a zoo. Inside
    this context variables start as host zeros (no compile) and are assigned their real initial values
    on exit. It patches a private Keras hook and does nothing if that hook is not there.
    """

    def __enter__(self):
        try:
            from keras.src.backend.jax.core import JaxVariable
        except ImportError:
            self.variable_class = None
            return self
        import numpy as np

        self.variable_class, self.original, self.pending = (
            JaxVariable,
            JaxVariable._initialize_with_initializer,
            [],
        )

        def defer(variable, initializer):
            self.pending.append((variable, initializer))
            variable._initialize(np.zeros(variable._shape, dtype=variable._dtype))

        JaxVariable._initialize_with_initializer = defer
        return self

    def __exit__(self, *exc_info):
        if self.variable_class is None:
            return
        self.variable_class._initialize_with_initializer = self.original
        if exc_info[0] is not None or not self.pending:
            return
        import jax

        shapes = [(variable.shape, variable.dtype) for variable, _ in self.pending]
        initializers = [initializer for _, initializer in self.pending]
        values = jax.jit(
            lambda: [
                init(shape, dtype=dtype) for init, (shape, dtype) in zip(initializers, shapes, strict=True)
            ]
        )()
        for (variable, _), value in zip(self.pending, values, strict=True):
            variable.assign(value)


def free_memory() -> None:
    """Drop the last model's graph and buffers before the next one is built."""
    import jax
    import keras

    keras.backend.clear_session()
    gc.collect()
    jax.clear_caches()


if __name__ == "__main__":
    sys.exit(main())
