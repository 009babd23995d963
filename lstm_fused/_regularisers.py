"""The random draws of the regularising options, made here once for the fused modules and for lstm_fused.reference,
so a seed gives both the same masks.

Order within one forward call: first every weight-drop mask (layer by layer, each layer's forward direction before
its reverse), then, just before each layer runs, that layer's zoneout masks: h's for all its directions in one draw
([D, rows, width]), then c's. An option at 0 draws nothing, so it leaves the generator exactly as the option off
does.
"""
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def zoneout_mask(shape, p: float, training: bool, device: torch.device, dtype: torch.dtype) -> Union[Tensor, float]:
    """Where each unit keeps its previous value: in training a 0/1 tensor of `shape` (1 with probability p), drawn
    as float32 uniforms from the generator of `device` whatever `dtype` is (so float32 and float64 runs draw the
    same mask); in eval p itself, the expectation. `shape` is [D, ...the layer's output rows..., W]: [D, T, B, W]
    (time-major) for padded input, [D, N, W] (the packed data's rows) for a PackedSequence, [1, B, W] for a cell."""
    if not training:
        return p
    return (torch.rand(shape, device=device) < p).to(dtype)


def zoneout_op_mask(directions: int, rows: List[int], width: int, p: float, training: bool, device: torch.device,
                    dtype: torch.dtype) -> Tensor:
    """A layer op's zoneout argument [D, R, W] (R = the product of `rows`: [T, B] padded, [N] packed, [B] a cell)
    for probability p: in training zoneout_mask's draw over [D, *rows, W]; in eval p, expanded (no memory per row).
    dtype: the op's accumulate dtype (float64 for float64, else float32). (TorchScript compiles it for the twins.)"""
    n = 1
    for r in rows:
        n *= r
    if training:
        shape = [directions] + rows + [width]
        return (torch.rand(shape, device=device) < p).to(dtype).view(directions, n, width)
    return torch.full([1, 1, 1], p, dtype=dtype, device=device).expand([directions, n, width])


def zoneout_op_masks(ps: List[float], widths: List[int], directions: int, rows: List[int], training: bool,
                     device: torch.device, dtype: torch.dtype) -> List[Optional[Tensor]]:
    """A layer's (or a cell step's) zoneout arguments for the op, in this module's order: per state (h, then an
    LSTM's c) with probability ps[k] > 0 a zoneout_op_mask of width widths[k] in the accumulate dtype of `dtype`
    (float64 for float64, else float32), else None (nothing drawn). (TorchScript compiles it for the twins.)"""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    masks: List[Optional[Tensor]] = []
    for k in range(len(ps)):
        if ps[k] > 0:
            masks.append(zoneout_op_mask(directions, rows, widths[k], ps[k], training, device, acc))
        else:
            masks.append(None)
    return masks


def drop_weight(weight: Tensor, p: float) -> Tensor:
    """DropConnect on a recurrent matrix: F.dropout's mask and inverted scaling; gradients reach `weight` through
    the mask, and the parameter itself is not written."""
    return F.dropout(weight, p, training=True)
