"""The segmenter: a 2-class (background, anomaly) network, logits at the input's resolution.

The default ``unet-tiny`` (and ``unet-*``) is a small convolutional U-Net: without pretrained weights
(offline machines), a CNN's locality prior generalises from a few hundred crops where a randomly initialised
Segformer memorises them (docs/segmenter.md, measured on magnetic tile). The Segformer presets (MiT b0…b5
shapes and ``tiny``, random init; ``--recipe paper`` uses ``tiny``) follow the paper; ``pretrained`` loads a
Segformer from a local folder or the hub (e.g. ``nvidia/mit-b0``) and replaces its head with a 2-class one.
``taef2-unet`` is a U-Net decoder on the pretrained TAEF2 image encoder the shipped tiny base holds (trained on
natural photographs; ``TAEF2UNet``), the pretrained encoder an offline machine has.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from anomalign.errors import AnomalignError, ConfigError
from anomalign.files import is_hub_id
from anomalign.segmenter.sliding import pad_bottom_right
from anomalign.weights import read_weights, write_weights

_B_HEADS = [1, 2, 5, 8]
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1], num_attention_heads=[1, 1, 2, 4],
                 decoder_hidden_size=64),
    "b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=_B_HEADS, decoder_hidden_size=256),
    "b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], num_attention_heads=_B_HEADS, decoder_hidden_size=256),
    "b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], num_attention_heads=_B_HEADS, decoder_hidden_size=768),
    "b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], num_attention_heads=_B_HEADS, decoder_hidden_size=768),
    "b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], num_attention_heads=_B_HEADS, decoder_hidden_size=768),
    "b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], num_attention_heads=_B_HEADS, decoder_hidden_size=768),
}
# U-Net: widths per level (each level: two 3x3 conv + GroupNorm + SiLU; 2x down between levels) and the
# stride of its stem (2: the first level runs at half resolution, 4x cheaper; logits upsampled at the end)
UNET_PRESETS: dict[str, dict] = {"unet-tiny": dict(widths=(16, 32, 64, 128), stem=2),
                                 "unet-small": dict(widths=(32, 64, 128, 256), stem=2),
                                 "unet-full": dict(widths=(16, 32, 64, 128), stem=1)}


# The U-Net's normalisation. group: GroupNorm, statistics over each input's whole spatial extent, so a 128-px
# window and a whole image are normalised differently and only sliding windows of the training crop size
# predict as trained. batch: BatchNorm, batch statistics while training and fixed running statistics at
# inference, so the network is a plain convolution there and predicts a whole image (or large tiles) in one
# pass (segmenter.sliding.predict_native).
NORMS = ("group", "batch")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise AnomalignError(f"unknown U-Net norm {kind!r}; choose one of {list(NORMS)}")


def _conv_block(cin: int, cout: int, norm: str = "group") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.SiLU())


class UNet(nn.Module):
    """images [B, 3, H, W] (normalised) -> logits [B, 2, H, W]; any H, W (padded to a multiple of the
    total downsampling, stem x 2^(levels-1)).

    A stride-``stem`` 3x3 conv, then an encoder of conv blocks with max-pooling between them; the decoder
    upsamples (bilinear 2x), concatenates the encoder's skip and applies a conv block; 1x1 head; logits
    upsampled by ``stem`` at the end. ``norm`` (``NORMS``): GroupNorm by default (a batch of one window predicts
    like a batch of many); BatchNorm makes the trained network independent of the input's extent, so it can
    predict whole images in one pass. ``config`` plays the role of transformers' ``config.to_dict()`` for saving.
    """

    def __init__(self, widths: tuple[int, ...] | list[int], stem: int = 2, norm: str = "group"):
        super().__init__()
        self.widths, self.stem_stride, self.norm = tuple(int(w) for w in widths), int(stem), norm
        self.config = {"arch": "unet", "widths": list(self.widths), "stem": self.stem_stride}
        if norm != "group":  # older files have no "norm": they are GroupNorm U-Nets
            self.config["norm"] = norm
        w0 = self.widths[0]
        self.stem = nn.Sequential(nn.Conv2d(3, w0, 3, stride=self.stem_stride, padding=1, bias=False),
                                  _norm(norm, w0), nn.SiLU())
        self.down = nn.ModuleList()
        cin = w0
        for w in self.widths:
            self.down.append(_conv_block(cin, w, norm))
            cin = w
        self.up = nn.ModuleList(_conv_block(self.widths[i + 1] + self.widths[i], self.widths[i], norm)
                                for i in reversed(range(len(self.widths) - 1)))
        self.head = nn.Conv2d(self.widths[0], 2, 1)
        # channels-last: the layout oneDNN's convolutions prefer, 1.2-1.4x faster predictions and 1.1-1.2x faster
        # fp32 training steps on CPU (benchmarks/segment_speed.py, cpu_training.py); set here, so a trained and a
        # loaded network compute in the same layout (the same floats)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k = self.stem_stride * 2 ** (len(self.widths) - 1)
        ph, pw = (-h) % k, (-w) % k
        x = pad_bottom_right(x, ph, pw)
        size = x.shape[-2:]
        x = self.stem(x)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        logits = self.head(x)
        if self.stem_stride > 1:
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits[..., :h, :w]


# U-Net decoders on TAEF2's encoder (``TAEF2UNet``): decoder widths at 1/1, 1/2, 1/4 and 1/8 of the input, the
# same as unet-tiny's levels, so the decoder is unet-tiny's up path on pretrained features instead of its own.
TAEF2_PRESETS: dict[str, dict] = {"taef2-unet": dict(widths=(16, 32, 64, 128))}
# The encoder's layers (``generator.taef2.build_encoder`` positions) that end each of its four stages: full
# resolution (conv + Block), 1/2, 1/4 (a stride-2 conv + 3 Blocks each) and 1/8 (stride-2 conv + 3 PoolBlocks).
# Its last layer (64 -> 32, the latent) is left out: it compresses for the codec's decoder, and the 64 channels
# before it carry more of what the encoder saw.
TAEF2_STAGE_ENDS = (1, 5, 9, 13)
TAEF2_WIDTH = 64  # every stage of the TAEF2 encoder has 64 channels


class TAEF2UNet(nn.Module):
    """images [B, 3, H, W] in [0, 1] (TAEF2's own input range; ``Segmenter`` maps [-1, 1] to it) -> logits
    [B, 2, H, W]; any H, W (padded to a multiple of 8).

    The encoder is TAEF2's (layers 0-13 of ``generator.taef2.build_encoder``; pretrained on natural photographs,
    the weights of the shipped tiny base, ``from_base``); its four stages (1/1, 1/2, 1/4, 1/8, 64 channels
    each) are the skips of a U-Net decoder: a conv block to ``widths[-1]`` at 1/8, then at each finer stage
    bilinear 2x up, concatenation with the stage's features and a conv block (GroupNorm + SiLU, as ``UNet``);
    1x1 head at full resolution. State dict: ``encoder.<pos>.*`` (upstream TAEF2 names) and the decoder's.
    ``encoder_parameters`` is what ``--encoder-lr-scale`` scales (0 = frozen).
    """

    side_multiple = 8  # three stride-2 convs

    def __init__(self, widths: tuple[int, ...] | list[int] = TAEF2_PRESETS["taef2-unet"]["widths"]):
        super().__init__()
        from anomalign.generator.taef2 import build_encoder  # imports diffusers: not at the top (fast --help)
        self.widths = tuple(int(w) for w in widths)
        if len(self.widths) != len(TAEF2_STAGE_ENDS):
            raise AnomalignError(f"a TAEF2 U-Net has {len(TAEF2_STAGE_ENDS)} decoder widths (one per encoder "
                                 f"stage), got {list(self.widths)}")
        self.config = {"arch": "taef2-unet", "widths": list(self.widths)}
        self.encoder = build_encoder()[:TAEF2_STAGE_ENDS[-1] + 1]
        self.bottom = _conv_block(TAEF2_WIDTH, self.widths[-1])
        self.up = nn.ModuleList(_conv_block(self.widths[i + 1] + TAEF2_WIDTH, self.widths[i])
                                for i in reversed(range(len(self.widths) - 1)))
        self.head = nn.Conv2d(self.widths[0], 2, 1)
        self.to(memory_format=torch.channels_last)  # as UNet: oneDNN's preferred layout (measured 1.5x on the encoder)

    @classmethod
    def from_base(cls, base: Path | str | None = None, **kwargs) -> "TAEF2UNet":
        """A fresh decoder on the encoder weights of a tiny base file (default: the shipped one)."""
        from anomalign.generator.model import TINY_BASE, tiny_base_encoder
        net = cls(**kwargs)
        pretrained = tiny_base_encoder(base or TINY_BASE)[:TAEF2_STAGE_ENDS[-1] + 1]
        net.encoder.load_state_dict(pretrained.state_dict(), strict=True)
        return net.to(memory_format=torch.channels_last)

    def encoder_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = pad_bottom_right(x, (-h) % self.side_multiple, (-w) % self.side_multiple)
        skips = []
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            if i in TAEF2_STAGE_ENDS:
                skips.append(x)
        x = self.bottom(skips[-1])
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)[..., :h, :w]


def build_net(preset: str, norm: str = "group") -> nn.Module:
    """A network for a preset name: a Segformer (MiT shapes) or a U-Net with ``norm``, randomly initialised, or a
    ``TAEF2_PRESETS`` U-Net whose encoder holds the shipped tiny base's TAEF2 weights."""
    if preset in UNET_PRESETS:
        return UNet(**UNET_PRESETS[preset], norm=norm)
    if preset in TAEF2_PRESETS:
        if norm != "group":
            raise AnomalignError(f"norm {norm!r} applies to the U-Net presets ({', '.join(UNET_PRESETS)}); "
                                 f"{preset}'s decoder uses GroupNorm (its encoder's PoolBlocks do too)")
        return TAEF2UNet.from_base(**TAEF2_PRESETS[preset])
    if norm != "group":
        raise AnomalignError(f"norm {norm!r} applies to the U-Net presets ({', '.join(UNET_PRESETS)}), not to "
                             f"the Segformer {preset!r}")
    if preset not in PRESETS:
        raise AnomalignError(f"unknown segmenter preset {preset!r}; choose one of "
                             f"{list(PRESETS) + list(UNET_PRESETS) + list(TAEF2_PRESETS)}")
    from transformers import SegformerConfig, SegformerForSemanticSegmentation
    return SegformerForSemanticSegmentation(SegformerConfig(num_labels=2, **PRESETS[preset]))


