"""tools/check_import_cycles.py on tiny packages written here: a cycle (through an import inside a
function, a relative import, `from pkg import module`) fails, the same package without it passes;
and the benchmarks have none."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKER = os.path.join(ROOT, "tools", "check_import_cycles.py")


def write_package(root, files):
    for name, text in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)


def check(root, *packages):
    return subprocess.run([sys.executable, CHECKER, "--root", str(root), *packages],
                          capture_output=True, text=True, timeout=60)


# pkg.a -> pkg.sub.b (relative, two levels) -> pkg.c (absolute, inside a function) -> pkg.a
# (`from pkg import a`); pkg/__init__ imports a compiled submodule that has no .py file.
ACYCLIC = {
    "pkg/__init__.py": "from . import _C\nfrom .a import f\n",
    "pkg/a.py": "from .sub.b import g\n\ndef f():\n    return g()\n",
    "pkg/sub/__init__.py": "",
    "pkg/sub/b.py": "import os\n\ndef g():\n    import pkg.c\n    return pkg.c.h()\n",
    "pkg/c.py": "def h():\n    return 1\n",
}
CYCLE = dict(ACYCLIC, **{"pkg/c.py": "def h():\n    from pkg import a\n    return a\n"})


def test_a_package_without_a_cycle_passes(tmp_path):
    write_package(tmp_path, ACYCLIC)
    done = check(tmp_path, "pkg")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("no import cycles: 5 modules")


def test_a_cycle_through_function_level_and_relative_imports_fails(tmp_path):
    write_package(tmp_path, CYCLE)
    done = check(tmp_path, "pkg")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "import cycle among 3 modules: pkg.a, pkg.c, pkg.sub.b" in done.stdout
    assert "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a" in done.stdout


@pytest.mark.parametrize("package", ["pyfusedbn", "benchmarks"])
def test_the_repository_has_none(package):
    done = check(ROOT, package)
    assert done.returncode == 0, done.stdout
