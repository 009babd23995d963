"""The random draws of the regularising options, made here once for the fused modules and for lstm_fused.reference,
so a seed gives both the same masks.

Order within one forward call: first every weight-drop mask (layer by layer, each layer's forward direction before
its reverse), then, just before each layer runs, that layer's zoneout masks (per direction: h's, then c's). An
option at 0 draws nothing, so it leaves the generator exactly as the option off does.
"""
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor


def zoneout_mask(shape, p: float, training: bool, device: torch.device, dtype: torch.dtype) -> Union[Tensor, float]:
    """Where each unit keeps its previous value: in training a 0/1 tensor of `shape` (1 with probability p), drawn
    as float32 uniforms from the generator of `device` whatever `dtype` is (so float32 and float64 runs draw the
    same mask); in eval p itself, the expectation. `shape` is the layer's output rows: [T, B, W] (time-major) for
    padded input, [N, W] (the packed data's rows) for a PackedSequence."""
    if not training:
        return p
    return (torch.rand(shape, device=device) < p).to(dtype)


def drop_weight(weight: Tensor, p: float) -> Tensor:
    """DropConnect on a recurrent matrix: F.dropout's mask and inverted scaling; gradients reach `weight` through
    the mask, and the parameter itself is not written."""
    return F.dropout(weight, p, training=True)
