"""Students: RepDistiller's CIFAR networks by name (``zoo``), any other
network (``sources``: keras.applications, a .keras file, a factory), and
the deployable student built around either (``head.build_student``)."""

from ega_tf.students.sources import CLIP_INPUT, Input, Source, build, parse
from ega_tf.students.zoo import STUDENTS, create, default_lr, names

__all__ = ["CLIP_INPUT", "Input", "STUDENTS", "Source", "build", "create",
           "default_lr", "names", "parse"]
