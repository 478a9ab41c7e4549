"""Constants shared across the package: normalisation statistics, and the
published recipe's length.

Each checkpoint family normalises with the statistics it was trained with;
the student and the locally pretrained teacher use CLIP's, as EGA's published
recipe does for both views.
"""

# The published recipe's epochs (RepDistiller, EGA, mdistiller on
# CIFAR-100). Schedules written in its epochs (the learning-rate decays,
# DKD's warm-up) keep their place as fractions of a run of other length.
PUBLISHED_EPOCHS = 240

# Logged every step and evaluation beside the loss terms (not part of the
# loss, never a reason to stop): the share of the student's pooled features
# exactly zero, and the mean norm of its embedding x_s.
DIAGNOSTICS = ("zero_features", "xs_norm")

# A student whose pooled features on the test set are exactly zero in at
# least this share has collapsed (its last ReLUs dead for nearly every
# image). Measured on digits (docs/notes.md): healthy runs
# stay far below, collapsed ones far above.
COLLAPSED_SHARE = 0.5

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWAV_STD = (0.228, 0.224, 0.225)  # SwAV's own evaluation transform
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# RepDistiller's CIFAR-100 normalisation (its dataset/cifar100.py).
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
# solo-learn's linear evaluation of both CIFARs (its classification
# dataloader): the CIFAR-10 statistics.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.247, 0.243, 0.261)

# How a teacher's evaluation transform fits an image to its square input
# (ega_tf/teachers/preprocess.py): center (resize the shorter side, crop
# the centre), squash (resize to the square, ignoring the aspect ratio),
# crop_first (SimCLR's: crop, then resize).
CROP_MODES = ("center", "squash", "crop_first", "crop_first_floor")
