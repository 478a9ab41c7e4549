"""Hugging Face model folders (``config.json`` + ``model.safetensors``, as
``save_pretrained`` writes them) -> teachers, through keras-hub's
Transformers loader.

keras-hub reads the folder (``Backbone.from_preset(DIR)``: the config and
the weights, at the folder's own image size); this module only fixes what
it would get wrong for a teacher and wraps the result:

- DINOv2's position table. keras-hub resizes it with TensorFlow's bicubic
  (a = -0.5), ``transformers`` with PyTorch's (a = -0.75, and antialiasing
  for ``dinov2_with_registers``); at any size but the folder's own they
  differ by ~1e-3. The backbone is rebuilt for the teacher's input size
  with the table resized as ``transformers`` resizes it
  (``position_tables``), so the teacher computes what
  ``Dinov2Model(...).pooler_output`` computes at that size.
- DINOv3 has no table (rotary positions), so keras-hub's backbone is used
  at the input size as loaded.
- ``vit`` and ``deit`` folders are read by keras-hub's converters through
  ``_TensorLoader`` (a bare encoder's keys lack the prefix they expect),
  with the folder's LayerNorm epsilon; ``swin`` and ``metaclip_2`` as
  keras-hub loads them. These four run at the folder's own image size.

The embedding is the class token after the final norm (DINO's
``pooler_output``; ``feature=cls_patchmean`` adds the mean patch token),
Swin's mean final token, MetaCLIP 2's projected image embedding. The
preprocessing is the folder's ``preprocessor_config.json`` (its resize,
crop, statistics; the resize with Pillow's kernels, as ``transformers``'
Pillow backend), or, without one, the family's evaluation transform
(docs/checkpoints.md).
"""

from __future__ import annotations

import json
import os

from ega_tf.core.errors import ConversionError, UserError, first_line

# model_type -> (family, how transformers resizes the position table).
SUPPORTED = {"dinov2": ("dinov2", "size"),
             "dinov2_with_registers": ("dinov2", "antialias"),
             "dinov3_vit": ("dinov3", None),
             # Fixed-size ViTs (ViTModel, e.g. facebook/dino-vits16, or
             # ViTForImageClassification; DeiT), read by keras-hub's
             # converters through _TensorLoader.
             "vit": ("dino_vit", None), "deit": ("dino_vit", None),
             # The mean of the final tokens (SwinModel's pooler_output).
             "swin": ("dino_vit", None),
             # The projected image embedding (get_image_features).
             "metaclip_2": ("clip_vit", None)}
# Networks built for one image size (transformers resizes nothing).
FIXED_SIZE = ("vit", "deit", "swin", "metaclip_2")
# The tensors a classification folder carries beside the encoder.
_HEADS = ("pooler.", "classifier.", "distillation_classifier.",
          "cls_classifier.")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def is_folder(path) -> bool:
    return os.path.isdir(path) and os.path.isfile(
        os.path.join(path, "config.json"))


def read_config(path):
    try:
        with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise ConversionError(f"Could not read {path}/config.json "
                              f"({first_line(e)}).") from None
    model_type = config.get("model_type")
    if model_type not in SUPPORTED:
        raise ConversionError(
            f"{path} holds a Hugging Face {model_type!r} model; "
            "convert_teacher reads the image encoders "
            + ", ".join(sorted(SUPPORTED)) + " from a folder (other "
            "networks: convert_teacher --model, BUILD.md).")
    if not any(os.path.isfile(os.path.join(path, w)) for w in WEIGHT_FILES):
        raise UserError(
            f"{path} has config.json but no model.safetensors: download the "
            "whole folder (huggingface-cli download REPO --local-dir DIR), "
            "or save it with save_pretrained(DIR).")
    return config


# transformers' (Pillow's) resampling codes.
_RESAMPLE = {2: "pil_bilinear", 3: "pil_bicubic"}


