"""Keras building blocks the students, teachers and methods are made of:
layers (``layers``: PyTorch-initialised convolutions and dense layers, the
students' BatchNorm), ``torch.optim.SGD`` as a Keras optimizer
(``optimizers``), the arithmetic of a step over every replica
(``replicas``), ``keras.ops`` imported on first use (``keras_ops``) and the
loading of ``.keras`` files with these classes registered
(``serialization``)."""
