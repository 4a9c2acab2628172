"""The microbenchmark cases: the headline rows, ResNet-50's BatchNorm shapes, a 1d and a 3d case,
and the grids that quick and full mode run."""
import itertools
from dataclasses import asdict, dataclass
from typing import List, Optional, Tuple

MODES = ("fwd_train", "fwd_eval", "fwd_bwd")
DTYPES = ("float32", "bfloat16")
FORMATS = ("nchw", "channels_last")
ACTIVATIONS = ("relu", "silu", "gelu")
BATCH = {"cpu": 8, "cuda": (32, 256)}  # ResNet-50 shapes: a smaller batch on CPU


@dataclass(frozen=True)
class Case:
    shape: Tuple[int, ...]      # (N, C, ...) of the input
    activation: str = "relu"
    residual: bool = False
    dtype: str = "float32"
    memory_format: str = "nchw"  # "nchw" means contiguous for every rank
    mode: str = "fwd_bwd"
    label: str = ""             # where the shape comes from, e.g. "resnet50 layer1"
    headline: bool = False

    @property
    def name(self) -> str:
        shape = "x".join(map(str, self.shape))
        parts = [shape, self.activation, self.dtype, self.memory_format, self.mode]
        if self.residual:
            parts.insert(2, "residual")
        return "-".join(parts)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        return out


def resnet50_bn_shapes(image: int = 224) -> List[Tuple[int, int, int, str]]:
    """Every distinct (C, H, W) a BatchNorm sees in ResNet-50 (v1.5: stride on the 3x3 conv),
    in network order, with where it first occurs."""
    shapes = []

    def add(c, h, label):
        if all((c, h) != (s[0], s[1]) for s in shapes):
            shapes.append((c, h, h, label))

    size = image // 2
    add(64, size, "stem")
    size //= 2  # max pool
    in_ch = 64
    for stage, (width, blocks) in enumerate(((64, 3), (128, 4), (256, 6), (512, 3)), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            add(width, size, f"layer{stage} conv1")
            out = size // stride
            add(width, out, f"layer{stage} conv2")
            add(width * 4, out, f"layer{stage} conv3/downsample")
            size, in_ch = out, width * 4
    return [(c, h, w, label) for c, h, w, label in shapes]


def headline_cases() -> List[Case]:
    """The rows the core issue asks for, float32, fused vs eager BatchNorm + ReLU: forward alone
    (training) and forward+backward (training), NCHW and channels_last, plus a deep-layer shape
    and a 1d (MLP) case."""
    cases = []
    for shape, fmt, label in (((32, 64, 56, 56), "nchw", "resnet50 layer1"),
                              ((32, 64, 56, 56), "channels_last", "resnet50 layer1"),
                              ((64, 256, 14, 14), "nchw", "resnet50 layer3"),
                              ((256, 512), "nchw", "mlp 1d")):
        for mode in ("fwd_train", "fwd_bwd"):
            cases.append(Case(shape, "relu", False, "float32", fmt, mode, label, headline=True))
    return cases


def full_cases(device: str = "cpu", batches: Optional[Tuple[int, ...]] = None) -> List[Case]:
    """ResNet-50's shapes x activations x residual x dtype x layout x mode, a 1d MLP case and a
    3d case; bfloat16 rows only for relu, to keep the grid's size sensible."""
    if batches is None:
        batches = BATCH["cuda"] if device == "cuda" else (BATCH["cpu"],)
    cases = list(headline_cases())
    shapes = [((n, c, h, w), f"resnet50 {label}") for n in batches
              for c, h, w, label in resnet50_bn_shapes()]
    shapes += [((256 if device == "cpu" else 4096, 1024), "mlp 1d"),
               ((4 if device == "cpu" else 16, 64, 8, 28, 28), "video 3d")]
    for (shape, label), act, residual, dtype, fmt, mode in itertools.product(
            shapes, ACTIVATIONS, (False, True), DTYPES, FORMATS, MODES):
        if dtype == "bfloat16" and act != "relu":
            continue
        if fmt == "channels_last" and len(shape) < 4:
            continue
        cases.append(Case(shape, act, residual, dtype, fmt, mode, label))
    return cases
