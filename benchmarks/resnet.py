"""ResNet-50 for the end-to-end benchmark and the saved-tensor census: torchvision's when it is
importable (the GPU machine has it), else a copy of its architecture written here (this machine
has no torchvision). Both are built from nn.Conv2d, nn.BatchNorm2d, nn.ReLU(inplace=True) and an
in-place residual add, so `pyfusedbn.convert` sees the same patterns in either.

`width` scales every stage's channels (64 is ResNet-50's); `residual=False` drops the shortcut
(a plain deep CNN with the same layers), for telling apart what the residual add costs.
"""
from typing import Sequence

import torch
import torch.nn as nn

STAGE_BLOCKS = (3, 4, 6, 3)  # ResNet-50
EXPANSION = 4


def torchvision_resnet50():
    """torchvision.models.resnet50() (random weights), or None when torchvision is missing."""
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.models.resnet50()


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5: the stride on the 3x3 conv)."""

    def __init__(self, in_ch: int, width: int, stride: int, residual: bool = True):
        super().__init__()
        out_ch = width * EXPANSION
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.residual = residual
        self.downsample = None
        if residual and (stride != 1 or in_ch != out_ch):
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                            nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out += x if self.downsample is None else self.downsample(x)
        return self.relu(out)


class ResNet50(nn.Module):
    """torchvision's ResNet-50 layout: 7x7/2 stem, max-pool, four stages of bottlenecks, average
    pool, linear head."""

    def __init__(self, width: int = 64, residual: bool = True, num_classes: int = 1000,
                 stage_blocks: Sequence[int] = STAGE_BLOCKS):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, in_ch = [], width
        for index, blocks in enumerate(stage_blocks):
            stage_width = width * 2 ** index
            layers = []
            for block in range(blocks):
                stride = 2 if index > 0 and block == 0 else 1
                layers.append(Bottleneck(in_ch, stage_width, stride, residual))
                in_ch = stage_width * EXPANSION
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(width: int = 64, residual: bool = True, prefer_torchvision: bool = True):
    """(model, source): torchvision's ResNet-50 when asked for, importable and full width with
    the residual; else ours."""
    if prefer_torchvision and width == 64 and residual:
        model = torchvision_resnet50()
        if model is not None:
            return model, "torchvision.models.resnet50"
    return ResNet50(width, residual), f"benchmarks.resnet.ResNet50(width={width}, residual={residual})"
