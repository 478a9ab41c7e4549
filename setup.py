"""ega_tf: Embedding Graph Alignment distillation on Keras 3 / TensorFlow."""

from setuptools import find_packages, setup

DEPLOY = ["ai-edge-litert>=2.3", "tf2onnx>=1.17", "onnx>=1.23",
          "onnxruntime>=1.32"]

setup(
    name="ega_tf",
    version="0.1.0",
    description=("Distil a frozen self-supervised teacher into a small "
                 "supervised student with Embedding Graph Alignment "
                 "(Ma, Chen & Akata, BMVC 2022)."),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ega_tf", "ega_tf.*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.12",  # keras.distillation
        "keras-hub>=0.32",
        "tensorflow-datasets>=4.9.8",
        # TFDS imports it lazily to prepare a dataset (checksums lookup).
        "importlib_resources",
        "tensorboard",
        "absl-py",
        "ml-collections>=1.0",
        "scikit-learn",
        "numpy",
        # compare --tune: the samplers that propose each trial's weights.
        "optuna>=4.5,<5",
    ],
    extras_require={
        # torch==2.13.0 is pinned: an unpinned torch pulls the CUDA build.
        "convert": ["torch==2.13.0", "safetensors", "pillow"],
        # Running exported TFLite files (LiteRT) and writing/running ONNX
        # files; the lower bounds are the versions tested.
        "deploy": DEPLOY,
        # transformers: the independent reference for Hugging Face folders.
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0",
                 "safetensors", "pillow", "transformers>=5.0,<6", *DEPLOY],
        "plot": ["matplotlib"],
    },
)
