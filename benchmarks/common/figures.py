"""matplotlib for the figures: imported only when a figure is drawn, so that everything else runs
without it (`make bench-deps` installs it)."""

# One colour per norm or contender, the same in every figure.
COLORS = {"fused": "tab:blue", "torch": "tab:orange", "none": "tab:red", "compiled": "tab:green",
          "fp64": "black", "group_norm": "tab:green", "layer_norm": "tab:purple"}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path
