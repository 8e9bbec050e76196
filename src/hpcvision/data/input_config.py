"""`InputConfig`: how stored images become model inputs (training crop, flip, normalisation, evaluation crop).

Declared once: `hpcvision train` derives its `--augment`, `--normalize`, ... flags from these fields,
and a run.yaml keeps them in its `input:` section. The ops live in `hpcvision.data.presets`; this module
imports no TensorFlow, so parsing the command line stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcvision.config import check_choices, option
from hpcvision.errors import UserError

AUGMENTATIONS = ("inception", "pad_crop", "none")
NORMALIZATIONS = ("imagenet", "unit")
INCEPTION_EVAL_FRACTION = 0.875  # the central crop that matches inception training (Szegedy et al.)


@dataclass
class InputConfig:
    """Preprocessing options; `pad` and `central_fraction` left at None are derived (see their methods)."""

    augment: str = option("inception", "training crops: inception (boxes), pad_crop (small images), none",
                          choices=AUGMENTATIONS)
    normalize: str = option("imagenet", "pixel scaling: imagenet (mean/std) or unit ([0, 1])",
                            choices=NORMALIZATIONS)
    flip: bool = option(True, "random horizontal flips in training (not with augment none)")
    pad: int | None = option(None, "pad_crop padding in pixels (default: image_size // 8, at least 1)",
                             minimum=0)
    area_range: tuple[float, float] = option((0.08, 1.0), "inception crop area range, low high",
                                             above=0, maximum=1)
    aspect_ratio_range: tuple[float, float] = option((3 / 4, 4 / 3), "inception crop aspect range, low high",
                                                     above=0)
    min_object_covered: float = option(0.1, "inception crop: fraction of a box kept", minimum=0, maximum=1)
    min_crop_size: int = option(8, "smallest crop side in pixels", minimum=1)
    central_fraction: float | None = option(
        None, "evaluation central crop (default: 0.875 after inception training, else 1.0)",
        above=0, maximum=1)
    shuffle_buffer: int = option(10_000, "training records shuffled at a time", minimum=1)
    eval_image_size: int | None = option(None, "evaluation and serving resolution (default: the training "
                                         "--image-size; e.g. train at 176, evaluate at 224)", minimum=1)
    color_distortion: bool = option(False, "inception colour distortion in training: brightness, saturation, hue "
                                    "and contrast in one of two random orders (the course's preprocessing)")
    # Per batch of one replica, after the per-image preset (hpcvision.data.batch_augment: Keras' own layers).
    randaugment_ops: int = option(0, "RandAugment (Keras'): operations per image (0 = off; 2 is the paper's)",
                                  minimum=0, maximum=14)
    randaugment_magnitude: float = option(0.5, "RandAugment strength, 0-1 (Keras' factor; 0.5 ~ the paper's 9-10 "
                                          "of 30)", minimum=0, maximum=1)
    random_erasing: float = option(0.0, "probability that an image gets a random rectangle erased (Keras' "
                                   "RandomErasing; 0 = off, timm uses 0.25)", minimum=0, maximum=1)
    mixup_alpha: float = option(0.0, "MixUp (Keras'): image pairs and their labels mixed with a Beta(alpha, alpha) "
                                "weight (0 = off; 0.2 typical)", minimum=0)
    cutmix_alpha: float = option(0.0, "CutMix (Keras'): a patch of another image pasted, labels mixed by area; "
                                 "Keras draws Beta(a, a) with a uniform in 0..this (0 = off, at most 1)",
                                 minimum=0, maximum=1)
    mix_switch_prob: float = option(0.5, "with both MixUp and CutMix on: the probability that a batch gets CutMix "
                                    "rather than MixUp", minimum=0, maximum=1)

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("area_range", "aspect_ratio_range"):
            value = tuple(getattr(self, name))
            if len(value) != 2:
                raise UserError(f"option '{name}' takes two numbers (low high), got {list(value)}")
            setattr(self, name, value)

    def mixes_labels(self) -> bool:
        """True when MixUp or CutMix is on: training labels become class distributions [B, C]."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def augments_batches(self) -> bool:
        """True when a batch augmentation (RandAugment, random erasing, MixUp, CutMix) is on."""
        return self.randaugment_ops > 0 or self.random_erasing > 0 or self.mixes_labels()

    def eval_size(self, image_size: int | None) -> int | None:
        """The resolution evaluation and serving use: `eval_image_size`, else the training `image_size`."""
        return self.eval_image_size or image_size

    def pad_pixels(self, image_size: int) -> int:
        """The pad_crop padding: `pad`, else an eighth of the image side (at least 1 px)."""
        return self.pad if self.pad is not None else max(1, image_size // 8)

    def eval_central_fraction(self) -> float:
        """The evaluation crop: `central_fraction`, else 0.875 after inception training, else the whole image."""
        if self.central_fraction is not None:
            return float(self.central_fraction)
        return INCEPTION_EVAL_FRACTION if self.augment == "inception" else 1.0
