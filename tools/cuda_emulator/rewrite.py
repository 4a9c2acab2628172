"""Source rewrite that lets g++ compile the project's CUDA files against the emulator
(tools/cuda_emulator/include): copies a source tree into a build directory, rewriting in every
.cu/.cuh/.h file under the CUDA folder
  kernel<T...><<<grid, block[, smem[, stream]]>>>(args)
      -> ::emu::launch([&] { kernel<T...>(args); }, "kernel<T...>", __FILE__, __LINE__, grid, block[, ...])
  __shared__ T name[N], other;
      -> a per-block ::emu::SharedSite per declarator (cuda_emu/runtime.h)
  __global__ void name(...) {
      -> the body first calls ::emu::kernel_entered("name")
and in the CUDA folder's .cpp files (the torch bindings, built only into the emulated backend)
  TORCH_LIBRARY_IMPL(ns, CUDA, m)  ->  TORCH_LIBRARY_IMPL(ns, CPU, m)
so that the CUDA bindings' host code and kernels serve CPU tensors (build.py's build_backend).
Line numbers are kept (a `#line` names the original file), so the emulator's messages point at
csrc. `.cu` files are copied as `.cu.cpp` for g++. Never edits the sources it reads."""
import os
import re
import sys

SHARED = re.compile(r"__shared__\s+([^;]*?)\s*;")
GLOBAL = re.compile(r"__global__\s+void\s+(\w+)\s*\(")
REGISTRATION = re.compile(r"(TORCH_LIBRARY_IMPL\(\s*\w+\s*,\s*)CUDA(\s*,)")


def _declarators(text):
    """Splits 'acc_t a, b[4]' into the type and its declarators (name, array suffix)."""
    parts = [p.strip() for p in text.split(",")]
    first = re.match(r"(.*?)\s*([A-Za-z_]\w*)\s*((?:\[[^\]]*\])*)$", parts[0], re.S)
    if not first:
        raise ValueError(f"cannot parse __shared__ declaration {text!r}")
    type_text = first.group(1)
    decls = [(first.group(2), first.group(3))]
    for p in parts[1:]:
        m = re.match(r"([A-Za-z_]\w*)\s*((?:\[[^\]]*\])*)$", p)
        if not m:
            raise ValueError(f"cannot parse __shared__ declarator {p!r}")
        decls.append((m.group(1), m.group(2)))
    return type_text, decls


def _shared(match):
    type_text, decls = _declarators(match.group(1))
    out = []
    for name, dims in decls:
        out.append(f"static ::emu::SharedSite emu_site_{name}; auto& {name} = "
                   f'emu_site_{name}.template get<{type_text}{dims}>("{name}", __FILE__, __LINE__);')
    return " ".join(out) + "\n" * match.group(0).count("\n")


def _kernel_start(src, end):
    """Start of the kernel expression ending at `end`: an identifier with an optional <...>."""
    i = end
    while i > 0 and src[i - 1].isspace():
        i -= 1
    if src[i - 1] == ">":
        depth = 0
        while True:
            i -= 1
            depth += {">": 1, "<": -1}.get(src[i], 0)
            if depth == 0:
                break
    while i > 0 and (src[i - 1].isalnum() or src[i - 1] in "_:"):
        i -= 1
    return i


def _balanced(src, start, open_ch, close_ch):
    """Index just past the bracket closing the one at src[start]."""
    depth = 0
    for i in range(start, len(src)):
        depth += {open_ch: 1, close_ch: -1}.get(src[i], 0)
        if depth == 0:
            return i + 1
    raise ValueError("unbalanced brackets")


def rewrite_launches(src):
    out, pos = [], 0
    while True:
        at = src.find("<<<", pos)
        if at < 0:
            break
        close = src.index(">>>", at)
        config = src[at + 3:close]
        paren = close + 3
        while src[paren].isspace():
            paren += 1
        args_end = _balanced(src, paren, "(", ")")
        start = _kernel_start(src, at)
        kernel = src[start:at].strip()
        call = f"{kernel}{src[paren:args_end]}"
        name = " ".join(kernel.split()).replace('"', "'")
        text = (f'::emu::launch([&] {{ {call}; }}, "{name}", __FILE__, __LINE__, {config})')
        out.append(src[pos:start])
        out.append(" ".join(text.split("\n")))
        out.append("\n" * src[start:args_end].count("\n"))
        pos = args_end
    out.append(src[pos:])
    return "".join(out)


def mark_kernels(src):
    """Each __global__ function's body starts by telling the emulator its name (which kernels a
    run launched, and the name in its messages)."""
    out, pos = [], 0
    for m in GLOBAL.finditer(src):
        body = src.index("{", _balanced(src, m.end() - 1, "(", ")"))
        out.append(src[pos:body + 1])
        out.append(f' ::emu::kernel_entered("{m.group(1)}");')
        pos = body + 1
    out.append(src[pos:])
    return "".join(out)


def register_as_cpu(src):
    """The CUDA bindings' registrations under the CPU dispatch key (the emulated backend)."""
    out, count = REGISTRATION.subn(r"\1CPU\2", src)
    if count == 0:
        raise ValueError("no TORCH_LIBRARY_IMPL(..., CUDA, ...) block to register as CPU")
    return out


def rewrite(src, origin):
    return f'#line 1 "{origin}"\n' + rewrite_launches(mark_kernels(SHARED.sub(_shared, src)))


def copy_tree(src_root, dst_root, cuda_dir, edits=()):
    """Copies src_root to dst_root, rewriting the files under cuda_dir (relative to src_root).
    `edits`: (relative path, old text, new text) applied before the rewrite (the mutation tests);
    each old text must occur exactly once."""
    edits = list(edits)
    for folder, _, files in os.walk(src_root):
        rel_folder = os.path.relpath(folder, src_root)
        os.makedirs(os.path.join(dst_root, rel_folder), exist_ok=True)
        for name in files:
            rel = os.path.normpath(os.path.join(rel_folder, name))
            with open(os.path.join(src_root, rel)) as f:
                text = f.read()
            for path, old, new in edits:
                if path == rel:
                    if text.count(old) != 1:
                        raise ValueError(f"edit for {rel}: {old!r} occurs {text.count(old)} times")
                    text = text.replace(old, new)
            is_cuda = os.path.normpath(rel_folder) == os.path.normpath(cuda_dir)
            if is_cuda and name.endswith((".cu", ".cuh", ".h")):
                origin = os.path.join(os.path.basename(src_root), rel)
                text = rewrite(text, origin)
            elif is_cuda and name.endswith(".cpp"):
                origin = os.path.join(os.path.basename(src_root), rel)
                text = f'#line 1 "{origin}"\n' + register_as_cpu(text)
            target = os.path.join(dst_root, rel + (".cpp" if name.endswith(".cu") else ""))
            old_text = None
            if os.path.exists(target):
                with open(target) as f:
                    old_text = f.read()
            if old_text != text:  # unchanged files keep their time: make rebuilds only what changed
                with open(target, "w") as f:
                    f.write(text)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit("usage: rewrite.py SRC_ROOT DST_ROOT CUDA_DIR_RELATIVE")
    copy_tree(sys.argv[1], sys.argv[2], sys.argv[3])
