"""The package's layout (docs/architecture.md): the entry points, the
configuration and one package per role at the top; every import, at module
level or inside a function, runs downwards, between files and between
packages; no module is over 500 lines; each method is one file.

Read from the source with ``ast``, so a lazy import inside a function
counts as an arrow too."""

import ast
import os
import sys

from ega_tf import methods
from tests.test_case import ROOT, TestCase

PACKAGE = os.path.join(ROOT, "ega_tf")
MAX_LINES = 500
MAX_TOP_MODULES = 15


def modules():
    """{dotted name: path} of every module of the package."""
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path[:-3], ROOT).replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


def imports(mods):
    """{module: the package's modules it imports}, function-level imports
    included; ``from PKG import NAME`` counts as importing ``PKG.NAME``
    when that is a module."""
    def known(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for name, path in mods.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        package = name if path.endswith("__init__.py") else \
            name.rpartition(".")[0]
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {known(a.name) for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split("."))
                                                  - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found |= {known(f"{base}.{a.name}") or known(base)
                          for a in node.names}
        edges[name] = found - {None, name}
    return edges


def cycle(edges):
    """One cycle of the directed graph ``edges`` as a list, or None."""
    state, stack = {}, []

    def visit(v):
        state[v] = "open"
        stack.append(v)
        for w in sorted(edges.get(v, ())):
            if state.get(w) == "open":
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        state[v] = "done"
        stack.pop()
        return None

    for v in sorted(edges):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def part(name):
    """``ega_tf.training.loop`` -> ``ega_tf.training``: the top-level
    module or package a module belongs to."""
    return ".".join(name.split(".")[:2])


class LayoutTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.modules = modules()
        cls.edges = imports(cls.modules)

    def test_the_top_level_is_entry_points_configuration_and_packages(self):
        top = [n for n in self.modules if n.count(".") == 1
               and not self.modules[n].endswith("__init__.py")]
        self.assertLessEqual(len(top), MAX_TOP_MODULES, sorted(top))
        for entry in ("train", "compare", "pretrain", "convert_teacher",
                      "export", "predict", "launch", "config"):
            self.assertIn(f"ega_tf.{entry}", top)

    def test_no_module_is_over_500_lines(self):
        long = {}
        for name, path in self.modules.items():
            with open(path, encoding="utf-8") as f:
                lines = sum(1 for _ in f)
            if lines > MAX_LINES:
                long[name] = lines
        self.assertEqual(long, {})

    def test_every_import_runs_downwards(self):
        self.assertIsNone(cycle(self.edges), "a file imports another that "
                          "imports it back (through the modules listed)")
        # Between the top-level modules and packages; a package's
        # __init__ importing its own modules is not an arrow.
        between = {}
        for a, targets in self.edges.items():
            if a == "ega_tf":
                continue
            for b in targets:
                if part(a) != part(b):
                    between.setdefault(part(a), set()).add(part(b))
        self.assertIsNone(cycle(between), "two packages import each other "
                          "(through the ones listed)")

    def test_the_shared_maths_imports_no_method(self):
        self.assertEqual(
            {m for m in self.edges["ega_tf.methods.maths"]
             if m.startswith("ega_tf.methods")}, set())

    def test_the_checker_sees_lazy_and_relative_imports_and_cycles(self):
        tmp = self.tmp_path()
        (tmp / "a.py").write_text("def f():\n    from ega_tf import b\n")
        (tmp / "b.py").write_text("from . import c\n")
        (tmp / "c.py").write_text("import os\n")
        mods = {f"ega_tf.{n}": str(tmp / f"{n}.py") for n in "abc"}
        edges = imports(mods)
        self.assertEqual(edges, {"ega_tf.a": {"ega_tf.b"},
                                 "ega_tf.b": {"ega_tf.c"}, "ega_tf.c": set()})
        self.assertIsNone(cycle(edges))
        edges["ega_tf.c"] = {"ega_tf.a"}
        self.assertEqual(cycle(edges), ["ega_tf.a", "ega_tf.b", "ega_tf.c",
                                        "ega_tf.a"])

    def test_each_method_is_one_file_holding_its_losses(self):
        for name in methods.METHODS.names():
            cls = methods.get(name)
            if not cls.__module__.startswith("ega_tf."):
                continue  # a user's method another test registered
            module = sys.modules[cls.__module__]
            with self.subTest(method=name):
                self.assertEqual(module.__name__.rpartition(".")[0],
                                 "ega_tf.methods")
                self.assertIn(cls.__name__, module.__all__)
                self.assertTrue(any(n.endswith(("_loss", "_terms"))
                                    for n in module.__all__)
                                or name == "none", module.__all__)