def preprocessing(path, family, input_size=None, default_size=224):
    """(``TeacherPreprocess`` keyword arguments, where they came from) for
    the folder: its ``preprocessor_config.json``, else the family's."""
    name = os.path.join(path, "preprocessor_config.json")
    if not os.path.isfile(name):
        return (family.preprocessing(int(input_size or default_size)),
                f"the {family.name} family's evaluation transform")
    with open(name, encoding="utf-8") as f:
        c = json.load(f)

    def refuse(what):
        raise ConversionError(
            f"{name}: {what}, which a teacher's preprocessing does not do; "
            "convert the model with convert_teacher --model and declare "
            "the preprocessing (BUILD.md).")
    resample = c.get("resample", 2)
    if resample not in _RESAMPLE:
        refuse(f"resample={resample} (only 2, bilinear, and 3, bicubic)")
    if c.get("do_rescale", True) and abs(
            c.get("rescale_factor", 1 / 255) * 255 - 1) > 1e-6:
        refuse(f"rescale_factor={c['rescale_factor']}")
    size, crop = c.get("size") or {}, c.get("crop_size") or {}
    crop = crop.get("height") if c.get("do_center_crop") else None
    if "shortest_edge" in size and crop:
        side, crop_pct, mode = int(crop), crop / size["shortest_edge"], \
            "center"
    elif size.get("height") and size["height"] == size.get("width") \
            and not crop:
        side, crop_pct, mode = int(size["height"]), 1.0, "squash"
    else:
        refuse(f"size={size}, crop_size={c.get('crop_size')}, "
               f"do_center_crop={c.get('do_center_crop')}")
    normalize = c.get("do_normalize", True)
    return dict(input_size=int(input_size or side), crop_pct=crop_pct,
                crop_mode=mode, interpolation=_RESAMPLE[resample],
                mean=tuple(c["image_mean"]) if normalize else (0.0,) * 3,
                std=tuple(c["image_std"]) if normalize else (1.0,) * 3,
                antialias=True, clip=False), \
        "preprocessor_config.json"


class _TensorLoader:
    """keras-hub's converters' loader over the folder's tensors. They ask
    for ``vit.``/``deit.``-prefixed keys (a classification model's); a bare
    encoder's folder stores them without the prefix. Every tensor but the
    heads must be used (``finish``)."""

    def __init__(self, path):
        from ega_tf.teachers.checkpoint_io import read_checkpoint
        self.tensors = {}
        for name in sorted(os.listdir(path)):
            if name.endswith(".safetensors"):
                self.tensors.update(read_checkpoint(os.path.join(path, name)))
        self.used = set()

    def port_weight(self, keras_variable, hf_weight_key, hook_fn=None):
        key = hf_weight_key
        if key not in self.tensors and "." in key:
            key = key.split(".", 1)[1]
        if key not in self.tensors:
            raise ConversionError(f"The folder has no tensor {hf_weight_key}"
                                  " (nor without its model prefix).")
        value = self.tensors[key]
        if hook_fn is not None:
            value = hook_fn(value, list(keras_variable.shape))
        keras_variable.assign(value)
        self.used.add(key)

    def finish(self):
        left = sorted(k for k in self.tensors if k not in self.used and not
                      k.split(".", 1)[-1].startswith(_HEADS)
                      and not k.startswith(_HEADS))
        if left:
            raise ConversionError(f"{len(left)} tensor(s) of the folder used "
                                  "by nothing: " + ", ".join(left[:10]))


def _fixed_size_vit(path, config):
    """A ``vit`` or ``deit`` folder in keras-hub's backbone, with the
    folder's LayerNorm epsilon (keras-hub's converter keeps its default)."""
    import importlib
    converter = importlib.import_module(
        f"keras_hub.src.utils.transformers.convert_{config['model_type']}")
    kwargs = converter.convert_backbone_config(config)
    kwargs["layer_norm_epsilon"] = float(config.get("layer_norm_eps", 1e-12))
    net = converter.backbone_cls(**kwargs, name=config["model_type"])
    loader = _TensorLoader(path)
    converter.convert_weights(net, loader, config)
    loader.finish()
    return net


def _dinov2_at(loaded, size, rule):
    """``loaded`` (a DINOV2Backbone at the folder's size) rebuilt for
    ``size`` px, its position table resized by ``rule``."""
    from ega_tf.teachers import dinov2
    config = {**loaded.get_config(), "image_shape": (size, size, 3),
              "position_embedding_shape": (size, size, 3), "name": "dinov2"}
    net = type(loaded).from_config(config)
    tables = {id(v) for v in (net.embeddings.position_embeddings,
                              net.embeddings.interpolated_position_embeddings)}
    for theirs, ours in zip(loaded.weights, net.weights):
        if id(ours) not in tables:
            ours.assign(theirs)
    dinov2.set_positions(net, loaded.embeddings.position_embeddings.numpy(),
                         rule)
    return net


