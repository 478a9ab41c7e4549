r"""Compares distillation methods: a grid of methods x seeds (x students x
label fractions) on one dataset and teacher, and its tables and figures.

    python -m ega_tf.compare --config=configs/digits.py \
        --teacher=teacher.keras --methods=none,kd,hint,rkd,pkt,sp,nce,ccl,\
crd,dkd,seed,compress,ega_node,ega_edge,ega --seeds=0,1,2 --workdir=runs/cmp

Every cell is an ordinary ``ega_tf.train`` workdir (<workdir>/<method>_
<student>_lf<fraction>_s<seed>): rerunning the command skips finished
cells and resumes an interrupted one. The grid's workdir receives
results.csv (one row per run), summary.md (mean ± std over seeds, the
differences to none and ega, train - test top-1), curves.png,
embeddings.png and graphs.png. Any config field applies to every cell
(--config.epochs=...); --config.loss.FIELD applies to the methods that
read FIELD.
"""

from __future__ import annotations

import os
import sys

from ega_tf import analysis, cli
from ega_tf.errors import UserError

# The grid's axes: each a list flag that sets one config field per cell.
AXES = {
    "methods": ("distill", "Distillation methods to compare (see "
                "`python -m ega_tf.train --help` or docs/methods.md)."),
    "seeds": ("seed", "Seeds: each method runs once per seed."),
    "student": ("student", "Student network(s)."),
    "labeled_fraction": ("labeled_fraction", "Fraction(s) of the training "
                         "labels kept; the rest become -1."),
}


def _shortcuts():
    from ega_tf import train
    return {k: v for k, v in train.SHORTCUTS.items()
            if k not in {field for field, _ in AXES.values()}}


def define_flags(flag_values):
    from ega_tf import methods
    from ega_tf.config import default_config
    # A method from a file adds its fields to the config's loss before
    # --config.loss.FIELD overrides are read.
    methods.load_from_argv(sys.argv[1:])
    config = default_config()
    cli.define_config_file(
        flag_values, os.path.join(os.path.dirname(__file__), "config.py"),
        "Python config file with get_config() for every cell (e.g. "
        "configs/digits.py); fields: --config.epochs=20.")
    cli.define_shortcuts(flag_values, config, _shortcuts())
    cli.define("list", "methods", "none,ega", AXES["methods"][1],
               flag_values)
    for flag in ("seeds", "student", "labeled_fraction"):
        field = AXES[flag][0]
        cli.define("list", flag, None, f"{AXES[flag][1]} Comma-separated; "
                   f"default: the config's {field}.", flag_values)
    cli.define("string", "workdir", None, "The grid's directory (default: "
               "runs/compare_<dataset>).", flag_values)
    cli.define("integer", "verbose", 0, "0: one line per run; 2: also one "
               "line per epoch.", flag_values)
    cli.define("bool", "pictures", True, "Draw curves.png, embeddings.png "
               "and graphs.png (needs matplotlib).", flag_values)
    cli.define("integer", "embedding_points", analysis.PROBE_POINTS,
               "Test images in the t-SNE pictures (balanced over classes; "
               f"at most {analysis.PROBE_POINTS}, the runs keep that many).",
               flag_values)


def _axis(flag_values, flag, config, convert):
    """The values of one axis: the flag's list, or the config's field."""
    field = AXES[flag][0]
    if flag_values[flag].value is None:
        return [config[field]]
    from ml_collections import config_flags
    if field in config_flags.get_override_values(flag_values["config"]):
        raise UserError(f"Set each field once: --{flag} and --config."
                        f"{field} are both given.")
    try:
        values = [convert(v) for v in flag_values[flag].value]
    except ValueError:
        raise UserError(f"--{flag} takes comma-separated values; got "
                        f"{','.join(flag_values[flag].value)!r}.") from None
    if not values or len(set(values)) != len(values):
        raise UserError(f"--{flag} needs distinct values; got "
                        f"{','.join(map(str, values))!r}.")
    return values


def header(config, cells, args):
    """summary.md's heading: what was compared, and the command."""
    import shlex
    axes = {
        "methods": list(dict.fromkeys(c.label for c in cells)),
        "seeds": list(dict.fromkeys(c.seed for c in cells))}
    return "\n".join([
        f"# Comparison on {config.dataset}", "",
        f"Teacher `{config.teacher}`; {config.epochs} "
        f"epoch{'s' if config.epochs != 1 else ''}, batch "
        f"{config.batch_size}; methods {', '.join(axes['methods'])}; seeds "
        f"{', '.join(map(str, axes['seeds']))}.", "",
        "Made by:", "", "```",
        "python -m ega_tf.compare " + " ".join(shlex.quote(a)
                                               for a in args),
        "```", ""])


def main(argv, flag_values):
    from ega_tf import grid, methods, pictures
    if len(argv) > 1:
        raise UserError(f"Unexpected argument(s) {' '.join(argv[1:])}: "
                        "every setting is a --flag (see --help).")
    base = cli.config_from_flags(flag_values, _shortcuts())
    method_names = _axis(flag_values, "methods", base, str)
    unknown = [m for m in method_names if not methods.is_file_spec(m)
               and m not in methods.METHODS]
    if unknown:
        raise UserError(f"Unknown method(s) {', '.join(unknown)} in "
                        "--methods. Valid names: "
                        f"{', '.join(methods.METHODS.names())} (or "
                        "path/to/my_method.py:MyMethod).")
    cells = grid.make_cells(
        method_names, _axis(flag_values, "seeds", base, int),
        _axis(flag_values, "student", base, str),
        _axis(flag_values, "labeled_fraction", base, float))
    if flag_values.pictures:
        pictures.check_matplotlib()
        if not 2 <= flag_values.embedding_points <= analysis.PROBE_POINTS:
            raise UserError(
                f"--embedding_points={flag_values.embedding_points}: the "
                f"pictures draw from 2 to {analysis.PROBE_POINTS} test images "
                "(each run keeps the embeddings of that many).")
    workdir = flag_values.workdir or os.path.join(
        "runs", f"compare_{base.dataset.replace(':', '_').replace('/', '_')}")
    configs = grid.configs(base, cells)
    print(f"Comparing {len(method_names)} method(s) in {len(cells)} runs "
          f"in {workdir}.", flush=True)

    def log(text):
        print(text, flush=True)

    grid.run(base, cells, workdir, flag_values.verbose, log)
    rows = grid.collect(cells, workdir)
    # Tables and figures name a method from a file by its class's name.
    labels = list(dict.fromkeys(methods.name_of(m) for m in method_names))
    if flag_values.pictures:
        pictures.draw(rows, workdir, labels, flag_values.embedding_points,
                      log)
    grid.write_hparams(rows, {c.name: configs[c] for c in cells}, workdir)
    grid.write_tables(rows, workdir, header(next(iter(configs.values())),
                                            cells,
                                            cli.command_line(flag_values)),
                      labels)
    with open(os.path.join(workdir, grid.SUMMARY)) as f:
        print(f.read())
    print("Wrote " + ", ".join(os.path.join(workdir, n) for n in (
        grid.RESULTS_CSV, grid.SUMMARY) + ((pictures.CURVES,
                                            pictures.EMBEDDINGS,
                                            pictures.GRAPHS)
                                           if flag_values.pictures else ())))


def help_extra(flag_values):
    from ega_tf import train
    return train.help_extra(flag_values)


if __name__ == "__main__":
    cli.run(define_flags, main, help_extra)
