"""Convolutions: a rolling average in 1-D, then image kernels applied with tf.nn.conv2d.

Lesson 4 of the course. The convolution of f with a kernel g is (f * g)(t) = integral f(s) g(t - s) ds;
with g a box of width w and height 1/w it is the rolling average. On images the kernel is a small
2-D array: blur, sharpen, find edges (see setosa.io/ev/image-kernels). We apply the classic kernels
to a photograph from scikit-image (they ship with it, no download) using `tf.nn.conv2d`, the same
operation a convolutional layer runs, and check every result against SciPy.

One subtlety: `tf.nn.conv2d` computes a *cross-correlation* (it does not flip the kernel). For the
symmetric kernels that makes no difference; for Sobel and emboss we flip the kernel first so the
result is the true convolution of the slides.

Run:
    hpcvision tutorial convolution --out /tmp/convolution [--image camera|astronaut|coffee|chelsea]

Writes rolling_average.png, kernels.png and results.json (max difference to NumPy/SciPy per kernel).
"""

from __future__ import annotations

import numpy as np

from hpcvision.config import bounded
from hpcvision.errors import UserError
from hpcvision.tutorials._common import output_dir, parser_for, pyplot, run_script, save_figure, write_results

"""
## 1-D: the rolling average is a convolution
"""


def rolling_average_tf(signal: np.ndarray, width: int) -> np.ndarray:
    """Convolve `signal` with a box of `width` samples and height 1/width using tf.nn.conv1d ('SAME')."""
    import tensorflow as tf

    box = np.full((width, 1, 1), 1.0 / width, dtype=np.float32)  # (width, in channels, out channels)
    x = tf.constant(signal.astype(np.float32)[None, :, None])  # (batch, length, channels)
    return tf.nn.conv1d(x, box, stride=1, padding="SAME").numpy()[0, :, 0]


"""
## Image kernels

Each is a small array of weights; the output pixel is the weighted sum of the input pixels under it.
"""


def gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """A normalised size x size Gaussian."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


KERNELS = {
    "box blur": np.full((3, 3), 1.0 / 9.0),
    "gaussian blur": gaussian_kernel(5, 1.0),
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]], dtype=float),
    "sobel x": np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=float),
    "sobel y": np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=float),
    "outline": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], dtype=float),
    "emboss": np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=float),
}

PHOTOS = ("camera", "astronaut", "coffee", "chelsea")  # shipped inside scikit-image's wheel


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as float32 grayscale in [0, 1]."""
    if name not in PHOTOS:
        raise UserError(f"--image {name}: not one of the offline sample photos ({', '.join(PHOTOS)})")
    from skimage import color, data, util

    image = getattr(data, name)()
    if image.ndim == 3:
        image = color.rgb2gray(image)
    return util.img_as_float32(image)


def filter_bank(kernels: dict[str, np.ndarray]) -> np.ndarray:
    """Stack the kernels, flipped and zero-padded to one size, as conv2d filters (h, w, 1, count).

    Flipping turns conv2d's cross-correlation into convolution; centred zero padding to an odd size
    leaves each kernel's result unchanged, so one conv2d call applies them all.
    """
    size = max(k.shape[0] for k in kernels.values())
    bank = np.zeros((size, size, 1, len(kernels)), dtype=np.float32)
    for i, kernel in enumerate(kernels.values()):
        pad = (size - kernel.shape[0]) // 2
        bank[pad : pad + kernel.shape[0], pad : pad + kernel.shape[1], 0, i] = kernel[::-1, ::-1]
    return bank


def convolve_tf(image: np.ndarray, kernels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Convolve a grayscale image with every kernel in one tf.nn.conv2d call (zero padding, 'SAME')."""
    import tensorflow as tf

    batch = tf.constant(image[None, :, :, None])  # NHWC: one image, one channel
    outputs = tf.nn.conv2d(batch, filter_bank(kernels), strides=1, padding="SAME").numpy()[0]
    return {name: outputs[:, :, i] for i, name in enumerate(kernels)}


def convolve_scipy(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """The reference: scipy.signal.convolve2d with the same zero padding, in float64."""
    from scipy import signal

    return signal.convolve2d(image.astype(np.float64), kernel, mode="same", boundary="fill", fillvalue=0.0)


def main(out_dir=None, *, image: str = "camera", width: int = 15, seed: int = 0) -> dict:
    """Run the lesson; write rolling_average.png, kernels.png and results.json; return the results."""
    if width < 1 or width % 2 == 0:  # an even box has no centre sample, so 'same' output would shift
        raise UserError(f"--width {width}: the rolling-average width must be a positive odd number")
    out = output_dir(out_dir, "convolution")
    plt = pyplot()

    rng = np.random.default_rng(seed)
    t = np.linspace(0, 4 * np.pi, 400)
    noisy = np.sin(t) + rng.normal(0.0, 0.3, t.shape)
    smooth_tf = rolling_average_tf(noisy, width)
    smooth_np = np.convolve(noisy, np.full(width, 1.0 / width), mode="same")
    rolling_diff = float(np.max(np.abs(smooth_tf - smooth_np)))
    print(f"rolling average (width {width}): tf.nn.conv1d vs numpy.convolve max diff {rolling_diff:.2e}")
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.plot(t, noisy, ".", ms=3, alpha=0.5, label="noisy sin(t)")
    ax.plot(t, smooth_tf, lw=2, label=f"convolved with a box of width {width} (tf.nn.conv1d)")
    ax.set(xlabel="t", title="the rolling average is a convolution")
    ax.legend()
    save_figure(fig, out / "rolling_average.png")

    photo = load_photo(image)
    filtered = convolve_tf(photo, KERNELS)
    differences = {}
    for name, kernel in KERNELS.items():
        differences[name] = float(np.max(np.abs(filtered[name] - convolve_scipy(photo, kernel))))
        print(f"{name:<14} {kernel.shape[0]}x{kernel.shape[1]}  tf.nn.conv2d vs scipy.signal.convolve2d "
              f"max diff {differences[name]:.2e}")

    fig, axes = plt.subplots(2, 4, figsize=(16, 8.5))
    panels = [("original", photo)] + list(filtered.items())
    for ax, (name, picture) in zip(axes.ravel(), panels, strict=True):
        if name in ("original", "box blur", "gaussian blur", "sharpen"):
            ax.imshow(np.clip(picture, 0, 1), cmap="gray", vmin=0, vmax=1)
        else:  # edge kernels have negative outputs: show them on a symmetric scale
            limit = np.percentile(np.abs(picture), 99)
            ax.imshow(picture, cmap="gray", vmin=-limit, vmax=limit)
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(f"skimage.data.{image}() convolved with tf.nn.conv2d")
    save_figure(fig, out / "kernels.png")

    results = {
        "image": image,
        "image_shape": list(photo.shape),
        "rolling_width": width,
        "rolling_max_abs_diff": rolling_diff,
        "kernels": {name: k.tolist() for name, k in KERNELS.items()},
        "kernel_max_abs_diff": differences,
    }
    write_results(out, results)
    return results


def build_parser():
    """Command line of this tutorial."""
    parser = parser_for(__doc__, "convolution")
    parser.add_argument("--image", default="camera", choices=PHOTOS, help="scikit-image sample photo")
    parser.add_argument("--width", type=bounded(int, minimum=1), default=15, help="width of the 1-D rolling average")
    parser.add_argument("--seed", type=bounded(int, minimum=0), default=0)
    return parser


if __name__ == "__main__":
    raise SystemExit(run_script(main, build_parser()))
