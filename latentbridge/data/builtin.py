"""The built-in plugin of data sets: the generic ones over your own files, registered through the public hook."""

from latentbridge.data.generic import GENERIC_DATASETS
from latentbridge.hookspecs import hookimpl


@hookimpl
def latentbridge_register_datasets(register):
    for cls in GENERIC_DATASETS:
        register(cls)
