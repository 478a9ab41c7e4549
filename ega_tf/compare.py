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
embeddings.png and graphs.png. Each cell holds out a validation split
(VAL_FRACTION of each class's labeled training images, unless
--config.data.val_fraction says otherwise); summary.md reports the test
top-1 of the epoch chosen on it beside the last epoch's. Any config
field applies to every cell (--config.epochs=...); --config.loss.FIELD
applies to the methods that read FIELD.
"""

from __future__ import annotations

import os
import sys
import time

from ega_tf import cli
from ega_tf.core.errors import UserError
from ega_tf.training import probe

# The grid's axes: each a list flag that sets one config field per cell.
AXES = {
    "methods": ("distill", "Distillation methods to compare (see "
                "`python -m ega_tf.train --help` or docs/methods.md)."),
    "seeds": ("seed", "Seeds: each method runs once per seed."),
    "student": ("student", "Student network(s)."),
    "labeled_fraction": ("labeled_fraction", "Fraction(s) of the training "
                         "labels kept; the rest become -1."),
    "weights": ("weights", "Method weights: published (each method's "
                "own), balanced (each term's gradient held at the "
                "cross-entropy's, docs/balanced.md); "
                "published,balanced runs both side by side."),
}


# The validation split of every cell unless --config.data.val_fraction is
# given (0 turns it off): a tenth of each class's labeled training images,
# held out with the cell's seed, so summary.md can report the test top-1 of
# the epoch chosen on them and --tune can search on them.
VAL_FRACTION = 0.1


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
    for flag in ("seeds", "student", "labeled_fraction", "weights"):
        field = AXES[flag][0]
        cli.define("list", flag, None, f"{AXES[flag][1]} Comma-separated; "
                   f"default: the config's {field}.", flag_values)
    cli.define("string", "workdir", None, "The grid's directory (default: "
               "runs/compare_<dataset>).", flag_values)
    cli.define("integer", "verbose", 0, "0: one line per run; 2: also one "
               "line per epoch.", flag_values)
    cli.define("integer", "tune", 0, "Trials per method searching its "
               "main weights (and, with --tune_lr, the learning rate) on "
               "the validation split before the grid trains; 0: the "
               "published weights (docs/compare.md, 'Tuning').", flag_values)
    cli.define("integer", "tune_epochs", None, "Epochs of each trial "
               "(default: the config's epochs).", flag_values)
    cli.define("bool", "tune_lr", False, "Also search the learning rate "
               "(over lr/10 .. 3 lr).", flag_values)
    cli.define("bool", "share_teacher", True, "Train the cells of one "
               "seed and labeled fraction together in lockstep: one batch "
               "and one teacher forward per step for all of them, each "
               "cell's numbers bit for bit those of its run alone "
               "(docs/speed.md); false: one cell after another.", flag_values)
    cli.define("bool", "pictures", True, "Draw curves.png, embeddings.png "
               "and graphs.png (needs matplotlib).", flag_values)
    cli.define("integer", "embedding_points", probe.PROBE_POINTS,
               "Test images in the t-SNE pictures (balanced over classes; "
               f"at most {probe.PROBE_POINTS}, the runs keep that many).",
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
        f"{', '.join(map(str, axes['seeds']))}; "
        + (f"validation: {config.data.val_fraction:g} of each class's "
           "labeled training images, held out." if config.data.val_fraction
           else "no validation split."), "",
        "Made by:", "", "```",
        "python -m ega_tf.compare " + " ".join(shlex.quote(a)
                                               for a in args),
        "```", ""])


def main(argv, flag_values):
    from ega_tf import methods
    from ega_tf.comparison import grid, pictures, tables, tuning
    from ega_tf.training import balance
    if len(argv) > 1:
        raise UserError(f"Unexpected argument(s) {' '.join(argv[1:])}: "
                        "every setting is a --flag (see --help).")
    base = cli.config_from_flags(flag_values, _shortcuts())
    from ml_collections import config_flags
    if "data.val_fraction" not in config_flags.get_override_values(
            flag_values["config"]) and not base.data.val_fraction:
        base.data.val_fraction = VAL_FRACTION
    method_names = _axis(flag_values, "methods", base, str)
    unknown = [m for m in method_names if not methods.is_file_spec(m)
               and m not in methods.METHODS]
    if unknown:
        raise UserError(f"Unknown method(s) {', '.join(unknown)} in "
                        "--methods. Valid names: "
                        f"{', '.join(methods.METHODS.names())} (or "
                        "path/to/my_method.py:MyMethod).")
    weights = _axis(flag_values, "weights", base, str)
    for value in weights:
        balance.check_weights(value)
    cells = grid.make_cells(
        method_names, _axis(flag_values, "seeds", base, int),
        _axis(flag_values, "student", base, str),
        _axis(flag_values, "labeled_fraction", base, float), weights)
    if flag_values.pictures:
        pictures.check_matplotlib()
        if not 2 <= flag_values.embedding_points <= probe.PROBE_POINTS:
            raise UserError(
                f"--embedding_points={flag_values.embedding_points}: the "
                f"pictures draw from 2 to {probe.PROBE_POINTS} test images "
                "(each run keeps the embeddings of that many).")
    workdir = flag_values.workdir or os.path.join(
        "runs", f"compare_{base.dataset.replace(':', '_').replace('/', '_')}")
    configs = grid.configs(base, cells)
    tune = {"trials": flag_values.tune, "epochs": flag_values.tune_epochs,
            "lr": flag_values.tune_lr}
    tuning.check(base, tune["trials"], tune["epochs"])
    grid.claim(base, workdir, tune if tune["trials"] else None)
    print(f"Comparing {len(method_names)} method(s) in {len(cells)} runs "
          f"in {workdir}.", flush=True)

    def log(text):
        print(text, flush=True)

    cost = {}
    if tune["trials"]:
        by_setting = tuning.search(
            base, cells, workdir, tune["trials"], epochs=tune["epochs"],
            tune_lr=tune["lr"], verbose=flag_values.verbose, log=log,
            cost=cost)
        chosen = {(s.method, s.student, s.labeled_fraction, s.weights): v
                  for s, v in by_setting.items() if v}
        configs = grid.configs(base, cells, chosen)
    begin = time.time()
    grid.run(base, cells, workdir, flag_values.verbose, log,
             cell_configs=configs, share_teacher=flag_values.share_teacher)
    if tune["trials"]:
        runs = f"{len(cells)} run{'s' if len(cells) != 1 else ''}"
        log(f"Tuning: {cost['trials']} trials ({cost['pruned']} pruned, "
            f"{cost['failed']} failed) took {grid.duration(cost['seconds'])}"
            f"; the grid's {runs} took "
            f"{grid.duration(time.time() - begin)} (this process's time; "
            "work done by an earlier one counts 0).")
    rows = tables.collect(cells, workdir)
    # Tables and figures name a method from a file by its class's name.
    labels = list(dict.fromkeys(grid.labels(method_names, weights)))
    if flag_values.pictures:
        pictures.draw(rows, workdir, labels, flag_values.embedding_points,
                      log)
    tables.write_hparams(rows, {c.name: configs[c] for c in cells}, workdir)
    text = header(next(iter(configs.values())), cells,
                  cli.command_line(flag_values))
    if tune["trials"]:
        text += "\n" + tuning.markdown(by_setting, tune["trials"],
                                       tune["epochs"])
    tables.write_tables(rows, workdir, text, labels)
    with open(os.path.join(workdir, tables.SUMMARY)) as f:
        print(f.read())
    written = [tables.RESULTS_CSV, tables.SUMMARY]
    if tune["trials"]:
        written += [tuning.TUNING_CSV, tuning.TUNED]
    if flag_values.pictures:
        written += [pictures.CURVES, pictures.EMBEDDINGS, pictures.GRAPHS]
    print("Wrote " + ", ".join(os.path.join(workdir, n) for n in written))


def help_extra(flag_values):
    from ega_tf import train
    return train.help_extra(flag_values)


if __name__ == "__main__":
    cli.run(define_flags, main, help_extra)
