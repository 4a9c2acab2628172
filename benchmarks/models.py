"""Models for the training benchmark and the study: a ResNet-style CNN (or the same CNN without
skips: a plain deep CNN) and a deep MLP, each with a norm switch and the classic init schemes.

norm="fused": pyfusedbn.BatchNormAct (residual add fused in); norm="torch": nn.BatchNorm*d, then
the add, then the activation; norm="group_norm": pyfusedbn.GroupNormAct with GROUP_NORM_GROUPS groups;
norm="layer_norm": GroupNormAct with one group (LayerNorm over (C, H, W), as the GroupNorm paper
compares it); norm="none": the activation alone (layers then get a bias). The
fused and torch variants have identical state_dict keys, so one model's weights load into the
other: same seed, same start.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

import pyfusedbn
from pyfusedbn.activations import torch_activation

NORMS = ("none", "fused", "torch", "group_norm", "layer_norm")
# Groups of the "group_norm" norm: 8 divides every width the study uses (16, 32); the GroupNorm
# paper's 32 needs wider layers.
GROUP_NORM_GROUPS = 8
INITS = ("normal", "default", "xavier", "kaiming")
INIT_LABELS = {"normal": "N(0,1)", "default": "PyTorch default", "xavier": "Xavier/Glorot",
               "kaiming": "He/Kaiming"}


class _TorchNormAct:
    """nn.BatchNorm*d followed by the residual add and the activation, unfused."""

    def __init__(self, channels: int, activation: str):
        super().__init__(channels)
        self.activation = activation
        self._act = torch_activation(activation)

    def forward(self, x, residual=None):
        y = super().forward(x)
        if residual is not None:
            y = y + residual
        return self._act(y)


class TorchBatchNormAct1d(_TorchNormAct, nn.BatchNorm1d):
    pass


class TorchBatchNormAct2d(_TorchNormAct, nn.BatchNorm2d):
    pass


class ActOnly(nn.Module):
    """No normalisation: the residual add and the activation."""

    def __init__(self, activation: str):
        super().__init__()
        self.activation = activation
        self._act = torch_activation(activation)

    def forward(self, x, residual=None):
        return self._act(x if residual is None else x + residual)


def norm_act(norm: str, rank: int, channels: int, activation: str) -> nn.Module:
    """rank 1: features (MLP), rank 2: images (CNN)."""
    if norm == "fused":
        cls = pyfusedbn.BatchNormAct1d if rank == 1 else pyfusedbn.BatchNormAct2d
        return cls(channels, activation=activation)
    if norm == "torch":
        return (TorchBatchNormAct1d if rank == 1 else TorchBatchNormAct2d)(channels, activation)
    if norm in ("group_norm", "layer_norm"):
        groups = min(GROUP_NORM_GROUPS, channels) if norm == "group_norm" else 1
        return pyfusedbn.GroupNormAct(groups, channels, activation=activation)
    if norm == "none":
        return ActOnly(activation)
    raise ValueError(f"norm must be one of {', '.join(NORMS)}; got {norm!r}")


class Block(nn.Module):
    """conv3x3-norm-act, conv3x3-norm(+shortcut)-act; the shortcut (a strided 1x1 conv + norm when
    the shape changes) only when residual=True."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, activation: str,
                 residual: bool):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=bias)
        self.bn1 = norm_act(norm, 2, out_ch, activation)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=bias)
        self.bn2 = norm_act(norm, 2, out_ch, activation)
        self.residual = residual
        self.shortcut = None
        if residual and (stride != 1 or in_ch != out_ch):
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=bias),
                                          norm_act(norm, 2, out_ch, "identity"))

    def forward(self, x):
        h = self.bn1(self.conv1(x))
        skip = None
        if self.residual:
            skip = x if self.shortcut is None else self.shortcut(x)
        return self.bn2(self.conv2(h), residual=skip)


class ConvNet(nn.Module):
    """Stem conv, stages of `blocks` Blocks (the first of each later stage strided), global average
    pool, linear classifier. residual=False gives the plain deep CNN of the study."""

    def __init__(self, norm: str = "fused", activation: str = "relu",
                 widths: Sequence[int] = (16, 32, 64), blocks: int = 2, residual: bool = True,
                 in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=norm == "none")
        self.stem_bn = norm_act(norm, 2, widths[0], activation)
        layers, in_ch = [], widths[0]
        for stage, width in enumerate(widths):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(Block(in_ch, width, stride, norm, activation, residual))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = self.layers(self.stem_bn(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class DeepMLP(nn.Module):
    """`depth` hidden layers of equal width (Linear, then norm + activation), linear classifier."""

    def __init__(self, norm: str = "fused", activation: str = "tanh", depth: int = 11,
                 width: int = 100, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        layers, fan_in = [], in_features
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width, bias=norm == "none"),
                       norm_act(norm, 1, width, activation)]
            fan_in = width
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(fan_in, num_classes)

    def forward(self, x):
        return self.fc(self.hidden(torch.flatten(x, 1)))


def weight_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """The Linear and Conv layers, input to output: the layers the init schemes and the gradient
    norms are about."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def init_weights(model: nn.Module, scheme: str) -> nn.Module:
    """normal: N(0, 1) weights (the classic bad start); default: PyTorch's own (Kaiming-uniform
    with a=sqrt(5)); xavier: Glorot normal; kaiming: He normal (fan_in, ReLU gain). Biases are
    zeroed by every scheme but default; BatchNorm's affine starts at (1, 0) regardless."""
    if scheme not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}; got {scheme!r}")
    if scheme == "default":
        return model
    for _, layer in weight_layers(model):
        with torch.no_grad():
            if scheme == "normal":
                nn.init.normal_(layer.weight, 0.0, 1.0)
            elif scheme == "xavier":
                nn.init.xavier_normal_(layer.weight)
            else:
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            if layer.bias is not None:
                layer.bias.zero_()
    return model
