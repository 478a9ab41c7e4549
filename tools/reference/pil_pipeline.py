"""The evaluation transform of the PyTorch families, on PIL images.

torchvision's ``Resize(shorter)`` (Pillow's resampling; the long side
becomes ``int(shorter * long / short)``), ``CenterCrop(crop)`` (offset
``int(round((side - crop) / 2))``), ``ToTensor`` and ``Normalize``. Written
with Pillow and NumPy, so torchvision is not needed. Used by the parity
tests and ``tools/parity.py``.
"""

import numpy as np


def torchvision_eval(images_uint8, shorter, crop, resample, mean, std):
    """uint8 NHWC images -> normalised float32 NHWC ``[N, crop, crop, 3]``;
    ``resample`` is "bilinear" or "bicubic"."""
    from PIL import Image
    method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[resample]
    out = []
    for img in images_uint8:
        h, w = img.shape[:2]
        size = ((shorter, int(shorter * h / w)) if w <= h
                else (int(shorter * w / h), shorter))
        pil = Image.fromarray(np.asarray(img, np.uint8)).resize(size, method)
        top = int(round((size[1] - crop) / 2.0))
        left = int(round((size[0] - crop) / 2.0))
        x = np.asarray(pil.crop((left, top, left + crop, top + crop)),
                       np.float32) / 255.0
        out.append((x - np.array(mean, np.float32)) /
                   np.array(std, np.float32))
    return np.stack(out).astype(np.float32)