WEIGHTS_NAME = "segmenter.safetensors"
SPEC_KEY = "anomalign_segmenter"
# Segformer checkpoints were trained on ImageNet-normalised inputs; we normalise inside the model.
_MEAN, _STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# Bounds on what a segmenter file may ask for. A file is user input: a damaged or tampered spec (a scale of
# 1000, widths of 1e5) must be refused by name, not tried with allocations of hundreds of GB.
MAX_SIDE = 8192
MAX_SCALE = 64.0
MAX_WIDTH = 4096


def check_spec(spec: dict, file: Path) -> None:
    """Raise AnomalignError naming ``file`` when its spec holds a value no trained segmenter has."""
    def bad(what: str, value) -> AnomalignError:
        return AnomalignError(f"{file}: invalid segmenter file: {what} is {value!r}; the file is damaged or was "
                              "not written by `anomalign train-segmenter` (train the segmenter again)")

    def side(name: str) -> None:
        v = spec.get(name)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and 8 <= v <= MAX_SIDE):
            if not (name == "crop_size" and v == 0):
                raise bad(name, v)

    if not isinstance(spec, dict) or not isinstance(spec.get("config"), dict):
        raise bad("config", spec.get("config") if isinstance(spec, dict) else spec)
    side("size")
    side("crop_size")
    scale = spec.get("scale", 1.0)
    if not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and 0 < scale <= MAX_SCALE):
        raise bad("scale", scale)  # also NaN: it fails 0 < scale
    config = spec["config"]
    if config.get("arch") == "unet":
        widths, stem = config.get("widths"), config.get("stem", 1)
        if not (isinstance(widths, list) and 1 <= len(widths) <= 8
                and all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in widths)):
            raise bad("widths", widths)
        if stem not in (1, 2, 4):
            raise bad("stem", stem)
        if config.get("norm", "group") not in NORMS:
            raise bad("norm", config.get("norm"))
    elif config.get("arch") == "taef2-unet":
        widths = config.get("widths")
        if not (isinstance(widths, list) and len(widths) == len(TAEF2_STAGE_ENDS)
                and all(isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_WIDTH for w in widths)):
            raise bad("widths", widths)
    else:
        sizes = config.get("hidden_sizes", [])
        if not (isinstance(sizes, list) and all(isinstance(w, int) and 1 <= w <= MAX_WIDTH for w in sizes)):
            raise bad("hidden_sizes", sizes)


