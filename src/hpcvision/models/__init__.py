"""Network definitions (Keras 3 only, no TensorFlow import), registered by name."""
