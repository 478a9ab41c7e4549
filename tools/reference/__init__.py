"""Reference implementations of the teachers in their source frameworks.

Written here from the publishers' architectures, with parameter names as in
their checkpoints, so a published file loads into them strictly:

- ``torch_resnet``: torchvision-layout ResNets (PyTorch);
- ``torch_clip``: OpenAI CLIP's ModifiedResNet and a stand-in text tower
  that gives files the published key layout (PyTorch);
- ``torch_vit``: timm-layout ViTs (DINO, MoCo v3) and CLIP's ViT (PyTorch);
- ``tf_simclr``: SimCLR's ResNet computed with raw ``tf.nn`` ops from its
  TF1 variables, and a TF1 ``Saver`` writer (TensorFlow).

They are what the parity tests compare against, and what
``tools/parity.py`` runs a real checkpoint through. Nothing in training
imports them; the PyTorch ones need the ``[convert]`` extra.
"""