# What the messages of a wrong --segmenter say a segmenter folder is.
NOT_A_SEGMENTER = (f"not a segmenter folder: a segmenter folder (written by `anomalign train-segmenter`) holds "
                   f"{WEIGHTS_NAME} (the weights, with their spec) and config.yaml (the options it was trained with)")


def check_segmenter_source(source: Path) -> None:
    """Refuse, by name, what ``Segmenter.load`` must not read: a file that is no ``.safetensors`` file (say
    ``notes.txt``; its bytes would be parsed as a safetensors header: "header too large"), and a run folder whose
    ``config.yaml`` does not parse with ``yaml.safe_load`` (a ``!!python`` tag, as ``plan.yaml`` is refused: the
    folder is not what train-segmenter wrote, and its config must never be half-read by a later command)."""
    from anomalign.config import read_yaml
    if source.is_file() and source.suffix.lower() != ".safetensors":
        raise AnomalignError(f"{source}: {NOT_A_SEGMENTER}; this is a file ({source.suffix or 'no extension'}). "
                             "Pass the folder, or its segmenter.safetensors")
    # the run folder's own config.yaml (a segmenter.safetensors given by path: the folder it lies in)
    config = (source if source.is_dir() else source.parent) / "config.yaml"
    if source.name == WEIGHTS_NAME or (source / WEIGHTS_NAME).is_file():
        if config.is_file():
            try:
                read_yaml(config)
            except ConfigError as e:
                raise AnomalignError(f"{e}; refusing to load the segmenter of {config.parent} (its config.yaml is "
                                     "read with yaml.safe_load only, so a !!python tag never runs; write the file "
                                     "again with plain values or train the segmenter again)") from None


