"""A comparison grid: methods x seeds (x students x label fractions), each
cell an ordinary ``ega_tf.train`` workdir (``comparison.tables`` makes the
tables from them).

    cells = grid.make_cells(["none", "ega"], seeds=[0, 1], students=["resnet8"],
                            fractions=[0.1])
    grid.run(base_config, cells, "runs/cmp")       # resumable
    rows = tables.collect(cells, "runs/cmp")
    tables.write_tables(rows, "runs/cmp", header, order)  # results.csv, summary.md

A rerun skips finished cells and resumes interrupted ones (each cell's
workdir does that itself); a diverged cell is recorded and the grid goes
on. ``ega_tf.compare`` is the command line; ``comparison.pictures`` draws
the figures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import List

from ega_tf import config as config_lib
from ega_tf import methods, students
from ega_tf.core.errors import ConfigError, UserError
from ega_tf.training import workdir as wd

GRID = "grid.json"
# A balanced cell's label is its method's name with this.
BALANCED = " (balanced)"
# The fields a cell sets; the rest of the config is the grid's.
AXES = ("distill", "student", "labeled_fraction", "seed", "weights")


@dataclasses.dataclass(frozen=True)
class Cell:
    method: type  # its Method class (a name given is resolved to it)
    student: str
    labeled_fraction: float
    seed: int
    weights: str = "published"  # config.weights: published | balanced

    def __post_init__(self):
        object.__setattr__(self, "method", methods.get(self.method))

    @property
    def method_label(self):
        """The method's name (a method from a file: its class's name)."""
        return self.method.name

    @property
    def label(self):
        """The method's name in tables and figures, with ``(balanced)``
        for balanced weights."""
        return self.method_label + (BALANCED if self.balanced else "")

    @property
    def balanced(self):
        return self.weights == "balanced"

    @property
    def student_label(self):
        """The student's name in tables and workdirs (a model of yours: its
        file's or function's name)."""
        return students.parse(self.student).label

    @property
    def name(self):
        """The cell's workdir name: stable when axes are extended."""
        return (f"{self.method_label}{'_balanced' if self.balanced else ''}"
                f"_{self.student_label}_lf{self.labeled_fraction:g}"
                f"_s{self.seed}")

    @property
    def group(self):
        """The cells averaged together: all seeds of one setting."""
        return (self.student_label, self.labeled_fraction, self.label)

    def describe(self):
        return (f"{self.label} {self.student_label} labeled="
                f"{self.labeled_fraction:g} seed={self.seed}")


def make_cells(method_names, seeds, students, fractions,
               weights=("published",)) -> List[Cell]:
    """The grid's cells, seed-major (every method of seed 0 first, so a
    partial grid already compares the methods), each method's weightings
    side by side; a method with nothing to balance (``none``) runs once,
    with its published weights."""
    # Each name resolved once (an unknown one lists the valid ones).
    classes = [methods.get(name) for name in method_names]
    return [Cell(m, s, float(f), int(seed), w) for s in students
            for f in fractions for seed in seeds for m in classes
            for w in balanceable(m, weights)]


def balanceable(method, weights):
    """The weightings of ``weights`` that apply to ``method`` (a Method
    class)."""
    if method.uses_teacher:
        return list(weights)
    return [w for w in weights if w == "published"][:1] or ["published"]


def labels(method_names, weights=("published",)):
    """The methods' labels in table order (each method's weightings side
    by side)."""
    classes = [methods.get(name) for name in method_names]
    return [Cell(m, "", 0.0, 0, w).label for m in classes
            for w in balanceable(m, weights)]


