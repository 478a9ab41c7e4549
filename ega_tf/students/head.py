"""The deployable student: a backbone with its input normalisation, the
projection into the shared embedding and the classifier that reads it.

What ``training.distiller.Distiller`` trains and ``deploy.serving`` exports: uint8
images in, ``{"embedding": x_s, "logits", "features"}`` out.
"""

import keras
from keras import layers

from ega_tf.core.constants import CLIP_MEAN, CLIP_STD
from ega_tf.nn.layers import ReverseChannels, torch_dense


def build_student(backbone, num_classes, embed_dim=256, mean=CLIP_MEAN,
                  std=CLIP_STD, name="student", bgr=False):
    """The deployable student: uint8 [N, H, W, 3] -> {"embedding": x_s,
    "logits", "features": the backbone's pooled features} (serving reads
    the logits; training watches the features for dead units).

    Normalisation is inside, so the exported model accepts plain images:
    ``(pixel / 255 - mean) / std`` per channel (``bgr``: in BGR order), what
    ``backbone`` takes. The head layers compute in float32 whatever the
    global dtype policy.
    """
    inputs = keras.Input(shape=backbone.input_shape[1:], dtype="uint8",
                         name="image")
    x = layers.Rescaling(1.0 / 255.0, name="to_unit")(inputs)
    if bgr:
        x = ReverseChannels(name="to_bgr")(x)
    x = layers.Normalization(mean=list(mean), variance=[s * s for s in std],
                             name="normalize")(x)
    pooled = backbone(x)
    width = backbone.output_shape[-1]
    emb = torch_dense(embed_dim, width, name="embed", dtype="float32")(pooled)
    logits = torch_dense(num_classes, embed_dim, name="classifier",
                         dtype="float32")(emb)
    return keras.Model(inputs, {"embedding": emb, "logits": logits,
                                "features": pooled}, name=name)
