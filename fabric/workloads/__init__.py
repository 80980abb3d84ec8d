"""Workloads that run on the emulated fabric: weight-sharing training.

``fabric.workloads.train(hosts=3, mode="pooled", steps=20)`` trains a numpy
MLP on N emulated hosts, one worker process each, either with private
replicas and a ZeroMQ ring all-reduce ("replicated") or with one copy of the
weights in pooled memory ("pooled"), and returns the measured result
(docs/workloads.md).  ``fabric run train`` and ``fabric report`` are the
command-line face (fabric/cli/workloads.py).
"""
from __future__ import annotations

from .config import MODES, TrainConfig
from .runner import train

__all__ = ["train", "TrainConfig", "MODES"]
