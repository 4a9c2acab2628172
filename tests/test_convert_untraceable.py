"""convert where torch.fx cannot trace the model: norm + activation children applied one after the
other in the untraceable forward (found in its source, fused only when the class reads neither
elsewhere), and a traceable block whose graph depends on an argument being None (one graph per
None pattern). Outputs and gradients match the original's; revert restores it."""
import pytest
import torch
from torch import nn

import pyfusedbn
from pyfusedbn.testing import zoo
from helpers import TOLERANCE


class _Pair(nn.Module):
    """GroupNorm then SiLU as siblings; a branch on a value keeps fx out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.norm = nn.GroupNorm(4, 8)
        self.act = nn.SiLU()

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > -1e9:
            x = self.norm(x)
            x = self.act(x)
        return x


class _ActReused(_Pair):
    """The activation is applied elsewhere too: replacing it by nn.Identity would change that."""

    def forward(self, x):
        x = self.conv(x)
        if x.sum() > -1e9:
            x = self.norm(x)
            x = self.act(x)
        return x + self.act(x)


class _NotConsecutive(_Pair):
    """Something between the norm and the activation."""

    def forward(self, x):
        if x.sum() > -1e9:
            x = self.norm(x)
            x = x * 2
            x = self.act(x)
        return self.conv(x)


class _Block(nn.Module):
    """Adds its embedding only when given one: its graph depends on `emb is None`. With a scale
    it does not trace (a branch on the value): those calls run its own forward, unfused."""

    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(4, 8)
        self.act = nn.SiLU()

    def forward(self, x, emb, scale=None):
        if emb is not None:
            x = x + emb
        if scale is not None and scale > 1:
            x = x * scale
        return self.act(self.norm(x))


class _Blocks(nn.Module):
    """Calls one _Block with every None pattern, from a forward fx cannot trace."""

    def __init__(self):
        super().__init__()
        self.block = _Block()

    def forward(self, x):
        if x.sum() < -1e9:
            return x
        emb = x.mean((2, 3), keepdim=True)
        return (self.block(x, emb) + self.block(x, None) + self.block(x, emb, 0.5)
                + self.block(x, None, scale=2.0))


# model -> norm layers fused.
CASES = {_Pair: ["norm"], _ActReused: [], _NotConsecutive: [], _Blocks: ["block.norm"]}


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_untraceable_forward_fuses_only_what_is_safe(cls):
    torch.manual_seed(0)
    original = cls().double()
    converted = pyfusedbn.convert(original)
    report = converted.pyfusedbn_report
    assert [name for name, _ in report.fused] == CASES[cls], report
    assert [name for name, _ in report.skipped] == ([] if CASES[cls] else ["norm"]), report
    x = torch.randn(2, 8, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    name, diff = zoo.largest_difference(zoo.train_step(converted, x), zoo.train_step(original, x))
    assert diff <= TOLERANCE[torch.float64], (name, diff)
    assert sorted(converted.state_dict()) == sorted(original.state_dict())
    reverted = pyfusedbn.revert(converted)
    for model in (reverted, original):
        model.zero_grad(set_to_none=True)
    assert [type(m) for m in reverted.modules()] == [type(m) for m in original.modules()]
    name, diff = zoo.largest_difference(zoo.train_step(reverted, x), zoo.train_step(original, x))
    assert diff <= TOLERANCE[torch.float64], (name, diff)