def _network(path, config, size, feature):
    """(token or feature network, pooling mode or None, prefix tokens)."""
    import keras_hub
    model_type = config["model_type"]
    family_rule = SUPPORTED[model_type][1]
    if model_type in ("vit", "deit"):
        return (_fixed_size_vit(path, config), None,
                1 + (model_type == "deit"))  # DeiT's distillation token
    if model_type in ("swin", "metaclip_2"):
        if feature is not None:
            raise UserError(f"--feature applies to the DINO and ViT folders;"
                            f" a {model_type} folder's feature is fixed.")
        loaded = keras_hub.models.Backbone.from_preset(path)
        if model_type == "swin":
            return loaded, "mean", 0
        import keras
        inputs = keras.Input((size, size, 3), name="pixels")
        return keras.Model(inputs, loaded.get_vision_embeddings(inputs),
                           name="backbone"), None, 0
    loaded = keras_hub.models.Backbone.from_preset(
        path, **({} if family_rule else {"image_shape": (size, size, 3)}))
    net = _dinov2_at(loaded, size, family_rule) if family_rule else loaded
    return net, None, 1 + int(config.get("num_register_tokens", 0))


def convert(path, input_size=None, feature=None, log=print):
    """The teacher ``keras.Model`` of Hugging Face folder ``path``."""
    from ega_tf.teachers import checkpoint_io, families
    from ega_tf.teachers.dinov2 import DEFAULT_INPUT_SIZE, check_input_size
    from ega_tf.teachers.preprocess import TeacherPreprocess
    from ega_tf.teachers.teacher_file import assemble
    from ega_tf.teachers.vit import check_feature, wrap_tokens

    path = os.path.normpath(os.fspath(path))
    config = read_config(path)
    model_type = config["model_type"]
    vision = config.get("vision_config", config)
    family_name, rule = SUPPORTED[model_type]
    family = families.FAMILIES[family_name]
    fixed = model_type in FIXED_SIZE
    prep, prep_source = preprocessing(
        path, family, input_size,
        int(vision["image_size"]) if fixed else DEFAULT_INPUT_SIZE)
    size = prep["input_size"]
    if fixed and size != int(vision["image_size"]):
        raise UserError(
            f"A {model_type} folder's network takes {vision['image_size']}-px"
            " images (transformers does not resize its positions by "
            "default); drop --input_size or set it to "
            f"{vision['image_size']}.")
    check_input_size(size, int(vision["patch_size"]))
    try:
        net, mode, prefix = _network(path, config, size, feature)
    except (ConversionError, UserError):
        raise
    except Exception as e:
        raise ConversionError(f"keras-hub could not read {path} "
                              f"({first_line(e)}).") from None
    if model_type == "metaclip_2":
        backbone, feature = net, "projection"
    else:
        feature = "mean" if mode else check_feature(feature or "cls")
        backbone = wrap_tokens(net, size, feature, prefix, mode=mode)
    log(f"{model_type}: {len(backbone.weights)} variables read by keras-hub "
        f"from {path}")
    arch = {k: vision[k] for k in (
        "hidden_size", "embed_dim", "num_hidden_layers", "depths",
        "num_attention_heads", "num_heads", "patch_size") if k in vision}
    arch.update(prefix_tokens=prefix, resolution=size, feature=feature,
                stored_resolution=int(vision.get("image_size", size)),
                **({"positions": rule, "positions_offset": 0.0} if rule
                   else {}))
    preprocess = TeacherPreprocess(
        name="preprocess", **prep, metadata={
            "preprocessing": prep_source, "family": f"hf_{model_type}",
            "source_file": os.path.basename(path),
            "source_sha256": checkpoint_io.sha256(path),
            "architecture": model_type, **arch,
            "embedding_dim": int(backbone.output_shape[-1]),
            "input_resolution": size})
    return assemble(backbone, preprocess, name=f"hf_{model_type}")
