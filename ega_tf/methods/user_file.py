"""A user's own method: a ``Method`` subclass in a Python file, named on
the command line as ``--distill=path/to/my_method.py:MyMethod``. The file
is executed once per process (as a module of its own, whatever the path's
spelling) and its class registered under its ``name``; docs/methods.md,
"Write your own method", walks through one."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import traceback

from ega_tf.core.errors import UserError
from ega_tf.methods.base import METHODS, Method, register

# A user's file, by its --distill spec ("path.py:Class"), once loaded.
_LOADED = {}


def is_file_spec(distill):
    """Whether ``distill`` names a class in a Python file
    (``path/to/file.py:ClassName``)."""
    path, _, cls = str(distill).rpartition(":")
    return path.endswith(".py") and bool(cls)


def load(spec):
    """The Method subclass ``spec`` (``path.py:Class``) names, its file
    executed once per process."""
    if spec in _LOADED:
        return _LOADED[spec]
    path, _, name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise UserError(f"--distill={spec}: {path!r} does not exist. Name "
                        "a Python file and a class in it: "
                        "--distill=path/to/my_method.py:MyMethod.")
    # One module per file, however the path is written.
    module_name = "ega_tf_user_method_" + hashlib.sha1(
        os.path.realpath(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name,
                                                             path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except UserError:
            raise
        except Exception as e:  # the user's file: say where and why
            del sys.modules[module_name]
            lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                     if os.path.realpath(f.filename) == os.path.realpath(
                         path)]
            where = f"{path}:{lines[-1]}" if lines else path
            raise UserError(f"--distill={spec}: running the file failed at "
                            f"{where}: {type(e).__name__}: {e}") from e
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, Method)
                       and v is not Method and v.__module__ == module_name)
        raise UserError(
            f"--distill={spec}: {path!r} has no Method subclass named "
            f"{name!r}" + (f" (it defines {', '.join(found)})" if found
                           else "; subclass ega_tf.methods.Method") + ".")
    if cls.name not in METHODS:
        try:
            register(cls)
        except ValueError as e:
            raise UserError(f"--distill={spec}: {e}") from None
    elif METHODS.get(cls.name) is not cls:
        raise UserError(f"--distill={spec}: its name {cls.name!r} is taken "
                        "by another method; give the class another name.")
    cls.spec = spec
    _LOADED[spec] = cls
    return cls


def load_from_argv(argv, flags=("distill", "methods")):
    """Loads the user methods ``argv`` names in ``--distill`` (or a
    comma-separated ``--methods``) before the config is built, so that
    their fields exist for ``--config.loss.FIELD`` overrides."""
    for i, arg in enumerate(argv):
        for flag in flags:
            value = None
            if arg.startswith(f"--{flag}="):
                value = arg.split("=", 1)[1]
            elif arg == f"--{flag}" and i + 1 < len(argv):
                value = argv[i + 1]
            for item in (value or "").split(","):
                if is_file_spec(item):
                    load(item)
