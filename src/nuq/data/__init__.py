"""Datasets: Fashion-MNIST (default), CIFAR-10/100 as tensors with a fast batched loader;
ImageNet-style class folders with a multi-worker loader."""

from .fashion_mnist import fashion_mnist
from .image_folder import FolderDataset, FolderLoader, image_folder
from .loaders import make_loader
from .registry import available_datasets, load_dataset
from .tensor_data import TensorDataset, TensorLoader

__all__ = ["FolderDataset", "FolderLoader", "TensorDataset", "TensorLoader", "available_datasets", "fashion_mnist",
           "image_folder", "load_dataset", "make_loader"]
