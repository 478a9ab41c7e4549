"""Normalisation statistics shared by teachers and students.

Each checkpoint family normalises with the statistics it was trained with;
the student and the locally pretrained teacher use CLIP's, as EGA's published
recipe does for both views.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWAV_STD = (0.228, 0.224, 0.225)  # SwAV's own evaluation transform
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
