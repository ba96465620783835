"""grokbasin: grokking and phase transitions through Singular Learning Theory.

Replica-batched training of small networks on algorithmic tasks, LLC estimation with SGLD over
every chain and checkpoint at once, and the closed-form theory to hold the estimates against.
"""

from grokbasin.config import (
    LLCConfig,
    ModelConfig,
    RunConfig,
    TaskConfig,
    TrainConfig,
    build_config,
)

__version__ = "0.1.0"

__all__ = [
    "LLCConfig",
    "ModelConfig",
    "RunConfig",
    "TaskConfig",
    "TrainConfig",
    "build_config",
    "__version__",
]
