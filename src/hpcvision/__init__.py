"""hpcvision: train image-recognition networks on batch-scheduled clusters with TensorFlow."""

__version__ = "0.1.0"
