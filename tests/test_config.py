import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hpcvision.config import add_config_arguments, load_config, option, required, save_config
from hpcvision.errors import UserError


@dataclass
class Example:
    steps: int = 10
    rate: float = 0.1
    name: str = "resnet50"
    xla: bool = False
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    mode: str = field(default="a", metadata={"choices": ["a", "b"]})


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, Example)
    return parser.parse_args(argv)


def test_defaults_then_yaml_then_flags(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("steps: 50\nrate: 1\nname: vgg16\n")
    args = parse(["--config", str(yaml_file), "--name", "alexnet", "--xla", "--sizes", "3", "4"])
    cfg = load_config(Example, args, args.config)
    assert cfg == Example(steps=50, rate=1.0, name="alexnet", xla=True, sizes=[3, 4])
    assert isinstance(cfg.rate, float)


def test_yaml_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(UserError, match="bad.yaml: unknown option 'stepz'"):
        load_config(Example, None, bad)
    bad.write_text("steps: many\n")
    with pytest.raises(UserError, match="'steps' must be int"):
        load_config(Example, None, bad)
    bad.write_text("mode: c\n")
    with pytest.raises(UserError, match="must be one of a, b"):
        load_config(Example, None, bad)


def test_save_round_trip(tmp_path):
    cfg = Example(steps=7, sizes=[5])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(Example, None, tmp_path / "saved.yaml") == cfg


@dataclass
class Paths:
    source: Path = field(metadata={"positional": True, "metavar": "SRC", "help": "where from"})
    out: Path = field(metadata={"help": "where to", "metavar": "DIR"})
    file_list: Path | None = field(default=None, metadata={"flag": "--list", "help": "which (default: all)"})
    workers: int = field(default=1, metadata={"help": "processes"})


def test_required_positional_renamed_and_path_options():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Paths)
    cfg = load_config(Paths, parser.parse_args(["a", "--out", "b", "--list", "c.txt"]))
    assert cfg == Paths(source=Path("a"), out=Path("b"), file_list=Path("c.txt"))
    assert load_config(Paths, parser.parse_args(["a", "--out", "b"])).file_list is None
    with pytest.raises(SystemExit):  # --out has no default: it is required
        parser.parse_args(["a"])
    with pytest.raises(SystemExit):  # the flag is --list, not --file-list
        parser.parse_args(["a", "--out", "b", "--file-list", "c"])
    usage = parser.format_help()
    assert "SRC" in usage and "--out DIR" in usage and "--list FILE_LIST" in usage
    assert "which (default: all)" in usage and "(default: None)" not in usage
    assert "processes (default: 1)" in usage and "where to (required)" in usage


@dataclass(kw_only=True)
class Alternatives:
    rest: tuple[str, ...] = required("the rest", positional=True, nargs=argparse.REMAINDER)
    checkpoint: str | None = option(None, "from a checkpoint", one_of="source")
    export: str | None = option(None, "from an export", one_of="source", flag="--model-path")
    top: int = option(5, "how many")


def test_one_of_is_a_required_exclusive_group_and_remainder_passes_through(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Alternatives)
    cfg = load_config(Alternatives, parser.parse_args(["--checkpoint", "c", "--", "--top", "x"]))
    assert cfg == Alternatives(checkpoint="c", rest=("--", "--top", "x"))
    assert load_config(Alternatives, parser.parse_args(["--model-path", "m"])) == Alternatives(export="m", rest=())
    for argv in ([], ["--checkpoint", "c", "--model-path", "m"]):  # neither, both
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    usage = parser.format_help()
    assert "(--checkpoint CHECKPOINT | --model-path EXPORT)" in usage
    assert "from a checkpoint (required, or --model-path)" in usage and "how many (default: 5)" in usage
    assert "from an export (required, or --checkpoint)" in usage and "the rest\n" in usage
    (tmp_path / "both.yaml").write_text("checkpoint: c\nexport: m\nrest: []\n")
    with pytest.raises(UserError, match="^give exactly one of --checkpoint or --model-path$"):
        load_config(Alternatives, None, tmp_path / "both.yaml")


@dataclass
class Crop:
    kind: str = field(default="a", metadata={"choices": ["a", "b"], "help": "crop kind"})
    size: int = 8
    span: tuple[float, float] = (0.1, 1.0)
    fraction: float | None = None


@dataclass
class WithSection:
    steps: int = 10
    crop: Crop = field(default_factory=Crop, metadata={"help": "how to crop"})
    xla: bool = False


def parse_sectioned(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, WithSection)
    return parser.parse_args(argv)


