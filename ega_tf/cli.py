"""What every command line shares: start-up, flags, help and errors.

Each command module (``train``, ``pretrain``, ``convert_teacher``,
``predict``, ...) defines ``define_flags(flag_values)`` and ``main(argv,
flag_values)``, and ends with ``cli.run(define_flags, main)``. Flags are
defined only when the module runs as a program, so the modules import side by
side in one process, and a test can run a command in-process on a fresh
``FlagValues`` (``run_main``).

- TensorFlow's C++ start-up notices (oneDNN, missing CUDA drivers, failed
  ``cuInit`` on CPU-only machines) are printed before ``TF_CPP_MIN_LOG_LEVEL``
  takes effect in TensorFlow 2.19+; ``core.runtime.import_tensorflow``
  captures the process's stderr while TensorFlow loads and starts its
  devices, and gives back every line that is not one of those notices.
- ``--help`` / ``--helpshort`` / ``-h`` print the command's flags with their
  defaults (and the config fields, for commands with ``--config``) and exit 0.
- A ``UserError`` (bad input) is printed as one ``error: ...`` line, exit
  status 2; a ``RunStopped`` (a run that diverged) as one ``stopped: ...``
  line, exit status 3. Any other exception is a bug and keeps its
  traceback.
  ``EGA_TF_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

import contextlib
import os
import sys

from absl import flags

from ega_tf.core.errors import RunStopped, UserError
from ega_tf.core.runtime import import_tensorflow

EXIT_USER_ERROR = 2
EXIT_STOPPED = 3
HELP_FLAGS = ("-h", "--help", "--helpshort", "--helpfull", "-?")


def _one_line(e):
    text = str(e).strip() or type(e).__name__
    return " ".join(text.split("\n")) if len(text) < 2000 else text


@contextlib.contextmanager
def _argv(argv):
    """ml_collections' config flag reads its overrides from sys.argv, both
    when it is defined and when it is parsed."""
    saved, sys.argv = sys.argv, list(argv)
    try:
        yield
    except flags.Error as e:
        raise UserError(f"{_one_line(e)} (see --help)") from None
    except (AttributeError, KeyError, TypeError, ValueError, IOError) as e:
        if not _from_config_parsing(e):
            raise  # a bug in a command's flags: keep the traceback
        if isinstance(e, (AttributeError, KeyError)):
            # An override of a field the config does not have.
            raise UserError(f"The config has no field {_missing_field(e)}"
                            " (--help lists the fields).") from None
        # A bad config file, or an override of the wrong type.
        raise UserError("Bad --config: " + _config_error_text(e)) from None
    except SyntaxError as e:
        raise UserError(f"The --config file {e.filename} has a syntax error "
                        f"at line {e.lineno}: {e.msg}.") from None
    finally:
        sys.argv = saved


def _from_config_parsing(e):
    """Whether ``e`` was raised by ml_collections reading --config."""
    tb = e.__traceback__
    while tb is not None:
        if "ml_collections" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _missing_field(e):
    """ml_collections wraps a KeyError("'name'\nDid you mean ...?") in an
    AttributeError; the innermost message names the field."""
    while e.args and isinstance(e.args[0], BaseException):
        e = e.args[0]
    text = str(e.args[0]) if e.args else str(e)
    lines = [" ".join(line.split()) for line in text.splitlines()
             if line.strip()]
    return lines[0] + "".join(f". {line}" for line in lines[1:])


def _config_error_text(e):
    lines = [line.strip() for line in str(e).strip().splitlines()
             if line.strip()]
    # ml_collections puts the cause last, after its own context lines.
    cause = [line for line in lines if not line.startswith(("File ",
                                                            "Traceback"))]
    return (cause[-1] if cause else type(e).__name__)[:500]


def print_help(program, doc, flag_values, extra=""):
    """The command's usage: its docstring, its flags with defaults, and
    ``extra`` (e.g. the config fields)."""
    import textwrap
    out = [doc.strip(), "", f"Flags of {program}:"]
    for name in sorted(flag_values):
        flag = flag_values[name]
        if flag.name != name or not (getattr(flag, "_ega_tf_flag", False)
                                     or name == "config"):
            continue
        text = flag.help
        if flag.default is not None:
            text += f" (default: {flag.default_as_str})"
        out.append(textwrap.fill(f"--{name}: {text}", width=79,
                                 initial_indent="  ",
                                 subsequent_indent="      "))
    if extra:
        out += ["", extra.rstrip()]
    print("\n".join(out))


def define(kind, name, default, help_text, flag_values, **kw):
    """Defines one flag of a command (marked for ``print_help``)."""
    if kind == "enum":
        holder = flags.DEFINE_enum(name, default, kw.pop("enum_values"),
                                   help_text, flag_values=flag_values, **kw)
    else:
        definer = {"string": flags.DEFINE_string,
                   "integer": flags.DEFINE_integer,
                   "float": flags.DEFINE_float, "bool": flags.DEFINE_bool,
                   "list": flags.DEFINE_list}[kind]
        holder = definer(name, default, help_text, flag_values=flag_values,
                         **kw)
    flag_values[name]._ega_tf_flag = True
    return holder


def run_main(define_flags, main, argv, flag_values, help_extra=None):
    """Defines the command's flags on ``flag_values``, parses ``argv`` and
    runs ``main``; returns the exit status.

    Help requests print the usage and return 0; a ``UserError`` prints one
    line and returns 2.
    """
    module = sys.modules[main.__module__]
    spec = getattr(module, "__spec__", None)
    program = f"python -m {spec.name}" if spec else main.__module__
    helping = any(a in HELP_FLAGS for a in argv[1:])
    if helping:
        argv = [argv[0]] + [a for a in argv[1:] if a not in HELP_FLAGS]
    try:
        with _argv(argv):
            define_flags(flag_values)
            rest = flag_values(argv)
        if helping:
            extra = help_extra(flag_values) if help_extra else ""
            print_help(program, module.__doc__ or "", flag_values, extra)
            return 0
        main(rest, flag_values)
        return 0
    except UserError as e:
        if os.environ.get("EGA_TF_DEBUG"):
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunStopped as e:
        print(f"stopped: {_one_line(e)}", file=sys.stderr)
        return EXIT_STOPPED


def _without_tensorflow_info(record):
    """False for an INFO (or DEBUG) record logged through absl by
    TensorFlow's own code (its package directory); our modules' records
    and every warning pass."""
    import logging
    tf = sys.modules.get("tensorflow")
    if record.levelno > logging.INFO or tf is None:
        return True
    return not record.pathname.startswith(
        os.path.dirname(tf.__file__) + os.sep)


def run(define_flags, main, help_extra=None):
    """The ``__main__`` of a command: TensorFlow without start-up noise,
    the command's flags on absl's global ``FLAGS``, then ``main``."""
    if not any(a in HELP_FLAGS for a in sys.argv[1:]):
        import_tensorflow()  # help needs none of it
    from absl import logging
    # Log INFO lines to stderr, as absl's app.run would, without
    # TensorFlow's own (a line per checkpoint written, say).
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    logging.get_absl_logger().addFilter(_without_tensorflow_info)
    sys.exit(run_main(define_flags, main, sys.argv, flags.FLAGS,
                      help_extra))


# ---------------------------------------------------------------- configs
def define_config_file(flag_values, default_path, help_text):
    from ml_collections import config_flags
    config_flags.DEFINE_config_file("config", default_path, help_text,
                                    flag_values=flag_values)


def _flag_kind(value):
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def define_shortcuts(flag_values, config, shortcuts):
    """One flag per entry of ``shortcuts`` (config field -> help text), a
    shorthand for ``--config.FIELD``; its help shows the config default."""
    for name, help_text in shortcuts.items():
        default = config[name]
        kind = _flag_kind(default if default is not None
                          else config.get_type(name)())
        define(kind, name, None, f"{help_text} [config.{name}; config "
               f"default: {default!r}]", flag_values)


def config_value(flag_values):
    """A copy of the ``--config`` value; a config file that failed to load
    (ml_collections defers that error to the first access) is a UserError.
    """
    config = flag_values["config"].value
    try:
        return config.copy_and_resolve_references()
    except IOError as e:
        raise UserError("Cannot load the --config file: "
                        + _config_error_text(e)) from None


def config_from_flags(flag_values, shortcuts):
    """The config of ``--config`` with its ``--config.x`` overrides and the
    shortcut flags applied. A field set both ways is refused."""
    from ml_collections import config_flags
    config = config_value(flag_values)
    overridden = config_flags.get_override_values(flag_values["config"])
    given = [n for n in shortcuts if flag_values[n].present]
    clash = [n for n in given if n in overridden]
    if clash:
        raise UserError("Set each field once: " + ", ".join(
            f"--{n} and --config.{n} are both given" for n in clash) + ".")
    for name in given:
        config[name] = flag_values[name].value
    return config


def command_line(flag_values):
    """The flags given on the command line, as ``--name=value`` arguments
    (to record how an output was made)."""
    seen, out = set(), []
    for name in sorted(flag_values):
        flag = flag_values[name]
        if not flag.present or id(flag) in seen or name != flag.name:
            continue
        seen.add(id(flag))
        if name == "config":
            from ml_collections import config_flags
            out.append(f"--config={config_flags.get_config_filename(flag)}")
        else:
            out.append(flag.serialize())
    return out


def config_help(flag_values):
    """The config's fields and values, for ``--help``."""
    from ml_collections import config_flags
    config = config_value(flag_values)
    path = config_flags.get_config_filename(flag_values["config"])
    lines = [f"Config fields (from {path}; override any with "
             "--config.FIELD=VALUE):"]

    def walk(node, prefix):
        for key in sorted(node.keys()):
            value = node[key]
            if hasattr(value, "keys"):
                walk(value, f"{prefix}{key}.")
            else:
                lines.append(f"  {prefix}{key} = {value!r}")
    walk(config, "")
    return "\n".join(lines)
