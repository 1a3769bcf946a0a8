"""Exactly equivalent rewrites of the generator that quantize and run better.

ONNX Runtime folds BatchNorm into Conv but not into ConvTranspose, and has no int8
ConvTranspose kernel: in an int8 QDQ graph the six decoder up-sampling layers (~19% of the
MACs) stay float, each followed by a float BatchNorm and wrapped in layout transposes. Two
rewrites fix that without changing the function:
  * fold each ConvTranspose's BatchNorm into its weights and bias;
  * turn each ConvTranspose into an ordinary Conv: stride 1 is a Conv with the kernel flipped
    and padded by k-1-p; stride 2 (k3, p1, output_padding 1) is a 2x2 Conv producing the four
    output phases as channels, then PixelShuffle (ONNX DepthToSpace, CRD order). Without the
    output padding (the 288 layout's) it is the same with the last row and column left out:
    output padding only appends rows computed by the same formula.
Both are checked against the original network by the export's verification like any export.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

from models.layers import Conv2dTranspose

# For output phase a (row parity) of a k3/s2/p1/op1 transposed conv, which kernel row feeds
# input offset 0 (x[m]) and offset 1 (x[m+1]); None means no tap.
_PHASE_TAPS = {0: (1, None), 1: (2, 0)}


def _fold_bn(weight: torch.Tensor, bias: torch.Tensor, bn: nn.BatchNorm2d, out_axis: int):
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shape = [1] * weight.dim()
    shape[out_axis] = -1
    return weight * scale.view(shape), (bias - bn.running_mean) * scale + bn.bias


class SubPixelUp(nn.Module):
    """Conv(2x2, 4*cout) + PixelShuffle(2), equal to ConvTranspose(k3, s2, p1, op1) (+ folded BN);
    `trim`: drop the last row and column, equal to the same without output padding."""

    def __init__(self, weight_t: torch.Tensor, bias: torch.Tensor, trim: bool = False):
        super().__init__()
        self.trim = trim
        cin, cout = weight_t.shape[:2]
        w = torch.zeros(cout, 2, 2, cin, 2, 2, dtype=weight_t.dtype)
        for a, rows in _PHASE_TAPS.items():
            for b, cols in _PHASE_TAPS.items():
                for dy, ky in enumerate(rows):
                    for dx, kx in enumerate(cols):
                        if ky is not None and kx is not None:
                            w[:, a, b, :, dy, dx] = weight_t[:, :, ky, kx].T
        self.conv = nn.Conv2d(cin, cout * 4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(w.reshape(cout * 4, cin, 2, 2))
            self.conv.bias.copy_(bias.repeat_interleave(4))

    def forward(self, x):
        out = F.pixel_shuffle(self.conv(F.pad(x, (0, 1, 0, 1))), 2)
        return out[:, :, :-1, :-1] if self.trim else out


def _as_conv(ct: nn.ConvTranspose2d, weight_t: torch.Tensor, bias: torch.Tensor) -> nn.Module:
    k, s, p, op = ct.kernel_size[0], ct.stride[0], ct.padding[0], ct.output_padding[0]
    if s == 1 and op == 0:
        conv = nn.Conv2d(ct.in_channels, ct.out_channels, k, padding=k - 1 - p)
        with torch.no_grad():
            conv.weight.copy_(weight_t.flip(2, 3).transpose(0, 1))
            conv.bias.copy_(bias)
        return conv
    if (k, s, p) == (3, 2, 1) and op in (0, 1):
        return SubPixelUp(weight_t, bias, trim=op == 0)
    raise NotImplementedError(f"no rewrite for ConvTranspose k{k} s{s} p{p} op{op}")


def convtranspose_as_conv(net: nn.Module) -> nn.Module:
    """A copy of `net` with every Conv2dTranspose block's ConvTranspose+BN replaced by a Conv."""
    net = copy.deepcopy(net).eval()
    with torch.no_grad():
        for block in net.modules():
            if isinstance(block, Conv2dTranspose):
                ct, bn = block.conv_block[0], block.conv_block[1]
                w, b = _fold_bn(ct.weight, ct.bias, bn, out_axis=1)
                block.conv_block = nn.Sequential(_as_conv(ct, w, b))
    return net