def test_a_section_is_a_yaml_mapping_with_flat_flags(tmp_path):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("steps: 5\ncrop:\n  kind: b\n  size: 3\n  span: [0.2, 1]\n")
    assert load_config(WithSection, None, yaml_file) == WithSection(steps=5, crop=Crop(kind="b", size=3, span=(0.2, 1.0)))
    args = parse_sectioned(["--config", str(yaml_file), "--size", "4", "--fraction", "0.5"])
    cfg = load_config(WithSection, args, args.config)
    assert cfg.crop == Crop(kind="b", size=4, span=(0.2, 1.0), fraction=0.5) and cfg.steps == 5
    assert load_config(WithSection, parse_sectioned(["--span", "0.3", "0.4"])).crop.span == (0.3, 0.4)
    assert load_config(WithSection, parse_sectioned([])) == WithSection()
    with pytest.raises(SystemExit):
        parse_sectioned(["--crop.size", "4"])  # flags stay flat


def test_section_errors_name_the_section(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("crop:\n  sise: 3\n", r"bad.yaml: unknown option 'crop.sise' \(known in crop: fraction, kind, size, span\)"),
        ("crop:\n  size: big\n", "bad.yaml: 'crop.size' must be int, got 'big'"),
        ("crop:\n  size: null\n", "bad.yaml: 'crop.size' must be int, got null"),
        ("crop:\n  span: 0.5\n", "bad.yaml: 'crop.span' must be a list"),
        ("crop: [1, 2]\n", "bad.yaml: 'crop' must be a mapping of option: value"),
        ("crop:\n  kind: c\n", "'kind' must be one of a, b"),
        ("size: 3\ncrop:\n  size: 4\n", "bad.yaml: 'size' is given twice, at top level and in 'crop:'"),
        ("nope: 1\n", r"unknown option 'nope' \(known: crop, steps, xla\)"),
    ]:
        bad.write_text(text)
        with pytest.raises(UserError, match=message):
            load_config(WithSection, None, bad)


def test_a_sections_options_are_also_read_flat(tmp_path):
    """As run.yaml files written before the section existed have them; there null meant the default."""
    old = tmp_path / "old.yaml"
    old.write_text("steps: 3\nkind: b\nsize: null\nspan: [0.5, 0.6]\nfraction: null\n")
    assert load_config(WithSection, None, old) == WithSection(steps=3, crop=Crop(kind="b", span=(0.5, 0.6)))
    args = parse_sectioned(["--config", str(old), "--kind", "a"])
    assert load_config(WithSection, args, args.config).crop == Crop(kind="a", span=(0.5, 0.6))


def test_sections_save_as_mappings_and_round_trip(tmp_path):
    cfg = WithSection(steps=2, crop=Crop(kind="b", span=(0.25, 0.5), fraction=0.75))
    save_config(cfg, tmp_path / "saved.yaml")
    text = (tmp_path / "saved.yaml").read_text()
    assert "crop:\n  kind: b\n  size: 8\n  span:\n  - 0.25\n  - 0.5\n  fraction: 0.75\nxla: false\n" in text
    assert load_config(WithSection, None, tmp_path / "saved.yaml") == cfg


# run.yaml as hpcvision wrote it before preprocessing options had their `input:` section.
OLD_RUN_YAML = """\
data: rec
train_name: train
val_name: validation
model: small
checkpoint_dir: run
epochs: 1.0
steps: null
batch_size: 32
image_size: 28
strategy: auto
num_ps: 0
optimizer: sgd
momentum: 0.9
learning_rate: 0.1
warmup_epochs: 0.0
schedule: cosine
step_epochs:
- 30.0
- 60.0
- 80.0
label_smoothing: 0.1
weight_decay: 0.0001
aux_loss_weight: 0.3
mixed_precision: 'off'
augment: pad_crop
normalize: unit
flip: null
pad: 2
area_range: null
aspect_ratio_range: null
min_object_covered: null
min_crop_size: null
central_fraction: null
xla: false
seed: 1
synthetic: false
num_classes: null
examples_per_epoch: null
checkpoint_every_steps: 1000
checkpoint_every_minutes: 30.0
keep_checkpoints: 5
log_every: 50
histogram_every: 1000
eval_every_epochs: 1.0
eval: true
deadline: null
deadline_margin_s: 300.0
incomplete_exit_code: 0
collective_timeout_s: 600.0
"""


