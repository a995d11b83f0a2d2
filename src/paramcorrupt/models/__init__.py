"""Models for the paper's real tasks: a CIFAR ResNet (ResNet-34, ResNet-20) and an LSTM LM."""

from __future__ import annotations

from .lstm_lm import Hidden, LSTMLanguageModel, detach_hidden, locked_dropout
from .resnet import BasicBlock, CifarResNet, resnet20_cifar, resnet34_cifar

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "Hidden",
    "LSTMLanguageModel",
    "detach_hidden",
    "locked_dropout",
    "resnet20_cifar",
    "resnet34_cifar",
]
