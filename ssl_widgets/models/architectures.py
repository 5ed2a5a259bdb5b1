"""Network builders: ResNet trunks of any width and the projection heads of each method.

The trunks reuse torchvision's ``BasicBlock`` / ``Bottleneck`` and torchvision's parameter names
(``conv1``, ``bn1``, ``layer1.0.conv1`` ...), so torchvision state dicts load directly and
layer names look the same for every model in the zoo.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

__all__ = ["ResNetTrunk", "mlp_head", "resnet50_trunk", "tiny_resnet18_trunk"]


class ResNetTrunk(nn.Module):
    """A ResNet without global pooling and classifier: ``(B,3,H,W) -> (B,C,h,w)``.

    Args:
        block: torchvision ``BasicBlock`` or ``Bottleneck``.
        layers: number of blocks in each of the four stages.
        width: channels of the stem and of the first stage (64 for torchvision's ResNets,
            128 for SimCLR v2's 2x models, 32 for the shipped tiny models).
        stem_maxpool: keep the 3x3/2 max-pool after the stem. Without it the trunk has
            output stride 16 instead of 32 (the tiny models use this at 112 px, giving 7x7 maps).
        zero_init_residual: zero the last BN of each block (as Barlow Twins' training does).

    Examples:
        >>> trunk = ResNetTrunk(BasicBlock, [2, 2, 2, 2], width=16, stem_maxpool=False)
        >>> trunk(torch.zeros(1, 3, 112, 112)).shape
        torch.Size([1, 128, 7, 7])
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        width: int = 64,
        stem_maxpool: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem_maxpool else nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.out_channels = width * 8 * block.expansion
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        stage.extend(block(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet50_trunk(width_multiplier: int = 1, zero_init_residual: bool = False) -> ResNetTrunk:
    """torchvision's ResNet-50 trunk (``width_multiplier=1``) or SimCLR v2's 2x-wide one.

    Examples:
        >>> resnet50_trunk().out_channels
        2048
    """
    return ResNetTrunk(Bottleneck, [3, 4, 6, 3], width=64 * width_multiplier, zero_init_residual=zero_init_residual)


def tiny_resnet18_trunk(width: int = 32) -> ResNetTrunk:
    """The shipped default models' trunk: ResNet-18 layout, half width, no stem max-pool.

    At 112x112 input the last feature map is 7x7 with 256 channels, like a ResNet-50 at 224.

    Examples:
        >>> tiny_resnet18_trunk().out_channels
        256
    """
    return ResNetTrunk(BasicBlock, [2, 2, 2, 2], width=width, stem_maxpool=False)


def mlp_head(
    dims: Sequence[int],
    *,
    bias: bool = False,
    last_bn: bool = False,
    last_bn_affine: bool = True,
    last_bias: bool | None = None,
) -> nn.Sequential:
    """A projection MLP ``Linear -> BN -> ReLU -> ... -> Linear [-> BN]``.

    Args:
        dims: layer widths, input first, e.g. ``[2048, 8192, 8192, 8192]``.
        bias: bias in the hidden Linear layers.
        last_bn: append a BatchNorm1d after the last Linear (SimCLR v2, SimSiam projector).
        last_bn_affine: whether that last BN has affine parameters.
        last_bias: bias of the last Linear (defaults to ``bias``).

    Returns:
        ``nn.Sequential`` whose indices follow the layout of the published checkpoints
        (Linear at 0, 3, 6, ...; BN at 1, 4, 7, ...).

    Examples:
        >>> mlp_head([8, 16, 4])
        Sequential(...)
    """
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        layers.append(nn.Linear(d_in, d_out, bias=(bias if last_bias is None else last_bias) if last else bias))
        if not last:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=last_bn_affine))
    return nn.Sequential(*layers)
