"""Model registry and the architectures of the papers."""

from . import mlp, mobilenetv2, resnet_cifar  # noqa: F401  (registers the models)
from .registry import available_models, create_model, register_model

__all__ = ["available_models", "create_model", "register_model"]