def cell_config(base, cell):
    """``base`` with the cell's axes set and the loss fields the method
    does not read cleared (a grid-wide --config.loss.FIELD applies to the
    methods that read FIELD), resolved."""
    c = base.copy_and_resolve_references()
    c.distill, c.student = cell.method.spec, cell.student
    c.labeled_fraction, c.seed = cell.labeled_fraction, cell.seed
    c.weights = cell.weights
    used = set(cell.method.fields())
    with c.loss.unlocked():
        for field in list(c.loss.keys()):
            if field not in used:
                c.loss[field] = None
    return config_lib.resolve(c)


def with_values(config, values):
    """``config`` with ``values`` ({"loss.FIELD" | "optim.lr": value}, as
    ``compare --tune`` chose them) set, resolved again (every field
    checked)."""
    from ega_tf import config as config_lib
    c = config.copy_and_resolve_references()
    for name, value in values.items():
        section, field = name.split(".")
        c[section][field] = float(value)
    return config_lib.resolve(c)


def configs(base, cells, chosen=None):
    """Every cell's resolved config, checked before anything runs; one
    ConfigError lists the problems of all cells. ``chosen``: {(method,
    student, labeled fraction): values} from ``compare --tune``, set in
    the cells of that setting."""
    out, problems = {}, []
    for cell in cells:
        values = (chosen or {}).get((cell.method, cell.student,
                                     cell.labeled_fraction, cell.weights),
                                    {})
        try:
            out[cell] = with_values(cell_config(base, cell), values)
        except UserError as e:
            problems.append(f"{cell.describe()}: {e}")
    if problems:
        raise ConfigError(" | ".join(dict.fromkeys(problems)))
    return out


def claim(base, workdir, tuning=None):
    """Records the grid's shared config (and ``tuning``, compare's --tune
    settings) in ``workdir``; refuses a workdir that holds a grid of other
    settings (its axes may be extended)."""
    path = os.path.join(workdir, GRID)
    mine = {**_shared(base), "tune": tuning or {"trials": 0}}
    if os.path.exists(path):
        differ = wd.differing_fields(wd.read_json(path)["config"], mine)
        if differ:
            shown = "; ".join(f"{k}: {a!r} there, {b!r} now"
                              for k, a, b in differ[:6])
            raise UserError(f"{workdir} holds a comparison of other "
                            f"settings ({shown}). Use another --workdir.")
    os.makedirs(workdir, exist_ok=True)
    wd.write_json(path, {"config": mine})


def _shared(base):
    """The config without the fields the cells set."""
    shared = wd.config_record(base)
    for key in AXES:
        shared.pop(key, None)
    shared.pop("loss", None)  # per method
    return shared


def cell_state(workdir):
    """"finished", "diverged", "partial" or "new"."""
    results = os.path.join(workdir, wd.RESULTS)
    if os.path.exists(results):
        return wd.read_json(results).get("status", "finished")
    return "partial" if os.path.exists(os.path.join(workdir, wd.CONFIG)) \
        else "new"


