"""Types shared across grokbasin."""

from __future__ import annotations

import torch

Params = dict[str, torch.Tensor]  # parameter name -> tensor with a leading replica axis R
