"""Data sets that live on the device as tensors; minibatches are index tensors."""

from grokbasin.tasks.modular import ModularTask, make_modular_task

__all__ = ["ModularTask", "make_modular_task"]
