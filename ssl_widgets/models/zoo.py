"""The model zoo: shipped default models and loaders for published self-supervised weights."""
from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Callable
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .architectures import mlp_head, resnet50_trunk, tiny_resnet18_trunk
from .checkpoint_file import load_strict, read_checkpoint, refuse_non_finite
from .converters import (
    CheckpointError,
    convert_barlow_twins,
    convert_simclr_v2,
    convert_simsiam,
    convert_torchvision_resnet,
)
from .dino import build_dino_r50, dino_vit_builder
from .hf import load_pretrained
from ..core import PAPER_INPUT_SIZE
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .wrapper import SSLModel

__all__ = ["ModelSpec", "available_models", "build_tiny_model", "load_model", "model_info", "save_tiny_checkpoint"]

TINY_FORMAT = "ssl_widgets.tiny/1"


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the zoo.

    Attributes:
        name: the zoo name (``load_model(name)``).
        description: one line for tables and ``--help``.
        license: licence of the weights.
        source: where the weights come from.
        url: download URL, or ``None`` when the file must be given as ``weights=PATH``.
        file_name: name of the file in torch.hub's cache (``$TORCH_HOME/hub/checkpoints``).
        sha256: expected SHA-256 of the file, a hex prefix of it, or ``None`` when unknown
            (then the hash is pinned on first use in a ``.sha256`` file beside it).
    """

    name: str
    description: str
    license: str
    source: str
    build: Callable[[Any], SSLModel] = field(repr=False)
    url: str | None = None
    file_name: str | None = None
    sha256: str | None = None


# -- builders ------------------------------------------------------------------------------------

def _simclr_v2_builder(width: int) -> Callable[[Any], SSLModel]:
    def build(checkpoint: Any) -> SSLModel:
        name = f"simclr-v2-r50-{width}x"
        trunk_sd, head_sd = convert_simclr_v2(checkpoint)
        trunk = resnet50_trunk(width)
        dim = trunk.out_channels
        head = mlp_head([dim, dim, dim, 128], last_bn=True)
        load_strict(trunk, trunk_sd, name, "trunk")
        load_strict(head, head_sd, name, "head")
        return SSLModel(trunk, head, name=name, input_size=PAPER_INPUT_SIZE)

    return build


def _build_barlow_twins(checkpoint: Any, projector_width: int = 8192) -> SSLModel:
    # projector_width exists for tests only (a small checkpoint in the same layout); the published one is 8192
    trunk_sd, head_sd = convert_barlow_twins(checkpoint)
    trunk, head = resnet50_trunk(zero_init_residual=True), mlp_head([2048] + [projector_width] * 3)
    load_strict(trunk, trunk_sd, "barlow-twins-r50", "trunk")
    load_strict(head, head_sd, "barlow-twins-r50", "projector")
    return SSLModel(trunk, head, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="barlow-twins-r50", input_size=PAPER_INPUT_SIZE)


def _build_simsiam(checkpoint: Any) -> SSLModel:
    trunk_sd, head_sd = convert_simsiam(checkpoint)
    trunk = resnet50_trunk()
    projector = mlp_head([2048, 2048, 2048, 2048], last_bn=True, last_bn_affine=False, last_bias=True)
    predictor = mlp_head([2048, 512, 2048], last_bias=True)
    head = nn.Sequential(projector, predictor)
    load_strict(trunk, trunk_sd, "simsiam-r50", "trunk")
    load_strict(head, head_sd, "simsiam-r50", "projector+predictor")
    model = SSLModel(trunk, head, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="simsiam-r50", input_size=PAPER_INPUT_SIZE)
    model.cam_head = predictor  # the paper's CAM path: predictor(GAP(A)), skipping the projector
    return model


def _build_supervised(checkpoint: Any) -> SSLModel:
    trunk_sd, _ = convert_torchvision_resnet(checkpoint)
    trunk = resnet50_trunk()
    load_strict(trunk, trunk_sd, "resnet50-supervised", "trunk")
    return SSLModel(trunk, None, mean=IMAGENET_MEAN, std=IMAGENET_STD, name="resnet50-supervised", input_size=PAPER_INPUT_SIZE)


def build_tiny_model(arch: dict[str, Any], name: str = "tiny") -> SSLModel:
    """Build an untrained shipped-model architecture from its description.

    Args:
        arch: ``{"width": 32, "head_dims": [512, 128], "input_size": 112, "normalized": True}``, optionally
            with ``"last_bn": True`` (the projector ends in ``BatchNorm1d(affine=False)``, as Barlow Twins
            standardises and SimSiam's projector does) and ``"predictor_dims": [hidden, out]`` (a SimSiam
            predictor after the projector: ``head = Sequential(projector, predictor)``; ``cam_head =
            predictor`` like the ``simsiam-r50`` loader when the predictor takes the trunk's width, so that
            the paper's CAM path ``predictor(GAP(A))`` is defined; otherwise the CAM methods use the full head).
            For the tiny ViT: ``{"type": "vit", "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3,
            "input_size": 112, "normalized": True, "pooling": "cls"}`` (a timm VisionTransformer whose
            embedding is its class token after the final norm).
        name: the model's name.

    Returns:
        An :class:`SSLModel` with random weights (used by training and by the loader).

    Examples:
        >>> m = build_tiny_model({"width": 8, "head_dims": [64, 32], "input_size": 32})
        >>> m(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 32])
        >>> s = build_tiny_model({"width": 8, "head_dims": [64, 64], "last_bn": True,
        ...                       "predictor_dims": [16, 64], "input_size": 32}).eval()
        >>> s(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 64])
        >>> s.cam_head is s.head[1]  # the predictor takes the trunk's 64 channels: the paper's CAM path
        True
        >>> build_tiny_model({"width": 8, "head_dims": [32, 32], "predictor_dims": [16, 32],
        ...                   "input_size": 32}).cam_head is None  # 32 != 64: the full head instead
        True
        >>> vit = build_tiny_model({"type": "vit", "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2,
        ...                         "input_size": 32}).eval()
        >>> vit(torch.rand(1, 3, 32, 32)).shape, vit.features(torch.rand(1, 3, 32, 32)).shape
        (torch.Size([1, 24]), torch.Size([1, 24, 4, 4]))
    """
    normalized = bool(arch.get("normalized", True))
    if arch.get("type") == "vit":
        from .tiny_vit import build_tiny_vit_backbone

        vit = build_tiny_vit_backbone(arch)
        return SSLModel(vit, None, mean=IMAGENET_MEAN if normalized else None, std=IMAGENET_STD if normalized else None,
                        name=name, input_size=int(arch.get("input_size", 112)), pooling=arch.get("pooling", "cls"),
                        num_prefix_tokens=vit.num_prefix_tokens, patch_size=int(arch.get("patch_size", 8)),
                        trunk_method="forward_features")
    trunk = tiny_resnet18_trunk(int(arch.get("width", 32)))
    dims = [trunk.out_channels] + [int(d) for d in arch.get("head_dims", [512, 128])]
    head: nn.Module = mlp_head(dims, last_bn=bool(arch.get("last_bn", False)), last_bn_affine=False)
    predictor = None
    if arch.get("predictor_dims"):
        predictor = mlp_head([dims[-1]] + [int(d) for d in arch["predictor_dims"]], last_bias=True)
        head = nn.Sequential(head, predictor)
    model = SSLModel(
        trunk,
        head,
        mean=IMAGENET_MEAN if normalized else None,
        std=IMAGENET_STD if normalized else None,
        name=name,
        input_size=int(arch.get("input_size", 112)),
    )
    # SimSiam: the paper's CAM path is predictor(GAP(A)), defined only when the predictor takes the trunk's
    # width (as in simsiam-r50); None (the full head) otherwise and for the other methods
    if predictor is not None and dims[-1] == trunk.out_channels:
        model.cam_head = predictor
    return model


def save_tiny_checkpoint(model: SSLModel, arch: dict[str, Any], path: str | os.PathLike, meta: dict | None = None,
                         half: bool = True) -> None:
    """Write a shipped-format weight file (``trunk``/``head`` state dicts, fp16 by default)."""
    def pack(module: nn.Module) -> dict[str, torch.Tensor]:
        return {
            k: (v.half() if half and v.is_floating_point() else v).detach().cpu().contiguous().clone()
            for k, v in module.state_dict().items()
        }

    torch.save(
        {"format": TINY_FORMAT, "arch": dict(arch), "trunk": pack(model.trunk), "head": pack(model.head),
         "meta": dict(meta or {})},
        path,
    )


def _tiny_builder(name: str) -> Callable[[Any], SSLModel]:
    def build(checkpoint: Any) -> SSLModel:
        if (not isinstance(checkpoint, dict) or checkpoint.get("format") != TINY_FORMAT
                or not all(isinstance(checkpoint.get(key), dict) for key in ("arch", "trunk", "head"))):
            raise CheckpointError(
                f"not a {name!r} weight file: expected format {TINY_FORMAT!r} with 'arch', 'trunk' and 'head' "
                f"(the file that `python -m ssl_widgets.train --out FILE` writes)"
            )
        model = build_tiny_model(checkpoint["arch"], name=name)
        load_strict(model.trunk, checkpoint["trunk"], name, "trunk")
        load_strict(model.head, checkpoint["head"], name, "head")
        model.meta = dict(checkpoint.get("meta", {}))
        return model

    return build


_SIMCLR_HELP = (
    "SimCLR v2 weights are published as TensorFlow checkpoints "
    "(gs://simclr-checkpoints/simclrv2/pretrained/r50_{w}x_sk0). Convert one to the {{'resnet','head'}} "
    "PyTorch layout (EMA variables) and pass weights=PATH"
)

_DINO = "https://dl.fbaipublicfiles.com/dino/"
_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2/"

_REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec("tiny-simclr", "ResNet-18 (half width) trained here with SimCLR (NT-Xent), 112 px",
                  "Apache-2.0 (trained by ssl_widgets)", "shipped with the package", _tiny_builder("tiny-simclr"),
                  file_name="tiny-simclr.pt"),
        ModelSpec("tiny-barlow-twins", "ResNet-18 (half width) trained here with Barlow Twins, 112 px",
                  "Apache-2.0 (trained by ssl_widgets)", "shipped with the package",
                  _tiny_builder("tiny-barlow-twins"), file_name="tiny-barlow-twins.pt"),
        ModelSpec("tiny-simsiam", "ResNet-18 (half width) trained here with SimSiam; similarity on the predictor "
                  "output, 112 px", "Apache-2.0 (trained by ssl_widgets)", "shipped with the package",
                  _tiny_builder("tiny-simsiam"), file_name="tiny-simsiam.pt"),
        ModelSpec("simclr-v2-r50-1x", "SimCLR v2 ResNet-50 1x (sk0), 3-layer head, 128-d output",
                  "Apache-2.0 (google-research/simclr)", "google-research/simclr, converted to PyTorch",
                  _simclr_v2_builder(1), file_name="r50_1x_sk0_ema.pth"),
        ModelSpec("simclr-v2-r50-2x", "SimCLR v2 ResNet-50 2x (sk0), 3-layer head, 128-d output",
                  "Apache-2.0 (google-research/simclr)", "google-research/simclr, converted to PyTorch",
                  _simclr_v2_builder(2), file_name="r50_2x_sk0_ema.pth"),
        ModelSpec("barlow-twins-r50", "Barlow Twins ResNet-50 (1000 ep) with its 8192-8192-8192 projector",
                  "CC-BY-NC 4.0 (facebookresearch/barlowtwins)", "facebookresearch/barlowtwins full checkpoint",
                  _build_barlow_twins,
                  url="https://dl.fbaipublicfiles.com/barlowtwins/ep1000_bs2048_lrw0.2_lrb0.0048_lambd0.0051/checkpoint.pth",
                  file_name="barlowtwins_ep1000_checkpoint.pth"),
        ModelSpec("simsiam-r50", "SimSiam ResNet-50 (100 ep, bs 512); similarity on the predictor output",
                  "CC-BY-NC 4.0 (facebookresearch/simsiam)", "facebookresearch/simsiam checkpoint_0099",
                  _build_simsiam,
                  url="https://dl.fbaipublicfiles.com/simsiam/models/100ep/pretrain/checkpoint_0099.pth.tar",
                  file_name="simsiam_100ep_bs512_checkpoint_0099.pth.tar"),
        ModelSpec("resnet50-supervised", "torchvision ResNet-50 (ImageNet supervised, V1), pooled 2048-d feature",
                  "BSD-3-Clause (torchvision)", "torchvision IMAGENET1K_V1", _build_supervised,
                  url="https://download.pytorch.org/models/resnet50-0676ba61.pth",
                  file_name="resnet50-0676ba61.pth", sha256="0676ba61"),
        ModelSpec("tiny-dino-vit", "ViT (patch 8, 192-d, 6 blocks) trained here with DINO (+ distillation from tiny-simclr), 112 px; class token",
                  "Apache-2.0 (trained by ssl_widgets)", "shipped with the package", _tiny_builder("tiny-dino-vit"),
                  file_name="tiny-dino-vit.pt"),
        ModelSpec("dino-r50", "DINO ResNet-50, teacher with its DINO head (full checkpoint) or pooled backbone",
                  "Apache-2.0 (facebookresearch/dino)", "facebookresearch/dino full checkpoint", build_dino_r50,
                  url=_DINO + "dino_resnet50_pretrain/dino_resnet50_pretrain_full_checkpoint.pth",
                  file_name="dino_resnet50_pretrain_full_checkpoint.pth"),
        ModelSpec("dino-vits16", "DINO ViT-S/16, class token (teacher head with the full checkpoint)",
                  "Apache-2.0 (facebookresearch/dino)", "facebookresearch/dino backbone", dino_vit_builder("dino-vits16"),
                  url=_DINO + "dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
                  file_name="dino_deitsmall16_pretrain.pth"),
        ModelSpec("dino-vitb16", "DINO ViT-B/16, class token (teacher head with the full checkpoint)",
                  "Apache-2.0 (facebookresearch/dino)", "facebookresearch/dino backbone", dino_vit_builder("dino-vitb16"),
                  url=_DINO + "dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
                  file_name="dino_vitbase16_pretrain.pth"),
        ModelSpec("dinov2-vits14", "DINOv2 ViT-S/14 (LVD-142M), class token; 224 px by default",
                  "Apache-2.0 (facebookresearch/dinov2)", "facebookresearch/dinov2 release",
                  dino_vit_builder("dinov2-vits14"), url=_DINOV2 + "dinov2_vits14/dinov2_vits14_pretrain.pth",
                  file_name="dinov2_vits14_pretrain.pth"),
        ModelSpec("dinov2-vits14-reg", "DINOv2 ViT-S/14 with 4 register tokens, class token; 224 px by default",
                  "Apache-2.0 (facebookresearch/dinov2)", "facebookresearch/dinov2 release",
                  dino_vit_builder("dinov2-vits14-reg"),
                  url=_DINOV2 + "dinov2_vits14/dinov2_vits14_reg4_pretrain.pth",
                  file_name="dinov2_vits14_reg4_pretrain.pth"),
    ]
}


def available_models() -> list[str]:
    """Names accepted by :func:`load_model`.

    Examples:
        >>> "tiny-simclr" in available_models()
        True
    """
    return list(_REGISTRY)


def model_info(name: str) -> ModelSpec:
    """The zoo entry for ``name`` (raises ``ValueError`` for an unknown name)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