def pretrained_encoder(model: "Segmenter") -> list[nn.Parameter]:
    """The parameters of ``model``'s pretrained encoder, which ``--encoder-lr-scale`` trains at its own rate:
    a TAEF2 U-Net's encoder, or the MiT encoder (``segformer``) of a Segformer loaded with ``--pretrained``;
    empty for a network trained from scratch."""
    if isinstance(model.net, TAEF2UNet):
        return model.net.encoder_parameters()
    if model.pretrained and hasattr(model.net, "segformer"):
        return list(model.net.segformer.parameters())
    return []


def check_size(size: int | None) -> None:
    """``--size`` of segment/evaluate/export: None (the trained size) or a side the networks can take."""
    if size is not None and not 8 <= size <= MAX_SIDE:
        raise ConfigError(f"size must be between 8 and {MAX_SIDE} pixels, got {size}")


class Segmenter(nn.Module):
    """images [B, 3, H, W] in [-1, 1] -> logits [B, 2, H, W] (a U-Net's own, or upsampled from a Segformer's 1/4
    grid). Segformers and ``UNet`` see ImageNet-normalised inputs; a ``TAEF2UNet`` sees [0, 1], its encoder's
    range."""

    def __init__(self, preset: str = "tiny", pretrained: str | None = None, norm: str = "group"):
        super().__init__()
        from transformers import SegformerForSemanticSegmentation
        self.preset, self.pretrained, self.size = preset, pretrained, None
        self.crop_size, self.scale = None, 1.0
        if pretrained:
            hub = is_hub_id(pretrained)
            source = pretrained if hub else str(Path(pretrained).expanduser())
            if not hub and not Path(source).is_dir():  # a mistyped folder must not become a hub download
                raise AnomalignError(f"{pretrained}: no such Segformer folder (pass a folder or a hub id such as "
                                     "nvidia/mit-b0)")
            try:
                self.net = SegformerForSemanticSegmentation.from_pretrained(
                    source, num_labels=2, ignore_mismatched_sizes=True)
            except Exception as e:  # OSError, ValueError, UnpicklingError (a pickled .bin is refused), ...
                text = str(e).splitlines()[0] if str(e) else ""
                raise AnomalignError(f"{pretrained}: cannot load a Segformer from this {'hub id' if hub else 'folder'} "
                                     f"({type(e).__name__}: {text}); anomalign loads safetensors weights and never "
                                     "unpickles pytorch_model.bin files") from None
        else:
            self.net = build_net(preset, norm)
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, TAEF2UNet):  # TAEF2 was distilled on [0, 1] images (TAEF2.encode), not on
            return self.net((images + 1) / 2)  # ImageNet-normalised ones
        x = ((images + 1) / 2 - self.mean) / self.std
        if isinstance(self.net, UNet):
            return self.net(x)
        logits = self.net(pixel_values=x).logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """Anomaly probability [B, 1, H, W]."""
        return self(images).softmax(1)[:, 1:2]

    def predict(self, images, threshold: float = 0.5, probability: bool = False, *, inference: str = "windows",
                precision: str = "auto"):
        """Anomaly masks at each image's own size, predicted as ``anomalign segment`` predicts them.

        ``images``, one image or several:

        - one image: a file path, a PIL image, or an array / torch tensor [H, W, 3], [H, W, 1] or [H, W] (grey)
          -> bool mask [H, W];
        - a batch array / tensor [N, H, W, C] (C = 3 or 1) -> bool masks [N, H, W];
        - a list (or tuple) of images as above, of any sizes -> a list of bool masks [H_i, W_i].

        Arrays are uint8, or float in [0, 1] (quantised to 8 bits as an 8-bit file would hold them, so ``x / 255``
        gives exactly the masks of the file's pixels; ``data.transforms.image_u8``); channels last. A pixel is
        anomalous where its probability is at least ``threshold``; ``probability=True`` returns the
        probabilities instead (float32 in [0, 1], same shapes).

        Every image goes through ``segmenter.sliding.image_probability``, the full-size predictor of ``segment``
        and ``evaluate`` (sliding windows for a crop-trained segmenter, else resized to its size and back), on the
        model's device. ``inference`` and ``precision``: as ``segment --inference / --precision``.
        """
        import numpy as np

        from anomalign.data.transforms import image_u8
        from anomalign.segmenter.sliding import image_probability

        def one(image, what: str = "image") -> np.ndarray:
            prob = image_probability(self, image_u8(image, what), mode=inference, precision=precision)
            return prob if probability else prob >= threshold

        if isinstance(images, (list, tuple)):
            return [one(im, f"image {k}") for k, im in enumerate(images)]
        if torch.is_tensor(images) or isinstance(images, np.ndarray):
            if images.ndim == 4:  # a batch [N, H, W, C]: one stacked result [N, H, W]
                if 0 in tuple(images.shape[1:3]):
                    raise AnomalignError(f"images are empty ({images.shape[1]} x {images.shape[2]} px, shape "
                                         f"{list(images.shape)}); each needs at least 1 x 1 px")
                out = [one(images[k], f"image {k} of the batch") for k in range(images.shape[0])]
                return np.stack(out) if out else np.zeros((0, *images.shape[1:3]),
                                                          np.float32 if probability else bool)
        return one(images)

    def save(self, folder: Path, extra: dict | None = None) -> Path:
        config = self.net.config if isinstance(self.net, (UNet, TAEF2UNet)) else self.net.config.to_dict()
        spec = {"preset": self.preset, "config": config, **(extra or {})}
        return write_weights(Path(folder) / WEIGHTS_NAME, self.net.state_dict(), SPEC_KEY, spec)

    @classmethod
    def load(cls, source: Path, device: str | torch.device = "auto") -> "Segmenter":
        """Load a segmenter run folder (or its ``segmenter.safetensors``), in eval mode on ``device``: ``auto``
        (the default) is where the commands' ``--device auto`` runs (``devices.pick_device``: CUDA when available,
        else the CPU); ``cpu``, ``cuda``, ``cuda:1`` or a torch.device are taken as given."""
        from transformers import SegformerConfig, SegformerForSemanticSegmentation

        from anomalign.devices import pick_device
        check_segmenter_source(Path(source))
        spec, state, file = read_weights(source, WEIGHTS_NAME, SPEC_KEY, NOT_A_SEGMENTER)
        check_spec(spec, file)
        if spec["config"].get("arch") == "unet":
            net = UNet(spec["config"]["widths"], spec["config"].get("stem", 1), spec["config"].get("norm", "group"))
        elif spec["config"].get("arch") == "taef2-unet":  # the file holds the encoder's weights: no base needed
            net = TAEF2UNet(spec["config"]["widths"])
        else:
            config = SegformerConfig.from_dict(spec["config"])
            if config.num_labels != 2:
                raise AnomalignError(f"{file}: segmenter has {config.num_labels} classes; anomalign needs 2 "
                                     "(background, anomaly)")
            net = SegformerForSemanticSegmentation(config)
        model = cls.__new__(cls)
        nn.Module.__init__(model)
        model.preset, model.pretrained, model.size = spec.get("preset", "custom"), None, spec.get("size")
        # trained on crops at native resolution: predict with sliding windows of this size, at this scale
        model.crop_size, model.scale = spec.get("crop_size"), spec.get("scale", 1.0)
        model.net = net
        try:
            model.net.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise AnomalignError(f"{file}: weights do not fit the model ({str(e).splitlines()[0]})") from None
        model.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        model.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        return model.to(pick_device(device) if device == "auto" else device).eval()
