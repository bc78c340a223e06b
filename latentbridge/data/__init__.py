"""The data-set protocol (data sets themselves come from plugins through `latentbridge_register_datasets`)."""

from latentbridge.data.base import SPLITS, Dataset, ItemDataset, NoOptions, check_items, epoch_indices
from latentbridge.data.document import DocItem, as_document

__all__ = ["SPLITS", "DocItem", "Dataset", "ItemDataset", "NoOptions", "as_document", "check_items", "epoch_indices"]
