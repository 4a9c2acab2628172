"""Census of the tensors autograd saves for backward: eager vs `pyfusedbn.convert`, per layer.

    python -m benchmarks.saved_tensors [--model resnet50|convnet] [--width 16] [--batch 8]
                                       [--size 64] [--no-residual] [--list] [--out DIR]

Every tensor autograd saves during one training forward is recorded (saved_tensors_hooks) with
  - layer: the innermost module running when it was saved (module forward hooks);
  - role: what it is to that layer: its input, its `residual` argument (the second one), its
    output, a parameter, or a temporary the layer made ("internal");
  - op: the autograd node that holds it (found by walking the graph: reading a node's saved
    tensors calls the unpack hook with the record's index);
  - storage: tensors sharing a storage (a layer's output saved again as the next convolution's
    input) cost their bytes once. `exclusive` bytes are those of storages no other op also saved:
    the memory an op's saving really adds.
The same model (same weights) runs eager and converted; the table compares bytes by (op, role)
and lists the converted model's exclusive tensors that eager does not save. JSON in
<out>/saved_tensors.json.
"""
import argparse
import collections
import copy
from dataclasses import asdict, dataclass, field
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

import pyfusedbn

from .common.markdown import MiB
from .common.results import save_json
from .models import ConvNet
from .resnet import resnet50