def test_train_config_reads_an_old_flat_run_yaml(tmp_path):
    from hpcvision.data.input_config import InputConfig
    from hpcvision.train.checkpoint import load_run_config
    from hpcvision.train.config import TrainConfig

    (tmp_path / "run.yaml").write_text(OLD_RUN_YAML)
    cfg = load_run_config(tmp_path)
    assert cfg.input == InputConfig(augment="pad_crop", normalize="unit", pad=2)
    assert (cfg.model, cfg.image_size, cfg.seed) == ("small", 28, 1)
    save_config(cfg, tmp_path / "new.yaml")  # a resumed run writes the new shape; it reads back the same
    assert "\ninput:\n  augment: pad_crop\n  normalize: unit\n  flip: true\n  pad: 2\n" in (tmp_path / "new.yaml").read_text()
    assert load_config(TrainConfig, None, tmp_path / "new.yaml") == cfg


def test_train_flags_fill_the_input_section(tmp_path):
    from hpcvision.data.input_config import InputConfig
    from hpcvision.train.config import TrainConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, TrainConfig)
    args = parser.parse_args([
        "--augment", "none", "--normalize", "unit", "--no-flip", "--pad", "3", "--area-range", "0.2", "0.9",
        "--aspect-ratio-range", "0.5", "2", "--min-object-covered", "0.4", "--min-crop-size", "6",
        "--central-fraction", "0.9", "--model", "small",
    ])
    cfg = load_config(TrainConfig, args, None)
    assert cfg.input == InputConfig(augment="none", normalize="unit", flip=False, pad=3, area_range=(0.2, 0.9),
                                    aspect_ratio_range=(0.5, 2.0), min_object_covered=0.4, min_crop_size=6,
                                    central_fraction=0.9)
    assert cfg.model == "small" and TrainConfig().input == InputConfig()


def test_the_command_line_parser_imports_no_numpy_pillow_or_tensorflow():
    """Every stage declares its options in a dataclass module free of heavy imports: `--help` stays fast."""
    import subprocess
    import sys

    code = ("import sys; from hpcvision.cli import build_parser; build_parser(); "
            "heavy = {'numpy', 'PIL', 'tensorflow'} & set(sys.modules); assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_demo_config_loads():
    from pathlib import Path

    from hpcvision.train.config import TrainConfig

    demo = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    cfg = load_config(TrainConfig, None, demo)
    assert cfg.input.augment == "none" and cfg.input.eval_central_fraction() == 1.0
    assert (cfg.model, cfg.image_size, cfg.seed) == ("small", 28, 1)


@dataclass(frozen=True)
class Job:
    queue: str | None = option(None, "where (default: the site's)", aliases=("--partition",))
    setup: tuple[str, ...] = option((), "a shell line; repeatable (default: none)", repeat=True, metavar="LINE")


def test_alias_names_the_same_option_and_repeat_appends_one_value_per_use():
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Job)
    cfg = load_config(Job, parser.parse_args(["--partition", "gpu", "--setup", "a b", "--setup=-c"]))
    assert cfg == Job(queue="gpu", setup=("a b", "-c"))
    assert load_config(Job, parser.parse_args(["--queue", "q"])) == Job(queue="q")
    assert "--queue QUEUE, --partition QUEUE" in parser.format_help() and "--setup LINE" in parser.format_help()


