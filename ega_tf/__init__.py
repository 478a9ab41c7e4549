"""ega_tf: distil a frozen self-supervised teacher into a small supervised
student with Embedding Graph Alignment (Ma, Chen & Akata, BMVC 2022)."""

__version__ = "0.1.0"
