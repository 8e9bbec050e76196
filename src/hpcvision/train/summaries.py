"""TensorBoard logs: a run's (chief only) `checkpoint_dir/logs/train` and `logs/eval`, and `write_scalars`.

`write_scalars` is the one way hpcvision writes scalars to a log: the trainer, `evaluate` and the
tutorials all use it. Images go through `tf.summary.image`; histograms use our own buckets
(`histogram_buckets`) with TensorBoard's histogram metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)


def write_scalars(writer, values: Mapping[str, float], step: int) -> None:
    """Write each of `values` as a TensorBoard scalar at `step` into `writer` (a tf.summary writer)."""
    import tensorflow as tf

    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.scalar(name, float(value), step=step)


class Summaries:
    """Scalars, histograms, images and the graph; every method is a no-op when `logdir` is None."""

    def __init__(self, logdir: str | Path | None):
        import tensorflow as tf

        self._tf = tf
        self.enabled = logdir is not None
        if self.enabled:
            self.train = tf.summary.create_file_writer(str(Path(logdir) / "train"))
            self.eval = tf.summary.create_file_writer(str(Path(logdir) / "eval"))

    def scalars(self, step: int, values: Mapping[str, float], split: str = "train") -> None:
        """Scalars at `step` in the train or eval log."""
        if self.enabled:
            write_scalars(self.train if split == "train" else self.eval, values, step)

    def weights(self, model, step: int) -> None:
        """Histograms of every weight and the first convolution's filters as one image."""
        if not self.enabled:
            return
        tf = self._tf
        with self.train.as_default(step=step):
            for variable in model.weights:
                tf.summary.write(variable.path, histogram_buckets(variable.numpy()), step=step,
                                 metadata=_histogram_metadata())
            grid = first_layer_filters(model)
            if grid is not None:
                tf.summary.image("filters/first_layer", tf.image.convert_image_dtype(grid[None], tf.uint8), step=step)

    def sample_inputs(self, images_uint8, boxes, names: list[str], step: int) -> None:
        """Training inputs with their bounding boxes drawn (boxes: [N, K, 4] ymin, xmin, ymax, xmax), each
        above its class name, as one image."""
        if not self.enabled or not len(names):
            return
        tf = self._tf
        drawn = tf.image.draw_bounding_boxes(
            tf.image.convert_image_dtype(images_uint8, tf.float32), tf.cast(boxes, tf.float32),
            colors=tf.constant([[1.0, 0.2, 0.2, 1.0]]),
        )
        grid = captioned_grid(tf.image.convert_image_dtype(drawn[:8], tf.uint8, saturate=True).numpy(), names[:8])
        with self.train.as_default(step=step):
            tf.summary.image("inputs/with_boxes", grid[None], step=step,
                             description="the first training records, whole, with their boxes and class names")

    def model_graph(self, model, step: int) -> None:
        """The model's layer graph (TensorBoard's Graphs tab, tag `keras`: the conceptual graph), as
        Keras' own TensorBoard callback writes it: the model's JSON under the `graph_keras_model` plugin."""
        if not self.enabled:
            return
        tf = self._tf
        metadata = tf.compat.v1.SummaryMetadata()
        metadata.plugin_data.plugin_name = "graph_keras_model"
        metadata.plugin_data.content = b"1"  # the plugin's format version
        with self.train.as_default(step=step):
            tf.summary.write("keras", model.to_json(), step=step, metadata=metadata)

    def trace_on(self) -> None:
        """Start recording the graph of the next traced function (the train step)."""
        if self.enabled:
            self._tf.summary.trace_on(graph=True, profiler=False)

    def trace_export(self, step: int) -> None:
        """Write the recorded graph to the train log (TensorBoard's Graphs tab)."""
        if self.enabled:
            with self.train.as_default(step=step):
                self._tf.summary.trace_export("train_step", step=step)

    def flush(self) -> None:
        """Push buffered events of both logs to disk."""
        if self.enabled:
            self.train.flush()
            self.eval.flush()


def captioned_grid(images, captions: list[str], tile: int = 128, columns: int = 4):
    """uint8 images [N, H, W, 3] scaled to `tile` pixels, each above its caption, in rows of `columns`:
    one uint8 [height, width, 3] array (TensorBoard shows a tag's images without captions)."""
    import numpy as np
    from PIL import Image, ImageDraw

    strip = 16  # caption height in pixels (PIL's default font is ~11 px)
    columns = max(1, min(columns, len(captions)))
    rows = -(-len(captions) // columns)
    canvas = Image.new("RGB", (columns * tile, rows * (tile + strip)), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (image, caption) in enumerate(zip(images, captions, strict=True)):
        row, column = divmod(index, columns)
        x, y = column * tile, row * (tile + strip)
        canvas.paste(Image.fromarray(np.asarray(image)).resize((tile, tile), Image.NEAREST), (x, y))
        draw.text((x + 3, y + tile + 2), caption[:24], fill="black")
    return np.asarray(canvas)


def first_layer_filters(model):
    """The first RGB convolution's kernels tiled into one [H, W, 3] float image in [0, 1], or None."""
    import numpy as np

    for variable in model.weights:
        shape = tuple(variable.shape)
        if len(shape) == 4 and shape[2] == 3:
            kernel = np.asarray(variable.numpy(), dtype=np.float32)  # kh, kw, 3, n
            kernel = (kernel - kernel.min()) / max(float(kernel.max() - kernel.min()), 1e-8)
            kh, kw, _, count = kernel.shape
            cols = int(np.ceil(np.sqrt(count)))
            rows = int(np.ceil(count / cols))
            grid = np.ones((rows * (kh + 1) + 1, cols * (kw + 1) + 1, 3), np.float32)
            for n in range(count):
                r, c = divmod(n, cols)
                grid[1 + r * (kh + 1): 1 + r * (kh + 1) + kh, 1 + c * (kw + 1): 1 + c * (kw + 1) + kw] = kernel[..., n]
            scale = max(1, 256 // max(grid.shape[:2]))
            return np.kron(grid, np.ones((scale, scale, 1), np.float32))
    return None


def _histogram_metadata():
    """The metadata TensorBoard's Histograms tab looks for on a [bins, 3] (left, right, count) tensor."""
    from tensorboard.plugins.histogram import metadata

    return metadata.create_summary_metadata(display_name=None, description=None)


def histogram_buckets(values, bins: int = 30):
    """TensorBoard's histogram record: float64 [bins, 3] of (left edge, right edge, count)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        return np.zeros((0, 3))
    low, high = float(values.min()), float(values.max())
    if low == high:
        low, high = low - 0.5, high + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    return np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
