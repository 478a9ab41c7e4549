"""Default training configuration: the published EGA recipe (DESIGN.md §2).

``python -m ega_tf.train`` starts from ``default_config()``; the files in
``configs/`` derive from it. Every field can be overridden on the command line
(``--config.optim.lr=0.1``) and the resolved config is written to the workdir.
"""

import ml_collections
from ml_collections import config_dict


def default_config(arg=None):
    """The resolved defaults; ``arg="smoke"`` shrinks to a seconds-long run."""
    c = ml_collections.ConfigDict()
    c.dataset = "cifar100"
    c.data_dir = config_dict.placeholder(str)
    c.download = False          # let TFDS download when not prepared
    c.labeled_fraction = 1.0    # the rest of the labels become -1
    c.student = "resnet8x4"
    c.teacher = ""              # a teacher .keras file (distill=ega)
    c.trust_saved_model = False  # allow teachers that call a SavedModel
    c.distill = "ega"           # ega | none (cross-entropy baseline)
    c.embed_dim = 256

    c.loss = ml_collections.ConfigDict()
    c.loss.gamma = 1.0          # cross-entropy
    c.loss.beta = 1.0           # EGA
    c.loss.alpha = 0.0          # Hinton KD on the two heads' logits
    c.loss.node_weight = 0.8
    c.loss.edge_weight = 0.24
    c.loss.kd_temperature = 4.0

    c.optim = ml_collections.ConfigDict()
    # None: 0.05, or 0.01 for MobileNetV2 / ShuffleV1 / ShuffleV2 as the
    # published (RepDistiller) scripts do.
    c.optim.lr = config_dict.placeholder(float)
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4  # coupled, as torch.optim.SGD
    c.optim.decay_fractions = (150 / 240, 180 / 240, 210 / 240)
    c.optim.decay_factor = 0.1
    c.optim.teacher_head_lr = 0.01

    c.epochs = 240
    c.batch_size = 64
    c.eval_batch_size = 256
    # RandomCrop padding of both views; None: 4 px at 32 px, scaled with the
    # resolution (8 at 64 px, 12 at 96 px).
    c.padding = config_dict.placeholder(int)
    c.teacher_view = "independent"  # independent | same | clean
    c.unlabeled_split = False   # stl10: add the 100k unlabelled images (-1)

    c.data = ml_collections.ConfigDict()
    # Side of the square training images; None: the dataset's own (folder:
    # the shorter side of the first training image).
    c.data.image_size = config_dict.placeholder(int)
    c.data.cache = "auto"       # auto | memory | none (decoded images)
    c.data.cache_limit_gb = 8.0  # auto caches splits up to this size
    c.data.shuffle_buffer = config_dict.placeholder(int)  # None: whole split
    c.data.deterministic = True  # seeded, reproducible order
    c.seed = 0
    c.precision = "float32"     # float32 | mixed_float16 | mixed_bfloat16
    c.jit_compile = "auto"      # auto | true | false
    c.checkpoint_every = 1      # epochs between checkpoints
    c.export = True             # write <workdir>/saved_model at the end

    if arg == "smoke":
        c.dataset = "digits"
        c.student = "resnet8"
        c.epochs = 1
        c.batch_size = 32
    return c


def get_config(arg=None):
    """Lets this file serve as ``--config`` itself (the CLI's default)."""
    return default_config(arg)