DOWNLOAD_TIMEOUT_ENV = "SSL_WIDGETS_DOWNLOAD_TIMEOUT"
DEFAULT_DOWNLOAD_TIMEOUT = 60.0


def _download_timeout() -> float:
    """Seconds a download may wait for the server (``$SSL_WIDGETS_DOWNLOAD_TIMEOUT``, default 60)."""
    raw = os.environ.get(DOWNLOAD_TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_DOWNLOAD_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise ValueError(f"{DOWNLOAD_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def _pin_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _verify_checksum(path: Path, spec: ModelSpec) -> str | None:
    """Check ``path`` against the spec's hash or the hash pinned on first use.

    Returns:
        The file's hash when it has neither (to be pinned once the file has loaded successfully,
        so that a truncated or wrong file is never pinned), else ``None``.
    """
    actual = _sha256(path)
    pin = _pin_file(path)
    if spec.sha256 is not None:
        if not actual.startswith(spec.sha256.lower()):
            raise CheckpointError(
                f"checksum mismatch for the {spec.name!r} weights at {path}: sha256 {actual[:16]}... does not match the published "
                f"{spec.sha256[:16]}... of {spec.name!r}; the file is corrupt or not the published one. "
                f"Delete {path} and download {spec.url} again"
            )
        return None
    if not pin.exists():
        return actual
    expected = pin.read_text().strip().lower()
    if actual != expected:
        raise CheckpointError(
            f"checksum mismatch for the {spec.name!r} weights at {path}: sha256 {actual[:16]}... differs from {expected[:16]}..., pinned in "
            f"{pin} when a file at that place first loaded successfully. If {path} is the file you want (you "
            f"replaced it on purpose), delete the pin file {pin}; otherwise the file is corrupt: delete {path} and "
            f"download {spec.url} again"
        )
    return None


def _download(url: str, path: Path, timeout: float) -> None:
    """Fetch ``url`` to ``path`` through this call's own temporary file, renamed into place atomically.

    The temporary file is ``<file>.<pid>.<random>.partial``: processes (e.g. torchrun ranks) or threads
    downloading the same file at once each write their own, and ``os.replace`` makes ``path`` appear
    only complete (the last rename wins; each is a whole copy). Every connection attempt and every
    read waits at most ``timeout`` seconds.
    """
    from tqdm.auto import tqdm

    partial = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    request = urllib.request.Request(url, headers={"User-Agent": "ssl_widgets"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(partial, "xb") as handle:
            size = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=size, unit="B", unit_scale=True, desc=path.name, leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    bar.update(len(block))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _is_timeout(error: BaseException) -> bool:
    reason = getattr(error, "reason", None)
    return isinstance(error, TimeoutError) or isinstance(reason, TimeoutError)


def _cached_download(spec: ModelSpec) -> tuple[Path, str | None]:
    """The cached file (downloaded if missing) and the hash to pin after a successful load, if any."""
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    path = hub_dir / str(spec.file_name)
    if not path.exists():
        if spec.url is None:
            raise FileNotFoundError(
                _SIMCLR_HELP.format(w=spec.name[-2]) + f", or place the converted file at {path}."
            )
        hub_dir.mkdir(parents=True, exist_ok=True)
        timeout = _download_timeout()
        try:
            _download(spec.url, path, timeout)
        except Exception as error:  # network errors come in many types
            if path.is_file():  # another process completed the same download meanwhile: load its file
                return path, _verify_checksum(path, spec)
            what = (f"no answer within {timeout:g} s (set {DOWNLOAD_TIMEOUT_ENV} to wait longer)"
                    if _is_timeout(error) else f"{type(error).__name__}: {error}")
            raise FileNotFoundError(
                f"could not download the weights of {spec.name!r} from {spec.url} ({what}). "
                f"For offline use, download that file yourself and place it at {path}, or give its path: "
                f"--weights PATH on the command line, weights=PATH in Python (load_model)."
            ) from error
    return path, _verify_checksum(path, spec)


def _shipped_weights(spec: ModelSpec) -> Path:
    return Path(str(resources.files("ssl_widgets") / "weights" / str(spec.file_name)))


def _write_pin(path: Path, digest: str) -> None:
    """Write the pin file of ``path`` atomically (a process checking it never reads a half-written one)."""
    pin = _pin_file(path)
    partial = pin.with_name(f"{pin.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")
    try:
        partial.write_text(digest + "\n")
        os.replace(partial, pin)
    finally:
        partial.unlink(missing_ok=True)


def load_model(name: str, *, weights: str | os.PathLike | None = None,
               device: str | torch.device | None = None, check_finite: bool = True) -> SSLModel:
    """Load a model of the zoo as an :class:`SSLModel` in eval mode.

    Args:
        name: one of :func:`available_models`, or ``"hf:<repo id or folder>"`` for a Hugging Face
            ``Dinov2Model`` / ``Dinov2WithRegistersModel`` / ``ViTModel`` (see :mod:`~ssl_widgets.models.hf`).
        weights: path of a weight file in the published layout; always works offline. Without it,
            shipped models load from the package and published ones from torch.hub's cache
            (downloaded and checksum-verified on first use).
        device: where to put the model (default CPU).
        check_finite: refuse weights holding NaN or infinity (the default); ``False`` loads them anyway.

    Returns:
        The model in ``eval()`` mode with gradients enabled on its parameters. Loading leaves the
        global random number generator as it found it.

    Raises:
        ValueError: unknown ``name``.
        FileNotFoundError: no weights available offline; the message says what to fetch and where to put it.
        CheckpointError: corrupt, truncated, wrong-checksum or wrong-layout file, or non-finite weights.

    Examples:
        >>> model = load_model("tiny-simclr")
        >>> model.input_size
        112
    """
    if isinstance(name, str) and name.startswith("hf:"):
        if weights is not None:
            raise ValueError(f"{name!r}: a Hugging Face model brings its own weights; give a local folder as "
                             f"hf:FOLDER instead of weights=")
        with torch.random.fork_rng(devices=[]):
            model = SSLModel.from_transformers(load_pretrained(name[3:]), name=name[3:])
        if check_finite:
            refuse_non_finite(model, Path(name[3:]))
        return model.to(device) if device is not None else model
    spec = model_info(name)
    pin_after_load = None
    if weights is not None:
        path = Path(weights)
    elif spec.url is None and spec.name.startswith("tiny-"):
        path = _shipped_weights(spec)
    else:
        path, pin_after_load = _cached_download(spec)
    checkpoint = read_checkpoint(path)
    with torch.random.fork_rng(devices=[]):  # the modules' default initialisation draws from the global RNG
        model = spec.build(checkpoint).float().eval()
    if check_finite:
        refuse_non_finite(model, path)
    if pin_after_load is not None:  # trust on first use, once the file has proved to be a loadable checkpoint
        _write_pin(path, pin_after_load)
    if device is not None:
        model = model.to(device)
    return model
