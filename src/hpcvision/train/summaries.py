"""TensorBoard logs of a run (chief only): `checkpoint_dir/logs/train` and `checkpoint_dir/logs/eval`.

tensorflow-cpu 2.21 no longer installs the tensorboard wheel, which is where `tf.summary.scalar`,
`image` and `histogram` live. We write the same event records with the core `tf.summary.write` and
the plugin metadata TensorBoard's scalars/images/histograms dashboards read.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


class Summaries:
    """Scalars, histograms, images and the graph; every method is a no-op when `logdir` is None."""

    def __init__(self, logdir: str | Path | None):
        import tensorflow as tf

        self._tf = tf
        self.enabled = logdir is not None
        if self.enabled:
            self.train = tf.summary.create_file_writer(str(Path(logdir) / "train"))
            self.eval = tf.summary.create_file_writer(str(Path(logdir) / "eval"))

    def scalars(self, step: int, values: dict[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        with (self.train if split == "train" else self.eval).as_default(step=step):
            for name, value in values.items():
                _write(name, self._tf.constant(float(value), self._tf.float32), step, "scalars")

    def weights(self, model, step: int) -> None:
        """Histograms of every weight and the first convolution's filters as one image."""
        if not self.enabled:
            return
        tf = self._tf
        with self.train.as_default(step=step):
            for variable in model.weights:
                _write(variable.path, histogram_buckets(variable.numpy()), step, "histograms")
            grid = first_layer_filters(model)
            if grid is not None:
                _write_images("filters/first_layer", tf.image.convert_image_dtype(grid[None], tf.uint8), step)

    def sample_inputs(self, images_uint8, boxes, step: int) -> None:
        """Training inputs with their bounding boxes drawn (boxes: [N, K, 4] ymin, xmin, ymax, xmax)."""
        if not self.enabled:
            return
        tf = self._tf
        drawn = tf.image.draw_bounding_boxes(
            tf.image.convert_image_dtype(images_uint8, tf.float32), tf.cast(boxes, tf.float32),
            colors=tf.constant([[1.0, 0.2, 0.2, 1.0]]),
        )
        with self.train.as_default(step=step):
            _write_images("inputs/with_boxes", tf.image.convert_image_dtype(drawn[:8], tf.uint8, saturate=True), step)

    def trace_on(self) -> None:
        if self.enabled:
            self._tf.summary.trace_on(graph=True, profiler=False)

    def trace_export(self, step: int) -> None:
        if self.enabled:
            with self.train.as_default(step=step):
                self._tf.summary.trace_export("train_step", step=step)

    def flush(self) -> None:
        if self.enabled:
            self.train.flush()
            self.eval.flush()


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


def _write(tag: str, tensor, step: int, plugin: str) -> None:
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    data_class = {"scalars": summary_pb2.DATA_CLASS_SCALAR, "images": summary_pb2.DATA_CLASS_BLOB_SEQUENCE,
                  "histograms": summary_pb2.DATA_CLASS_TENSOR}[plugin]
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin), data_class=data_class
    )
    tf.summary.write(tag, tensor, step=step, metadata=metadata)


def _write_images(tag: str, images_uint8, step: int) -> None:
    """TensorBoard's image record: [width, height, png, png, ...] as one string tensor."""
    import tensorflow as tf

    height, width = int(images_uint8.shape[1]), int(images_uint8.shape[2])
    pngs = [tf.io.encode_png(image) for image in tf.unstack(images_uint8)]
    _write(tag, tf.stack([tf.constant(str(width)), tf.constant(str(height)), *pngs]), step, "images")


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
