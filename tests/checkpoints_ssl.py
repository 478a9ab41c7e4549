"""Checkpoint files of the DINOv2 and DINOv3 releases, Hugging Face
folders, and the files training frameworks write (PyTorch Lightning's
``.ckpt`` as solo-learn and LightlySSL save it, mmselfsup / mmpretrain's
``.pth``), in their publishers' layouts around the references in
``tools/reference`` with random weights (test support; the older families
are in ``tests/checkpoints.py``, whose ``write`` calls ``write`` here)."""

import pathlib

import torch

from tests import checkpoints
from tools.reference import torch_dinov2, torch_dinov3

WIDTH = 128  # two heads of 64, the DINO families' rule


def write_dinov2(directory, registers=0, swiglu=False, seed=0, **size):
    """A DINOv2 hub file (``dinov2_vits14_pretrain.pth`` layout: the bare
    state dict, positions stored for 518 px) and its reference network."""
    torch.manual_seed(seed)
    model = torch_dinov2.randomized(torch_dinov2.DinoV2(
        image=518, **{"dim": WIDTH, "depth": 2, "heads": 2, **size},
        registers=registers,
        swiglu=swiglu, interpolate_offset=0.0 if registers else 0.1,
        interpolate_antialias=bool(registers)), seed + 1)
    name = "dinov2_vitg14" if swiglu else "dinov2_vits14"
    path = pathlib.Path(directory) / (
        f"{name}{'_reg4' if registers else ''}_pretrain.pth")
    torch.save(model.state_dict(), path)
    return path, model


def write_dinov3(directory, swiglu=False, seed=0, **size):
    torch.manual_seed(seed)
    model = torch_dinov3.randomized(torch_dinov3.DinoV3ViT(
        **{"dim": WIDTH, "depth": 2, "heads": 2, **size}, swiglu=swiglu,
        ratio=6.0 if swiglu else 4.0), seed + 1)
    path = pathlib.Path(directory) / (
        "dinov3_vits16plus_pretrain_lvd1689m.pth" if swiglu
        else "dinov3_vits16_pretrain_lvd1689m.pth")
    torch.save(model.state_dict(), path)
    return path, model


def write_convnext(directory, seed=0, **size):
    """A DINOv3 ConvNeXt hub file (small: one or two blocks per stage)."""
    torch.manual_seed(seed)
    model = torch_dinov3.randomized(torch_dinov3.DinoV3ConvNeXt(
        **(size or {"depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128)})),
        seed + 1)
    path = pathlib.Path(directory) / "dinov3_convnext_tiny_pretrain_lvd1689m.pth"
    torch.save(model.state_dict(), path)
    return path, model


def write_hf(directory, model_type, seed=0):
    """A Hugging Face folder of a tiny random model, by save_pretrained."""
    import transformers as tr
    torch.manual_seed(seed)
    common = dict(hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=2)
    fixed = dict(intermediate_size=128, image_size=32, patch_size=8,
                 **common)
    if model_type == "vit":  # an encoder folder, pooler included
        model = tr.ViTModel(tr.ViTConfig(**fixed))
    elif model_type == "vit_classifier":  # ViTForImageClassification's
        model = tr.ViTForImageClassification(tr.ViTConfig(num_labels=10,
                                                          **fixed))
    elif model_type == "swin":
        model = tr.SwinModel(tr.SwinConfig(
            image_size=32, patch_size=4, embed_dim=16, depths=[1, 1],
            num_heads=[2, 2], window_size=4))
    elif model_type == "metaclip_2":  # both towers, as the hub's folders
        model = tr.MetaClip2Model(tr.MetaClip2Config(
            text_config=dict(hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2,
                             vocab_size=100, max_position_embeddings=16,
                             bos_token_id=0, eos_token_id=1),
            vision_config=dict(hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=24))
    elif model_type == "deit":
        model = tr.DeiTModel(tr.DeiTConfig(**fixed), add_pooling_layer=False)
    elif model_type == "dinov3_vit":
        model = tr.DINOv3ViTModel(tr.DINOv3ViTConfig(
            intermediate_size=128, patch_size=16, image_size=224,
            num_register_tokens=4, **common))
    else:
        cls, config = ((tr.Dinov2Model, tr.Dinov2Config)
                       if model_type == "dinov2" else
                       (tr.Dinov2WithRegistersModel,
                        tr.Dinov2WithRegistersConfig))
        model = cls(config(image_size=518, patch_size=14,
                           layerscale_value=0.5, **common))
    with torch.no_grad():  # away from the initial values (ones, zeros)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    path = pathlib.Path(directory) / model_type
    model.eval().save_pretrained(path)
    return path, model


def _bn1d(prefix, n):
    return {f"{prefix}.weight": torch.ones(n), f"{prefix}.bias": torch.zeros(n),
            f"{prefix}.running_mean": torch.zeros(n),
            f"{prefix}.running_var": torch.ones(n),
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _linear(prefix, a, b, bias=True):
    out = {f"{prefix}.weight": torch.randn(b, a)}
    if bias:
        out[f"{prefix}.bias"] = torch.randn(b)
    return out


def _lightning(state, version, **extra):
    """What Lightning's ``trainer.save_checkpoint`` writes around a
    module's state dict."""
    return {"epoch": 999, "global_step": 97000,
            "pytorch-lightning_version": version, "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {
                "total": {"ready": 1000, "completed": 999}}}},
            "callbacks": {}, "optimizer_states": [
                {"state": {}, "param_groups": [{"lr": 0.3, "params": [0]}]}],
            "lr_schedulers": [{"last_epoch": 999, "base_lrs": [0.3]}],
            **extra}


def solo_learn_byol(model, legacy=False):
    """solo-learn's BYOL on CIFAR (solo/methods/byol.py): backbone,
    projector, momentum copies, predictor, online classifier; files before
    its December 2021 rename say ``encoder``."""
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("fc.")}
    width = model.fc.in_features
    proj = {**_linear("projector.0", width, 64), **_bn1d("projector.1", 64),
            **_linear("projector.3", 64, 16)}
    name, momentum = (("encoder", "momentum_encoder") if legacy
                      else ("backbone", "momentum_backbone"))
    state = {**{f"{name}.{k}": v for k, v in sd.items()}, **proj,
             **{f"{momentum}.{k}": v.clone() for k, v in sd.items()},
             **{f"momentum_{k}": v.clone() for k, v in proj.items()},
             **_linear("predictor.0", 16, 64), **_bn1d("predictor.1", 64),
             **_linear("predictor.3", 64, 16),
             **_linear("classifier", width, 100)}
    return _lightning(state, "1.5.3" if legacy else "2.0.9")


def lightly_byol(model):
    """LightlySSL's ImageNet ResNet-50 BYOL benchmark
    (benchmarks/imagenet/resnet50/byol.py): online backbone and heads, the
    EMA teacher, the online classifier, Lightning's callbacks and
    hyper-parameters, the 16-bit scaler."""
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("fc.")}
    width = model.fc.in_features
    head = {**_linear("layers.0", width, 64, bias=False),
            **_bn1d("layers.1", 64), **_linear("layers.3", 64, 16)}
    state = {**{f"backbone.{k}": v for k, v in sd.items()},
             **{f"projection_head.{k}": v for k, v in head.items()},
             **{f"prediction_head.{k}": v.clone() for k, v in head.items()},
             **{f"teacher_backbone.{k}": v.clone() for k, v in sd.items()},
             **{f"teacher_projection_head.{k}": v.clone()
                for k, v in head.items()},
             **_linear("online_classifier.classification_head", width, 1000)}
    return _lightning(
        state, "2.1.2", hparams_name="kwargs",
        hyper_parameters={"batch_size_per_device": 128, "num_classes": 1000},
        MixedPrecision={"scale": 65536.0, "growth_factor": 2.0,
                        "backoff_factor": 0.5, "growth_interval": 2000,
                        "_growth_tracker": 10})


