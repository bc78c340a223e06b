"""The data-set protocol (data sets themselves come from plugins through `latentbridge_register_datasets`)."""

from latentbridge.data.base import SPLITS, Dataset, ItemDataset, NoOptions, check_items, epoch_indices

__all__ = ["SPLITS", "Dataset", "ItemDataset", "NoOptions", "check_items", "epoch_indices"]
