"""RepDistiller's CIFAR-100 protocol: resnet32x4 -> resnet8x4.

The setting of the tables that RepDistiller, mdistiller, DIST_KD, MLKD and
logit standardization report (docs/reproduce.md): a supervised resnet32x4
teacher (RepDistiller's ``resnet32x4_vanilla/ckpt_epoch_240.pth``, given as
``--teacher``, converted once), a resnet8x4 student, every label, 240
epochs of SGD (lr 0.05, momentum 0.9, weight decay 5e-4, batch 64, x0.1 at
epochs 150, 180 and 210), RandomCrop(32, padding 4) and a horizontal flip,
the same augmented image for teacher and student, and the logit methods
reading the teacher's own classifier.
"""

from ega_tf.config import check_variant, default_config


def get_config(arg=None):
    check_variant(arg)
    c = default_config()
    c.dataset = "cifar100"
    c.student = "resnet8x4"
    c.labeled_fraction = 1.0
    c.epochs = 240
    c.batch_size = 64
    c.optim.lr = 0.05
    # RepDistiller feeds one augmented batch to both networks.
    c.teacher_view = "same"
    c.teacher_logits = "classifier"
    if arg == "smoke":
        c.epochs = 1
    return c
