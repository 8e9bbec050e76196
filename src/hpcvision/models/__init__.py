"""Network definitions (Keras 3 only, no TensorFlow import), registered by name.

    from hpcvision.models import build_model
    model = build_model("resnet50", num_classes=1000)
"""

from hpcvision.models.registry import ModelSpec, build_model, model_names, model_spec, register_model

__all__ = ["ModelSpec", "build_model", "model_names", "model_spec", "register_model"]
