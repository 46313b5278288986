"""Datasets: Fashion-MNIST (default) as tensors, with a fast batched loader."""

from .fashion_mnist import fashion_mnist
from .registry import available_datasets, load_dataset
from .tensor_data import TensorDataset, TensorLoader

__all__ = ["TensorDataset", "TensorLoader", "available_datasets", "fashion_mnist", "load_dataset"]
