"""Self-supervised pretraining, to make a real teacher where none can be
downloaded: SimCLR (Chen et al., ICML 2020) on unlabeled training images."""

from ega_tf.ssl.simclr import SimCLR, embed, knn_accuracy, nt_xent

__all__ = ["SimCLR", "embed", "knn_accuracy", "nt_xent"]