def lockstep_groups(cells, cell_configs):
    """``cells`` in groups that see the same batches, views and teacher
    features (``loop.lockstep_key``: the same seed and labeled
    fraction; any methods and students), in order of their first cell."""
    from ega_tf.training import loop
    groups = {}
    for cell in cells:
        key = loop.lockstep_key(cell_configs[cell])
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def run(base, cells, workdir, verbose=0, log=print, after_cell=None,
        cell_configs=None, share_teacher=True):
    """Trains every cell that has not finished, printing one line per cell
    with the time left; returns {cell: status}. ``cell_configs``: the
    cells' resolved configs when the caller has them (``configs``, with the
    values ``compare --tune`` chose). ``share_teacher``: the cells of one
    seed and labeled fraction train in lockstep in one process
    (``loop.run_lockstep``: one batch and one teacher forward per step
    for all of them, each cell's numbers those of its run alone); false
    trains them one by one."""
    import keras
    cell_configs = cell_configs or configs(base, cells)
    todo = [c for c in cells if cell_state(os.path.join(workdir, c.name))
            not in ("finished", "diverged")]
    if len(todo) < len(cells):
        log(f"{len(cells) - len(todo)} of {len(cells)} cells finished "
            "earlier; their results are kept.")
    status = {}
    number = _numbering(cells)
    for cell in cells:
        if cell not in todo:
            status[cell] = cell_state(os.path.join(workdir, cell.name))
    groups = (lockstep_groups(todo, cell_configs) if share_teacher
              else [[c] for c in todo])
    spent, done = 0.0, 0
    for group in groups:
        for cell in group:
            state = cell_state(os.path.join(workdir, cell.name))
            log(f"{number(cell)} {cell.describe()}: "
                + ("resuming" if state == "partial" else "training")
                + ("" if len(group) == 1 else
                   f" (in lockstep with {len(group) - 1} other cell"
                   f"{'s' if len(group) > 2 else ''}: one teacher forward "
                   "per step)") + "...")
        begin = time.time()
        with quiet(verbose == 0):
            outcomes = _train_group(group, cell_configs, workdir, verbose)
        seconds = time.time() - begin
        _log_store(outcomes, log)
        spent, done = spent + seconds, done + len(group)
        left = len(todo) - done
        eta = (f"; about {duration(spent / done * left)} left for {left}"
               f" cell{'s' if left != 1 else ''}" if left else "")
        for cell, outcome in zip(group, outcomes):
            status[cell] = ("diverged" if isinstance(outcome, Exception)
                            else "finished")
            took = (duration(seconds) if len(group) == 1 else
                    f"{duration(seconds)} for the {len(group)} cells")
            log(f"{number(cell)} {cell.describe()}: {_outcome(outcome)} in "
                f"{took}" + (eta if cell is group[-1] else ""))
        # Keras's global state only: Python's own collector frees the
        # cell's graphs, and a forced collection here costs time per cell
        # (docs/speed.md, "Start-up").
        keras.backend.clear_session(free_memory=False)
        if after_cell is not None:
            for cell in group:
                after_cell(cell)
    return status


def _log_store(outcomes, log):
    """One line on the group's teacher store (``teacher_views``): computed
    by this group, or read."""
    store = next((o["teacher_store"] for o in outcomes
                  if isinstance(o, dict) and "teacher_store" in o), None)
    if store is not None:
        log(f"Teacher store ({store['views']} views per image): "
            + (f"computed in {duration(store['build_seconds'])}"
               if store["built_by_this_run"] else "read (computed earlier)")
            + f", {store['path']}")


def _numbering(cells):
    """"[ 3/45]": a cell's place in the grid."""
    width = len(str(len(cells)))
    return lambda cell: f"[{cells.index(cell) + 1:{width}d}/{len(cells)}]"


def _train_group(group, cell_configs, workdir, verbose):
    """Each cell's results dict or DivergedError."""
    from ega_tf.training import divergence, loop
    runs = [(cell_configs[c], os.path.join(workdir, c.name)) for c in group]
    if len(runs) > 1:
        return loop.run_lockstep(runs, verbose)
    try:
        return [loop.run(*runs[0], verbose)]
    except divergence.DivergedError as e:
        return [e]


def _outcome(outcome):
    """A cell's result in one phrase."""
    if isinstance(outcome, Exception):
        return f"DIVERGED ({outcome})"
    chosen = outcome.get("test_top1_at_best_val")
    return (f"test top-1 last {outcome['test_top1_last']:.2f}"
            + (f", at best val {chosen:.2f}" if chosen is not None else "")
            + (" (COLLAPSED since epoch "
               f"{outcome['collapsed_since_epoch']})"
               if outcome.get("collapsed") else ""))


@contextlib.contextmanager
def quiet(quiet):
    """Only warnings from a cell's training when ``quiet``: the grid's own
    line per cell says what happened."""
    from absl import logging
    before = logging.get_verbosity()
    if quiet:
        logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        logging.set_verbosity(before)


def duration(seconds):
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