def mmselfsup_byol(model, version):
    """mmselfsup's BYOL: ``1.x`` (mmpretrain: backbone, neck, head,
    target_net.module.*), ``0.x`` (online_net.0/1 repeating backbone and
    neck, target_net.0/1), or ``backbone`` (its extraction tool's
    output)."""
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("fc.")}
    if version == "backbone":
        return {"state_dict": sd, "author": "MMSelfSup"}
    width = model.fc.in_features
    neck = {**_linear("fc0", width, 64), **_bn1d("bn0", 64),
            **_linear("fc1", 64, 16)}
    head = {f"predictor.{k}": v for k, v in {
        **_linear("fc0", 16, 64), **_bn1d("bn0", 64),
        **_linear("fc1", 64, 16)}.items()}
    state = {**{f"backbone.{k}": v for k, v in sd.items()},
             **{f"neck.{k}": v for k, v in neck.items()},
             **{f"head.{k}": v for k, v in head.items()}}
    if version == "1.x":
        state.update({f"target_net.module.0.{k}": v.clone()
                      for k, v in sd.items()})
        state.update({f"target_net.module.1.{k}": v.clone()
                      for k, v in neck.items()})
        state["target_net.steps"] = torch.tensor([50000])
    else:
        for i, part in enumerate((sd, neck)):
            state.update({f"online_net.{i}.{k}": v for k, v in part.items()})
            state.update({f"target_net.{i}.{k}": v.clone()
                          for k, v in part.items()})
    return {"meta": {"epoch": 200, "iter": 1000000, "seed": 0,
                     "mmengine_version": "0.1.0", "time": "20220825_1400",
                     "dataset_meta": {"classes": ["tench", "goldfish"]}},
            "state_dict": state}


def cifar_resnet18(seed=0):
    """solo-learn's CIFAR ResNet-18 (3x3 stem, padding 2, no max-pool)."""
    from tools.reference.torch_resnet import ResNet, randomized
    torch.manual_seed(seed)
    model = randomized(ResNet(blocks=(2, 2, 2, 2), bottleneck=False,
                              cifar_stem_padding=2, num_classes=100), seed)
    return checkpoints.trained_like(model, 32, forward=model.features)



