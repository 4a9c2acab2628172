"""Small models in the shapes users have, for the convert/fold/compile/export/autocast tests, and
a helper that runs a training step and collects everything that must match."""
import torch
import torch.nn as nn
import torch.nn.functional as F

import pyfusedbn
from helpers import assert_close


class Bottleneck(nn.Module):
    """torchvision's ResNet bottleneck: one shared ReLU module, `out += identity`."""

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class UntraceableBottleneck(nn.Module):
    """The same block with its layers in an nn.Sequential and a branch on a tensor's shape,
    which torch.fx cannot trace."""

    def __init__(self, cin, width, stride=1):
        super().__init__()
        cout = width * 4
        self.branch = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.SiLU(),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                        nn.BatchNorm2d(cout))

    def forward(self, x):
        out = self.branch(x)
        identity = self.downsample(x) if x.shape != out.shape else x
        return F.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, block=Bottleneck, classes=5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(inplace=True))
        self.layer1 = nn.Sequential(block(8, 4), block(16, 4))
        self.layer2 = nn.Sequential(block(16, 8, stride=2))
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ResidualPair(nn.Module):
    """conv -> BatchNormAct(silu); conv -> BatchNormAct(leaky_relu, residual = the first)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = pyfusedbn.BatchNormAct2d(4, activation="silu")
        self.conv2 = nn.Conv2d(4, 4, 1, bias=False)
        self.bn2 = pyfusedbn.BatchNormAct2d(4, activation="leaky_relu", activation_param=0.2)

    def forward(self, x):
        y = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(y), residual=y)


def mlp():
    """BatchNorm1d with non-default eps and momentum (None: cumulative average)."""
    return nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16, eps=1e-3, momentum=None), nn.ReLU(),
        nn.Linear(16, 16), nn.BatchNorm1d(16, momentum=0.3), nn.GELU(approximate="tanh"),
        nn.Linear(16, 3))


def seeded(factory, seed=0):
    torch.manual_seed(seed)
    return factory()


# name -> (model factory, input shape)
MODELS = {
    "resnet": (ResNet, (4, 3, 8, 8)),
    "resnet_untraceable": (lambda: ResNet(UntraceableBottleneck), (4, 3, 8, 8)),
    "mlp": (mlp, (8, 6)),
}

# How many norm layers convert() fuses in MODELS["resnet"]: its 12 BatchNorms less the two
# downsample ones, whose outputs become the residual inputs of the bn3 they feed.
RESNET_FUSED_LAYERS = 10

FUSED_CLASSES = (pyfusedbn.BatchNormAct1d, pyfusedbn.BatchNormAct2d, pyfusedbn.BatchNormAct3d,
                 pyfusedbn.SyncBatchNormAct, pyfusedbn.GroupNormAct, pyfusedbn.InstanceNormAct1d,
                 pyfusedbn.InstanceNormAct2d, pyfusedbn.InstanceNormAct3d, pyfusedbn.LayerNormAct2d)


def fused_layers(model):
    """The number of pyfusedbn norm layers in model."""
    return sum(isinstance(m, FUSED_CLASSES) for m in model.modules())


def kernel_calls(device):
    """pyfusedbn's own kernel launches so far on device ("cpu" or "cuda")."""
    return torch.ops.pyfusedbn.kernel_calls(torch.device(device).type)


def step(model, x, seed=1):
    """One forward + backward of a fixed random projection of the output: returns the output,
    the input's gradient, and every parameter's gradient and buffer by name."""
    x = x.detach().clone().requires_grad_()
    out = model(x)
    # Drawn on the CPU (the same numbers on every device), then moved to the output's device.
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.device)
    (out.float() * projection).sum().backward()
    state = {"output": out, "input.grad": x.grad}
    model = getattr(model, "_orig_mod", model)  # torch.compile's wrapper: the names inside
    state.update({f"{n}.grad": p.grad for n, p in model.named_parameters()})
    state.update({n: b for n, b in model.named_buffers()})
    return state


def assert_same_state(actual, expected, tol):
    """assert_close over every name in two step() results (a name missing on one side fails)."""
    assert sorted(actual) == sorted(expected), set(actual) ^ set(expected)
    for name in expected:
        if expected[name] is None and actual[name] is None:
            continue
        assert_close(name, actual[name], expected[name], tol)
