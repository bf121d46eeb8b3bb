"""Built-in datasets (generated or shipped with scikit-learn, never downloaded) and .npz files."""

from compressor.data.datasets import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]
