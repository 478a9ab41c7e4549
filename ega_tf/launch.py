r"""Starts a multi-worker training run on this machine.

    python -m ega_tf.launch --workers=2 -- --dataset=digits --epochs=2 \
        --teacher=teacher.keras --workdir=runs/two_workers

Starts N ``python -m ega_tf.train`` processes, each with a ``TF_CONFIG``
naming all of them on free loopback ports (127.0.0.1 only) and its own index,
so TensorFlow's ``MultiWorkerMirroredStrategy`` joins them. Their output is
streamed with a ``[worker i]`` prefix. If one worker fails, the others are
stopped and the launcher exits with the first failure's status. Worker 0
(the chief) writes the workdir; the others keep their checkpoint copies in
temporary directories they remove.

On several hosts, start ``python -m ega_tf.train`` on each with a
``TF_CONFIG`` naming every host instead (BUILD.md, "Several GPUs and
machines").
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

from ega_tf import cli
from ega_tf.core.errors import UserError


def define_flags(flag_values):
    cli.define("integer", "workers", 2, "Worker processes to start.",
               flag_values)


def free_ports(n):
    """``n`` distinct free TCP ports on 127.0.0.1."""
    sockets, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _stream(proc, index, out):
    for line in proc.stdout:
        out.write(f"[worker {index}] {line}")
        out.flush()


def launch(workers, train_args, out=sys.stdout):
    """Runs the workers; returns the exit status (0, or the first
    failure's)."""
    ports = free_ports(workers)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for i in range(workers):
        env = {**os.environ, "TF_CONFIG": json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": i}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ega_tf.train",
             "--config.distribute.strategy=multi_worker", *train_args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, bufsize=1))
    threads = [threading.Thread(target=_stream, args=(p, i, out),
                                daemon=True) for i, p in enumerate(procs)]
    for t in threads:
        t.start()
    status = 0
    pending = set(range(workers))
    while pending:
        for i in list(pending):
            code = procs[i].poll()
            if code is None:
                continue
            pending.discard(i)
            if code and not status:
                status = code
                out.write(f"[launch] worker {i} failed with status {code}; "
                          "stopping the others.\n")
                for j in pending:
                    procs[j].kill()
        if pending:
            try:
                procs[next(iter(pending))].wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
    for t in threads:
        t.join(timeout=5)
    return status


def main(argv, flag_values):
    if flag_values.workers < 2:
        raise UserError("--workers must be at least 2 (for one process, run "
                        "python -m ega_tf.train).")
    train_args = argv[1:]
    if train_args and train_args[0] == "--":
        train_args = train_args[1:]
    if not train_args:
        raise UserError("usage: python -m ega_tf.launch --workers=N -- "
                        "<ega_tf.train flags>")
    sys.exit(launch(flag_values.workers, train_args))


if __name__ == "__main__":
    cli.run(define_flags, main)