# Item 8 of issue 9: a bad number ends the command in one line, exit 2, before any work starts.
BAD_NUMBERS = [
    (["train", "--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["train", "--batch-size", "-4"], "--batch-size -4: must be >= 1"),
    (["train", "--log-every", "0"], "--log-every 0: must be >= 1"),
    (["train", "--keep-checkpoints", "0"], "--keep-checkpoints 0: must be >= 1"),
    (["train", "--steps", "-5"], "--steps -5: must be >= 0"),
    (["train", "--learning-rate", "-0.1"], "--learning-rate -0.1: must be > 0"),
    (["train", "--central-fraction", "1.5"], "--central-fraction 1.5: must be > 0 and <= 1"),
    (["train", "--step-epochs", "30", "-1"], "--step-epochs 30 -1: must be >= 0"),
    (["launch", "--workers", "0"], "--workers 0: must be >= 1"),
    (["data", "build", "--images", "i", "--list", "l", "--synsets", "s", "--out", "o", "--shards", "0"],
     "--shards 0: must be >= 1"),
    (["job", "slurm", "train", "--nodes", "0"], "--nodes 0: must be >= 1"),
]


@pytest.mark.parametrize("argv, message", BAD_NUMBERS, ids=[" ".join(a[-2:]) for a, _ in BAD_NUMBERS])
def test_a_bad_number_is_one_line_and_exit_2_before_the_command_runs(run_cli, monkeypatch, argv, message):
    import hpcvision.cluster.launch
    import hpcvision.data.build
    import hpcvision.train.loop

    def never(*_args, **_kwargs):
        raise AssertionError("the command ran with a bad number")

    for module, name in ((hpcvision.train.loop, "train"), (hpcvision.cluster.launch, "launch_local"),
                         (hpcvision.data.build, "build")):
        monkeypatch.setattr(module, name, never)
    code, _, err = run_cli(*argv)
    assert (code, err) == (2, f"hpcvision: error: {message}\n")


def test_zero_keeps_its_meaning_where_an_option_gives_it_one():
    from hpcvision.cli import build_parser
    from hpcvision.train.config import TrainConfig

    zeros = ["--steps", "0", "--checkpoint-every-steps", "0", "--checkpoint-every-minutes", "0",
             "--histogram-every", "0", "--eval-every-epochs", "0", "--warmup-epochs", "0", "--label-smoothing", "0",
             "--weight-decay", "0", "--pad", "0", "--seed", "0"]
    cfg = load_config(TrainConfig, build_parser().parse_args(["train", *zeros]))
    assert (cfg.steps, cfg.checkpoint_every_steps, cfg.checkpoint_every_minutes, cfg.histogram_every) == (0, 0, 0, 0)
    assert (cfg.eval_every_epochs, cfg.input.pad, cfg.seed) == (0, 0, 0)


def test_a_bad_number_in_yaml_names_the_file_and_key(tmp_path):
    from hpcvision.train.config import TrainConfig

    bad = tmp_path / "run.yaml"
    for text, message in (("batch_size: 0\n", "'batch_size' must be >= 1, got 0"),
                          ("input:\n  central_fraction: 0\n", "'input.central_fraction' must be > 0 and <= 1, got 0"),
                          ("min_crop_size: 0\n", "'min_crop_size' must be >= 1, got 0"),  # flat, as old run.yaml
                          ("step_epochs: [30, -1]\n", "'step_epochs' must be >= 0, got [30, -1]")):
        bad.write_text(text)
        with pytest.raises(UserError) as raised:
            load_config(TrainConfig, None, bad)
        assert str(raised.value) == f"{bad}: {message}"


def command_configs():
    """Every dataclass of a command's options: those of each `*config` module, and the tutorial command's."""
    import dataclasses
    import importlib

    import hpcvision

    root = Path(hpcvision.__file__).parent  # files, not pkgutil: importing every package would load TensorFlow
    names = [".".join(("hpcvision", *path.relative_to(root).with_suffix("").parts)) for path in root.rglob("*config.py")]
    modules = [importlib.import_module(name) for name in [*names, "hpcvision.tutorials.commands"]]
    return sorted({obj for module in modules for obj in vars(module).values()
                   if dataclasses.is_dataclass(obj) and isinstance(obj, type) and obj.__module__ == module.__name__},
                  key=lambda cls: cls.__qualname__)


def test_every_numeric_option_declares_its_bounds_and_its_default_keeps_them():
    """A new option cannot forget its bounds: every int/float field has them (or `choices`)."""
    import dataclasses
    import typing

    from hpcvision.config import BOUNDS, _flag_type, out_of_bounds

    configs = command_configs()
    assert {"TrainConfig", "LaunchConfig", "BuildConfig", "InputConfig", "EvaluateConfig", "JobConfig"} <= {
        cls.__name__ for cls in configs}
    unbounded = []
    for cls in configs:
        hints = typing.get_type_hints(cls)
        for option_field in dataclasses.fields(cls):
            if _flag_type(hints[option_field.name])[0] not in (int, float):
                continue
            if not set(BOUNDS) & set(option_field.metadata) and "choices" not in option_field.metadata:
                unbounded.append(f"{cls.__name__}.{option_field.name}")
            default = option_field.default_factory() if option_field.default_factory is not dataclasses.MISSING else option_field.default
            assert out_of_bounds(default, option_field.metadata) is None, (cls.__name__, option_field.name)
    assert not unbounded, unbounded


def test_every_numeric_tutorial_option_is_bounded():
    import importlib

    from hpcvision.tutorials.commands import TUTORIALS

    unbounded = []
    for module in TUTORIALS.values():
        parser = importlib.import_module(f"hpcvision.tutorials.{module}").build_parser()
        for action in parser._actions:
            numeric = isinstance(action.default, int | float) and not isinstance(action.default, bool)
            if (numeric or action.type in (int, float)) and not hasattr(action.type, "bounds"):
                unbounded.append(f"{module} {action.option_strings[0]}")
    assert not unbounded, unbounded
    from hpcvision.tutorials.cnn import build_parser

    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["--epochs", "0"])
    assert raised.value.code == 2
    assert build_parser().parse_args(["--epochs", "3"]).epochs == 3
