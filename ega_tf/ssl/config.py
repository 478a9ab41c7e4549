"""The SimCLR pretraining configuration (``python -m ega_tf.pretrain``).

Sized for small images on a CPU: the digits teacher of `make demo`
trains in about two minutes. Every field can be overridden with
``--config.FIELD=VALUE``; ``--dataset``, ``--arch``, ``--epochs``,
``--batch_size`` and ``--seed`` are shorthands.
"""

import ml_collections
from ml_collections import config_dict

from ega_tf.config import check_variant


def get_config(arg=None):
    check_variant(arg)
    c = ml_collections.ConfigDict()
    c.dataset = "digits"
    c.data_dir = config_dict.placeholder(str)
    c.arch = "resnet20"          # any student-zoo network
    c.epochs = 60
    c.batch_size = 256           # images per step (2x views)
    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 2e-3            # AdamW peak rate, cosine decay
    c.optim.weight_decay = 1e-4
    c.simclr = ml_collections.ConfigDict()
    c.simclr.temperature = 0.5   # NT-Xent
    c.simclr.crop_scale = 0.3    # smallest area fraction of a crop
    c.simclr.flip = True
    c.simclr.jitter = 0.4        # colour-jitter strength (0: off)
    c.simclr.blur = False
    c.knn_k = 20                 # neighbours of the k-NN evaluation
    # Append a fixed per-feature standardisation (training-image
    # statistics) to the teacher's output.
    c.standardize = True
    c.seed = 0
    c.precision = "float32"
    if arg == "smoke":
        c.epochs = 1
        c.batch_size = 128
    return c


def validate(config):
    """Raises ConfigError listing every problem of ``config``."""
    from ega_tf import data, students
    from ega_tf.core.errors import ConfigError, UserError
    from ega_tf.core.runtime import check_precision
    problems = []
    for fn, arg in ((data.check_name, config.dataset),
                    (students.STUDENTS.get, config.arch),
                    (check_precision, config.precision)):
        try:
            fn(arg)
        except UserError as e:
            problems.append(str(e))
    for name, ok in (("epochs", config.epochs >= 1),
                     ("batch_size", config.batch_size >= 2),
                     ("optim.lr", config.optim.lr > 0),
                     ("optim.weight_decay", config.optim.weight_decay >= 0),
                     ("simclr.temperature", config.simclr.temperature > 0),
                     ("simclr.crop_scale", 0 < config.simclr.crop_scale <= 1),
                     ("knn_k", config.knn_k >= 1)):
        if not ok:
            problems.append(f"{name} is out of range.")
    if problems:
        raise ConfigError(" | ".join(problems))