class _FakeModules:
    """Modules named as in BYOL's release, present only while its pickle is
    written, so the file names them as the real one does and nothing in
    this process can import them when it is read."""

    def __enter__(self):
        import sys
        import types
        import typing

        class FlatMapping(dict):  # haiku's, as pickled before mid-2021
            def __reduce__(self):
                return FlatMapping, (dict(self),)

        state = typing.NamedTuple("_ByolExperimentState", [
            (f, object) for f in ("online_params", "target_params",
                                  "online_state", "target_state",
                                  "opt_state")])
        lars = typing.NamedTuple("ScaleByLarsState", [("mu", object)])
        self.names = {"haiku._src.data_structures": {"FlatMapping":
                                                     FlatMapping},
                      "byol.byol_experiment": {"_ByolExperimentState": state},
                      "byol.utils.optimizers": {"ScaleByLarsState": lars}}
        self.added = []
        for module, classes in self.names.items():
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # parents too, as import needs
                name = ".".join(parts[:i])
                if name not in sys.modules:
                    sys.modules[name] = types.ModuleType(name)
                    self.added.append(name)
            m = sys.modules[module]
            for name, cls in classes.items():
                cls.__module__, cls.__qualname__ = module, name
                setattr(m, name, cls)
        return {n: c for classes in self.names.values()
                for n, c in classes.items()}

    def __exit__(self, *exc):
        import sys
        for module in self.added:
            sys.modules.pop(module, None)


def write_byol_deepmind(directory, blocks=(1, 1, 1, 1), seed=0):
    """DeepMind's ``pretrain_res50x1.pkl`` layout (a shallower network):
    the checkpointer's dict, the experiment state named tuple, Haiku
    mappings of numpy arrays, the heads, the target network, a LARS
    optimizer state; the BatchNorm averages measured on images."""
    import pickle

    import numpy as np

    from tools.reference import tf_byol
    params, state = tf_byol.random_network(blocks, seed=seed)
    tf_byol.forward(params, state, checkpoints.random_pixels(100, n=8,
                                                             size=64),
                    blocks, calibrate=True)
    rng = np.random.default_rng(seed + 1)
    heads, head_state = {}, {}
    for head, dims in (("projector", (2048, 64, 16)),
                       ("predictor", (16, 64, 16))):
        heads[f"{head}/linear"] = {"w": rng.normal(size=dims[:2]).astype(
            np.float32), "b": np.zeros(dims[1], np.float32)}
        heads[f"{head}/batch_norm"] = {
            "scale": np.ones((1, dims[1]), np.float32),
            "offset": np.zeros((1, dims[1]), np.float32)}
        for ema in ("mean_ema", "var_ema"):
            head_state[f"{head}/batch_norm/~/{ema}"] = {
                "counter": np.int32(3), "hidden": np.ones((1, dims[1])),
                "average": np.ones((1, dims[1]), np.float32)}
        heads[f"{head}/linear_1"] = {"w": rng.normal(size=dims[1:]).astype(
            np.float32)}
    heads["classifier"] = {"w": np.zeros((2048, 1000), np.float32),
                           "b": np.zeros(1000, np.float32)}
    path = pathlib.Path(directory) / "pretrain_res50x1.pkl"
    with _FakeModules() as fake:
        flat = fake["FlatMapping"]

        def mapping(tree):
            return flat({k: flat(v) for k, v in tree.items()})
        experiment = fake["_ByolExperimentState"](
            mapping({**params, **heads}), mapping(params),
            mapping({**state, **head_state}), mapping(state),
            (fake["ScaleByLarsState"](mapping(params)), ()))
        with open(path, "wb") as f:
            pickle.dump({"experiment_state": experiment, "step": 300000,
                         "rng": np.array([0, 42], np.uint32)}, f, protocol=2)
    return checkpoints.Published(
        "byol_deepmind", path,
        lambda x: tf_byol.forward(params, state, x, blocks), 224,
        allow_pickle=True)


def write(family, directory):
    """``checkpoints.Published`` of a small file of ``family``."""
    directory = pathlib.Path(directory)
    if family == "byol_deepmind":
        return write_byol_deepmind(directory)
    features = None
    if family in ("dinov2", "dinov3", "dinov3_convnext"):
        path, model = {"dinov2": write_dinov2, "dinov3": write_dinov3,
                       "dinov3_convnext": write_convnext}[family](directory)
        size = 224
    elif family == "lightning_cifar":
        model, size = cifar_resnet18(), 32
        path = directory / "byol-cifar100-3hc5ha-ep=999.ckpt"
        torch.save(solo_learn_byol(model), path)
    else:
        model, size = checkpoints.small_resnet(seed=3), 64
        path = directory / ("epoch=99-step=500400.ckpt"
                            if family == "lightning" else "byol.pth")
        torch.save(lightly_byol(model) if family == "lightning" else
                   mmselfsup_byol(model, "1.x" if family == "mmselfsup"
                                  else "backbone"), path)
        features = "features"
    if family == "lightning_cifar":
        features = "features"
    ref32, ref64 = checkpoints._torch_references(model, features)
    return checkpoints.Published(family, path, ref32, size,
                                 reference64=ref64)
