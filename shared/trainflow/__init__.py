"""trainflow: reproducible training and evaluation pipelines for PyTorch on Kubeflow."""

__version__ = "0.1.0"