@dataclass
class Saved:
    index: int
    layer: str
    shape: tuple
    dtype: str
    storage: int  # data_ptr of the storage: the identity that decides sharing
    nbytes: int   # the storage's bytes
    module_type: str = ""
    role: str = "internal"
    op: str = "?"
    shared_with: List[str] = field(default_factory=list)  # the other (op, layer) savers


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class SavedTensorCensus:
    """Records what autograd saves while a model runs forward inside the context, then (after
    `attribute(loss)`) which node saved each tensor and which of them share storage."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.records: List[Saved] = []
        self._stack: List[str] = []
        self._handles = []

    def __enter__(self):
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter_module(name)))
            self._handles.append(module.register_forward_hook(self._leave_module, with_kwargs=True))
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc_info):
        self._hooks.__exit__(*exc_info)
        for handle in self._handles:
            handle.remove()

    def _enter_module(self, name):
        def hook(module, args):
            self._stack.append((name or "<model>", type(module).__module__, len(self.records)))
        return hook

    def _leave_module(self, module, args, kwargs, output):
        name, _, first = self._stack.pop()
        roles = {}
        if args and isinstance(args[0], torch.Tensor):
            roles.setdefault(_storage(args[0]), []).append("input")
        residual = args[1] if len(args) > 1 else kwargs.get("residual")
        if isinstance(residual, torch.Tensor):
            roles.setdefault(_storage(residual), []).append("residual")
        if isinstance(output, torch.Tensor):
            roles.setdefault(_storage(output), []).append("output")
        for pname, param in module.named_parameters(recurse=False):
            roles.setdefault(_storage(param), []).append(pname)
        for record in self.records[first:]:
            if record.layer == name and record.storage in roles:
                record.role = "=".join(roles[record.storage])

    def _pack(self, tensor):
        layer, module_type, _ = self._stack[-1] if self._stack else ("<outside>", "", 0)
        self.records.append(Saved(len(self.records), layer, tuple(tensor.shape),
                                  str(tensor.dtype).replace("torch.", ""), _storage(tensor),
                                  tensor.untyped_storage().nbytes(), module_type))
        return len(self.records) - 1, tensor

    def _unpack(self, packed):
        index, tensor = packed
        if self._current_op is not None:
            self.records[index].op = self._current_op
        return tensor

    _current_op = None

    def attribute(self, output: torch.Tensor) -> None:
        """Walks the autograd graph from `output`, reading each node's saved tensors so the unpack
        hook names the node that holds each record; then links records sharing a storage."""
        seen, todo = set(), [output.grad_fn]
        while todo:
            node = todo.pop()
            if node is None or node in seen:
                continue
            seen.add(node)
            self._current_op = type(node).__name__
            if hasattr(node, "saved_tensors"):  # a custom autograd.Function's node
                node.saved_tensors
            for attr in dir(node):
                if attr.startswith("_saved_"):
                    getattr(node, attr)
            self._current_op = None
            todo.extend(next_node for next_node, _ in node.next_functions)
        # A node with its autograd in C++ (pyfusedbn's layer op) keeps its saved tensors out of
        # Python's reach, so nothing unpacks them: they belong to the module that packed them.
        for record in self.records:
            if record.op == "?" and record.module_type.startswith("pyfusedbn"):
                record.op = f"BatchNormAct C++ autograd node ({record.module_type})"
        by_storage = collections.defaultdict(list)
        for record in self.records:
            by_storage[record.storage].append(record)
        for group in by_storage.values():
            for record in group:
                record.shared_with = [f"{r.op}@{r.layer}" for r in group if r is not record]

    def unique_bytes(self) -> int:
        return sum({r.storage: r.nbytes for r in self.records if r.nbytes}.values())

    def by_op_role(self) -> Dict[str, dict]:
        """(op, role) -> count, bytes (each storage once) and exclusive bytes."""
        groups = collections.defaultdict(lambda: {"count": 0, "storages": {}, "exclusive": {}})
        for r in self.records:
            group = groups[f"{r.op} / {r.role}"]
            group["count"] += 1
            group["storages"][r.storage] = r.nbytes
            if not r.shared_with:
                group["exclusive"][r.storage] = r.nbytes
        return {key: {"count": g["count"], "bytes": sum(g["storages"].values()),
                      "exclusive_bytes": sum(g["exclusive"].values())}
                for key, g in sorted(groups.items())}


def census(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> SavedTensorCensus:
    """One training forward under the census; backward is run too, so the graph is freed."""
    model.train()
    with SavedTensorCensus(model) as result:
        loss = F.cross_entropy(model(x), y)
    result.attribute(loss)
    loss.backward()
    return result


def build(model: str, width: int, residual: bool):
    """(eager model, converted model, description), same weights."""
    torch.manual_seed(0)
    if model == "convnet":
        # The training benchmark's network (make bench): its torch and fused variants.
        eager = ConvNet("torch", "relu", (16, 32, 64), 1, residual, 3, 10)
        fused = ConvNet("fused", "relu", (16, 32, 64), 1, residual, 3, 10)
        fused.load_state_dict(eager.state_dict())
        return eager, fused, f"benchmarks.models.ConvNet(torch vs fused, residual={residual})"
    eager, source = resnet50(width, residual, prefer_torchvision=False)
    return eager, pyfusedbn.convert(copy.deepcopy(eager)), source


def run(model: str = "resnet50", width: int = 16, batch: int = 8, size: int = 64,
        residual: bool = True) -> dict:
    eager, converted, source = build(model, width, residual)
    torch.manual_seed(1)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    results = {}
    for name, model in (("eager", eager), ("converted", converted)):
        c = census(model, x, y)
        results[name] = {"unique_bytes": c.unique_bytes(), "by_op_role": c.by_op_role(),
                         "records": [asdict(r) for r in c.records]}
    return {"model": source, "batch": batch, "size": size, "results": results,
            "by_savers": {name: _by_savers(results[name]["records"]) for name in results}}


# Autograd nodes of a BatchNorm, fused or not: one name, so eager and converted groups line up.
BATCH_NORM_NODES = {"NativeBatchNormBackward0": "batchnorm", "CudnnBatchNormBackward0": "batchnorm",
                    "BatchNormActFunctionBackward": "batchnorm",
                    "MemoryEfficientBatchNormActFunctionBackward": "batchnorm"}
# A torch activation module's saved tensor (eager ReLU saves its output) is left out of the
# groups: after fusion the same storage is kept by whatever consumes it (the next convolution),
# so it is no memory the fused op adds or removes. Activation modules live in this module.
ACTIVATION_MODULE = "torch.nn.modules.activation"


def _saver(record: dict) -> str:
    op = BATCH_NORM_NODES.get(record["op"], record["op"].replace("Backward0", ""))
    return f"{op}/{record['role']}"


def _by_savers(records: List[dict]) -> Dict[str, dict]:
    """Partitions the saved storages by who saves them: "op/role + op/role" -> bytes and one
    record per storage (activation modules' saves left out of the names, see above). The bytes
    sum to the total, so two models' partitions compare line by line: a storage that only the
    fused op keeps shows up as a group the eager model lacks."""
    savers = collections.defaultdict(set)
    first = {}
    for r in records:
        if r["module_type"] != ACTIVATION_MODULE:
            savers[r["storage"]].add(_saver(r))
        first.setdefault(r["storage"], r)
    groups = collections.defaultdict(lambda: {"bytes": 0, "records": []})
    for storage, record in first.items():
        group = groups[" + ".join(sorted(savers[storage])) or _saver(record)]
        group["bytes"] += record["nbytes"]
        group["records"].append(record)
    return dict(groups)


def print_report(report: dict, list_all: bool) -> None:
    eager, conv = report["results"]["eager"], report["results"]["converted"]
    print(f"{report['model']}, batch {report['batch']}, {report['size']}x{report['size']}")
    print(f"saved for backward (each storage once): eager {eager['unique_bytes'] / MiB:.2f} MiB, "
          f"converted {conv['unique_bytes'] / MiB:.2f} MiB "
          f"({(conv['unique_bytes'] - eager['unique_bytes']) / MiB:+.2f} MiB)")
    print(f"\n{'model':<10} {'op / role':<52} {'count':>5} {'MiB':>8} {'exclusive MiB':>13}")
    for name in ("eager", "converted"):
        for key, g in report["results"][name]["by_op_role"].items():
            print(f"{name:<10} {key:<52} {g['count']:>5} {g['bytes'] / MiB:>8.2f} "
                  f"{g['exclusive_bytes'] / MiB:>13.2f}")
    groups = report["by_savers"]
    rows = []
    for key in set(groups["eager"]) | set(groups["converted"]):
        before, after = (groups[name].get(key, {"bytes": 0})["bytes"] / MiB
                         for name in ("eager", "converted"))
        rows.append((after - before, key, before, after))
    rows.sort(key=lambda row: -abs(row[0]))
    print("\nsaved storages grouped by who saves them (op/role of every saver):")
    print(f"{'savers':<70} {'eager MiB':>9} {'converted':>9} {'diff':>7}")
    for diff, key, before, after in rows:
        print(f"{key:<70} {before:>9.2f} {after:>9.2f} {diff:>+7.2f}")
    for diff, key, before, after in rows:
        if before == 0 and diff > 0.01 * conv["unique_bytes"] / MiB and all(
                saver.startswith("batchnorm/") for saver in key.split(" + ")):
            print(f"\nkept alive by the BatchNorm op alone, only in the converted model: {key}")
            for r in groups["converted"][key]["records"]:
                print(f"  {r['layer']:<28} {str(r['shape']):<22} {r['dtype']}")
    if list_all:
        for name in ("eager", "converted"):
            print(f"\nall saved tensors, {name}:")
            for r in report["results"][name]["records"]:
                print(f"  {r['index']:>4} {r['layer']:<28} {r['op']:<36} {r['role']:<16} "
                      f"{str(r['shape']):<22} {r['dtype']:<9} shared with {len(r['shared_with'])}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("resnet50", "convnet"), default="resnet50")
    parser.add_argument("--width", type=int, default=16, help="ResNet-50 stem width (64: full)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--no-residual", action="store_true")
    parser.add_argument("--list", action="store_true", help="print every saved tensor")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args(argv)
    report = run(args.model, args.width, args.batch, args.size, not args.no_residual)
    print_report(report, args.list)
    suffix = "" if not args.no_residual else "_no_residual"
    save_json(args.out, f"saved_tensors_{args.model}{suffix}.json", report)
    return report


if __name__ == "__main__":
    main()
