"""Data for the paper's real tasks: CIFAR-10 (JPEG tarballs) and word-level Penn Treebank.

Both read from the offline data folder, given as ``data_dir`` or by the environment variable
``PARAMCORRUPT_DATA`` (the folder that contains ``cifar10_jpg/`` and ``ptb_lm/``); a missing
folder or file raises ``FileNotFoundError``. Decoded CIFAR-10 tensors are cached in
``cache_dir``, ``$PARAMCORRUPT_CACHE`` or ``~/.cache/paramcorrupt``.
"""

from __future__ import annotations

from ._paths import CACHE_ENV, DATA_ENV, resolve_cache_dir, resolve_data_file
from .cifar10 import (
    CIFAR10,
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    AugmentedImages,
    cifar10_loaders,
    load_cifar10,
    seed_augmentation_worker,
)
from .ptb import (
    EOS,
    UNK,
    BPTTLoader,
    Corpus,
    Dictionary,
    PTBData,
    batchify,
    bptt_batches,
    ptb_loaders,
)

__all__ = [
    "CACHE_ENV",
    "CIFAR10",
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATA_ENV",
    "EOS",
    "UNK",
    "AugmentedImages",
    "BPTTLoader",
    "Corpus",
    "Dictionary",
    "PTBData",
    "batchify",
    "bptt_batches",
    "cifar10_loaders",
    "load_cifar10",
    "ptb_loaders",
    "resolve_cache_dir",
    "resolve_data_file",
    "seed_augmentation_worker",
]
