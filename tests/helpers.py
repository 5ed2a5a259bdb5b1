"""Tiny deterministic models and shared helpers of the tests (no helper touches the global RNG)."""
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.models.resnet import BasicBlock

from ssl_widgets.models import SSLModel
from ssl_widgets.models.architectures import ResNetTrunk, mlp_head


def randomize_bn(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
    return module


def cos(a, b):
    """Cosine similarity along the last dimension (the package's similarity, written independently)."""
    return F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def seeded_init(module, seed=0):
    """The trunk's (Kaiming fan-out) and nn.Linear's default initialisation from a local generator.

    The global RNG is neither read nor reseeded, so a test's result does not depend on test order.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
            if isinstance(m, nn.Linear):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), generator=g)
                if m.bias is not None:
                    bound = 1 / math.sqrt(m.weight[0].numel())
                    nn.init.uniform_(m.bias, -bound, bound, generator=g)
    return module


def small_resnet(block=BasicBlock, maxpool=True, width=4, normalized=True, seed=0, head=True):
    with torch.random.fork_rng(devices=[]):  # module constructors draw their default init from the global RNG
        trunk = ResNetTrunk(block, [1, 1, 1, 1], width=width, stem_maxpool=maxpool)
        head_module = mlp_head([trunk.out_channels, 8, 6]) if head else None
    trunk = randomize_bn(seeded_init(trunk, seed), seed)
    kwargs = {"mean": (0.4, 0.5, 0.6), "std": (0.2, 0.25, 0.3)} if normalized else {}
    head_module = seeded_init(head_module, seed + 1000).eval() if head else None
    return SSLModel(trunk, head_module, input_size=32, **kwargs).eval()


def write_image_folder(root, n=15, height=48, width=60, seed=0):
    """``n`` PNG images: a per-image base colour plus noise, so that different files look different."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.random((1, 1, 3)) * 0.6 + 0.2
        array = np.clip(base + rng.random((height, width, 3)) * 0.4 - 0.2, 0, 1)
        Image.fromarray((array * 255).astype(np.uint8)).save(root / f"img_{i:02d}.png")
    return root


def mean_color_model():
    """Embedding = per-channel mean of the image (no normalisation): answers can be worked out by hand."""
    return SSLModel(nn.Identity(), None, input_size=4).eval()


def arange_image(b=1, h=4, w=4, offset=0.0):
    n = b * 3 * h * w
    return ((torch.arange(n, dtype=torch.float32) + offset) % 17 / 17).view(b, 3, h, w)


class TwoLayer(nn.Module):
    """conv1x1 -> ReLU (module, re-used in place) -> conv1x1 -> ReLU (functional): for guided backprop."""

    def __init__(self, functional: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1, bias=False)
        self.conv2 = nn.Conv2d(3, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.functional = functional
        with torch.no_grad():
            self.conv1.weight.copy_(torch.tensor([[1.0, -1.0, 0.5], [0.5, 1.0, -1.0], [-1.0, 0.5, 1.0]]).view(3, 3, 1, 1))
            self.conv2.weight.copy_(torch.tensor([[1.0, -2.0, 1.0], [-1.0, 1.0, 2.0]]).view(2, 3, 1, 1))

    def forward(self, x):
        h = self.relu(self.conv1(x))
        z = self.conv2(h)
        return torch.nn.functional.relu(z) + 0.1 if self.functional else self.relu(z) + 0.1


def run_processes(commands, env, timeout=300):
    """Runs each command in its own fresh process, all at once (each pays its own interpreter and torch import, which
    then overlap), and returns their ``subprocess.CompletedProcess`` in the order given (text output captured)."""
    import subprocess

    running = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for command in commands]
    done = []
    try:
        for command, process in zip(commands, running):
            stdout, stderr = process.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(command, process.returncode, stdout, stderr))
    finally:
        for process in running:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return done


def run_on_boxes(engine, images, boxes, cache):
    """The incremental engine's trunk output for full ``images`` equal to the prepared base outside ``boxes``."""
    from ssl_widgets.attr._occlusion_engine.regions import box_crops

    local, y0, x0 = box_crops(images, boxes)
    return engine.run(cache, local, y0, x0, torch.zeros_like(y0))
