"""The model zoo: classifiers from torchvision and timm, diffusers' UNets and VAE from small
configs (random init, nothing downloaded), how to import those libraries, and the training step
whose results a converted model must reproduce. Shared by benchmarks/model_zoo.py,
tests/test_zoo.py, tests/test_timm.py and tests/test_diffusers.py.
"""
import importlib.util
import os
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from ..conversion.foreign_layers import is_frozen_batch_norm, is_timm_batch_norm_act
from ..conversion.module_swap import is_fused, is_norm_layer

# (library, model name): the 18 classifiers.
ZOO: List[Tuple[str, str]] = [
    ("torchvision", name) for name in (
        "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
        "mnasnet0_5", "shufflenet_v2_x0_5", "densenet121", "googlenet", "regnet_y_400mf",
        "vgg11_bn")
] + [
    ("timm", name) for name in (
        "efficientnet_b0", "mobilenetv3_large_100", "regnety_002", "cspresnet50", "rexnet_100",
        "resnet26d", "dla34")
]

# (library, model name): the GroupNorm / LayerNorm users of issue 20, counted by count_norms.
NORM_ZOO: List[Tuple[str, str]] = [
    ("timm", "convnext_atto"),        # timm LayerNorm2d, none followed by an activation
    ("timm", "resnet50_gn"),          # timm GroupNorm (an nn.GroupNorm subclass) + ReLU / add
    ("timm", "resnetv2_50x1_bit"),    # BiT: timm GroupNormAct (ReLU inside the layer)
    ("torchvision", "convnext_tiny"),  # torchvision LayerNorm2d, nn.LayerNorm in the blocks
]

# (library, model name): diffusers' GroupNorm + SiLU users, built by build() from the small
# configs below as a DiffusersSample (image in, image out).
DIFFUSERS_ZOO: List[Tuple[str, str]] = [
    ("diffusers", name) for name in ("UNet2DModel", "UNet2DConditionModel", "AutoencoderKL")]
_DIFFUSERS_SMALL = dict(block_out_channels=(32, 64), norm_num_groups=8)
# name -> (constructor arguments, image channels).
_DIFFUSERS_CONFIGS = {
    "UNet2DModel": (dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                         up_block_types=("AttnUpBlock2D", "UpBlock2D"), **_DIFFUSERS_SMALL), 3),
    "UNet2DConditionModel": (dict(sample_size=16, in_channels=4, out_channels=4,
                                  layers_per_block=1, cross_attention_dim=16,
                                  attention_head_dim=8,
                                  down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                  **_DIFFUSERS_SMALL), 4),
    "AutoencoderKL": (dict(in_channels=3, out_channels=3, latent_channels=4,
                           down_block_types=("DownEncoderBlock2D",) * 2,
                           up_block_types=("UpDecoderBlock2D",) * 2, **_DIFFUSERS_SMALL), 3),
}


class DiffusersSample(nn.Module):
    """A diffusers model as image in, image out: its `.sample` for fixed extra inputs (timestep
    3, and for UNet2DConditionModel a fixed random text embedding of 5 tokens)."""

    def __init__(self, model, name):
        super().__init__()
        self.model, self.name = model, name
        self.in_channels = _DIFFUSERS_CONFIGS[name][1]

    def extra_inputs(self, x):
        if self.name == "AutoencoderKL":
            return ()
        timestep = torch.tensor([3.0], dtype=x.dtype, device=x.device)
        if self.name == "UNet2DModel":
            return (timestep,)
        text = torch.randn(x.shape[0], 5, self.model.config.cross_attention_dim,
                           generator=torch.Generator().manual_seed(2), dtype=x.dtype)
        return timestep, text.to(x.device)

    def forward(self, x):
        return self.model(x, *self.extra_inputs(x)).sample


def in_channels(model) -> int:
    """The image channels a zoo model takes (3 but for DiffusersSample's)."""
    return getattr(model, "in_channels", 3) if isinstance(model, DiffusersSample) else 3


# torchvision's C++ ops (nms, roi_align, ...) are declared by its compiled library; the fake
# kernels its Python package registers on import need two of those declarations to exist.
_TORCHVISION_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                        "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_stub_library = None


def _declare_torchvision_ops_if_unloadable():
    """The torchvision wheel on PyPI is built against CUDA torch: with the CPU torch wheel its
    compiled ops cannot load (libtorch_cuda.so is missing), and `import torchvision` then fails
    registering fake kernels for them. Models need only its Python parts, so when the library
    does not load, its op schemas are declared (without kernels: calling nms stays an error)."""
    global _stub_library
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _stub_library is not None or not spec.submodule_search_locations:
        return
    folder = spec.submodule_search_locations[0]
    library = next((f for f in os.listdir(folder) if f.startswith("_C.") and f.endswith(".so")),
                   None)
    if library is None:
        return
    try:
        torch.ops.load_library(os.path.join(folder, library))
    except OSError:
        _stub_library = torch.library.Library("torchvision", "DEF")
        for schema in _TORCHVISION_SCHEMAS:
            _stub_library.define(schema)


def import_libraries() -> Dict[str, object]:
    """{"torchvision": module or the reason it did not import, "timm": ..., "diffusers": ...}."""
    libraries = {}
    try:
        _declare_torchvision_ops_if_unloadable()
        import torchvision.models
        libraries["torchvision"] = torchvision.models
    except Exception as e:  # ImportError, or a wheel that does not match torch
        libraries["torchvision"] = f"torchvision does not import: {type(e).__name__}: {e}"
    for name in ("timm", "diffusers"):
        try:
            libraries[name] = importlib.import_module(name)
        except Exception as e:
            libraries[name] = f"{name} does not import: {type(e).__name__}: {e}"
    return libraries


def build(libraries, library: str, name: str) -> nn.Module:
    """A freshly initialised model (pretrained=False: no download)."""
    module = libraries[library]
    if isinstance(module, str):
        raise RuntimeError(module)
    if library == "timm":
        return module.create_model(name, pretrained=False)
    if library == "diffusers":
        return DiffusersSample(getattr(module, name)(**_DIFFUSERS_CONFIGS[name][0]), name)
    kwargs = {"weights": None}
    if name == "googlenet":  # one output in training mode too; its old init is slow and warns
        kwargs.update(aux_logits=False, init_weights=True)
    return getattr(module, name)(**kwargs)


def is_batch_norm(module) -> bool:
    """Every BatchNorm variant the zoo holds, fused or not."""
    return (isinstance(module, nn.modules.batchnorm._BatchNorm) or is_timm_batch_norm_act(module)
            or is_frozen_batch_norm(module))


def count_batch_norms(model) -> int:
    return sum(is_batch_norm(m) for m in model.modules())


def count_norms(model) -> Tuple[int, int]:
    """(fused layers, all norm layers fused or not) of any norm family."""
    fused = sum(is_fused(m) for m in model.modules())
    return fused, fused + sum(is_norm_layer(m) for m in model.modules())


def train_step(model, x, seed: int = 1) -> Dict[str, Optional[torch.Tensor]]:
    """Forward + backward of a fixed random projection of the output: the output, the input's
    gradient, every parameter's gradient and buffer, by name. The global generator is seeded
    (inside a fork), so dropout draws the same masks in two models that draw in the same order."""
    x = x.detach().clone().requires_grad_()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model(x)
    projection = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed))
    (out.float() * projection.to(out.device)).sum().backward()
    state = {"output": out.detach(), "input.grad": x.grad}
    state.update({f"{n}.grad": p.grad for n, p in model.named_parameters()})
    state.update({n: b.detach().clone() for n, b in model.named_buffers()})
    return state


def largest_difference(actual, expected) -> Tuple[str, float]:
    """(name, max |a - e| / max(1, max |e|)) of the worst tensor of two train_step results; a
    name missing on one side is reported with an infinite difference."""
    if sorted(actual) != sorted(expected):
        return f"names differ: {sorted(set(actual) ^ set(expected))[:3]}", float("inf")
    worst = ("", 0.0)
    for name, e in expected.items():
        a = actual[name]
        if a is None or e is None:
            if (a is None) != (e is None):
                return f"{name} missing", float("inf")
            continue
        e64, a64 = e.detach().double().cpu(), a.detach().double().cpu()
        diff = ((a64 - e64).abs().max().item() / max(1.0, e64.abs().max().item())
                if e64.numel() else 0.0)
        if diff != diff or diff > worst[1]:  # NaN is the worst
            worst = (name, diff)
    return worst
