"""Architectures by name from torchvision and timm: `model=torchvision model.arch=resnet18`,
`model=timm model.arch=vit_tiny_patch16_224`.

When the dataset's classes or input channels differ from what the architecture (or its
pretrained weights) has, the classifier and the stem are replaced the way each library
documents it, and the log says so: torchvision builds its classifier from `num_classes=` (from
scratch) or has its last Linear swapped for a fresh one (pretrained, as in torchvision's
fine-tuning tutorial), and the first convolution is rebuilt for the channels (pretrained RGB
filters summed over channels, as timm does); timm does both itself (`num_classes=`,
`in_chans=`). Pretrained weights that cannot be downloaded end with one line saying how to use
a local file instead.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from prunebench.config.errors import ConfigError
from prunebench.models.hub import offline_unless_reachable

log = logging.getLogger(__name__)
OWN_WEIGHTS = "or prune weights you have: {key} dense.checkpoint=PATH"


def torchvision_model(input_shape: Sequence[int], num_classes: int, arch: str,
                      weights: str | None = None, name: str | None = None,
                      options: dict | None = None) -> nn.Module:
    """torchvision.models.get_model(arch), adapted to `input_shape` and `num_classes`."""
    import torchvision
    from torchvision.models import get_model, get_model_weights, list_models

    archs = list_models(module=torchvision.models)  # image classifiers only
    if arch not in archs:
        raise ConfigError(f"model.arch={arch} is not a torchvision classification model "
                          f"(e.g. {', '.join(a for a in archs if 'resnet' in a)})")
    options = plain(options)
    if weights is None:
        model = get_model(arch, weights=None, num_classes=num_classes, **options)
        log.info("torchvision %s: built from scratch with a %d-class classifier", arch,
                 num_classes)
    else:
        enum = get_model_weights(arch)
        if weights not in enum.__members__:
            raise ConfigError(f"model.weights={weights} is not one of {arch}'s weights: "
                              f"{', '.join(enum.__members__)} (or null)")
        try:
            model = get_model(arch, weights=enum[weights], **options)
        except OSError as err:  # URLError, connection refused, no such host
            raise ConfigError(f"model.weights={weights}: {arch}'s weights could not be "
                              f"downloaded ({str(err).splitlines()[0][:120]}); offline, put "
                              f"the file in $TORCH_HOME/hub/checkpoints, " +
                              OWN_WEIGHTS.format(key="model.weights=null")) from None
        replace_classifier(model, arch, num_classes)
    adapt_stem(model, arch, input_shape[0], pretrained=weights is not None)
    return model


def plain(options) -> dict:
    """Extra keyword arguments as plain Python containers, as the libraries expect them."""
    if isinstance(options, DictConfig):
        return OmegaConf.to_container(options, resolve=True)
    return dict(options or {})


def replace_classifier(model: nn.Module, arch: str, num_classes: int) -> None:
    """Swap the last Linear for a fresh one with `num_classes` outputs, if they differ."""
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    if last.out_features == num_classes:
        return
    parent, _, attr = name.rpartition(".")
    fresh = nn.Linear(last.in_features, num_classes, bias=last.bias is not None)
    setattr(model.get_submodule(parent), attr, fresh)
    log.warning("torchvision %s: classifier %s replaced (%d -> %d classes, freshly "
                "initialized; train or fine-tune it before trusting the dense row)", arch, name,
                last.out_features, num_classes)


def adapt_stem(model: nn.Module, arch: str, channels: int, pretrained: bool) -> None:
    """Rebuild the first convolution for `channels` inputs, if it expects another number."""
    name, first = next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    if first.in_channels == channels:
        return
    conv = nn.Conv2d(channels, first.out_channels, first.kernel_size, first.stride,
                     first.padding, first.dilation, first.groups, first.bias is not None,
                     first.padding_mode)
    if pretrained:  # same response to a grey image on every channel: RGB filters summed
        with torch.no_grad():
            summed = first.weight.sum(1, keepdim=True) / channels
            conv.weight.copy_(summed.repeat(1, channels, 1, 1))
            if first.bias is not None:
                conv.bias.copy_(first.bias)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, conv)
    log.warning("torchvision %s: first convolution %s rebuilt for %d input channel(s) "
                "instead of %d%s", arch, name, channels, first.in_channels,
                " (pretrained filters summed over channels)" if pretrained else "")


def timm_model(input_shape: Sequence[int], num_classes: int, arch: str,
               pretrained: bool = False, name: str | None = None,
               options: dict | None = None) -> nn.Module:
    """timm.create_model(arch, num_classes=, in_chans=): timm adapts head and stem itself."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model=timm needs timm: pip install 'prunebench[timm]'") from None
    if not timm.is_model(arch):
        raise ConfigError(f"model.arch={arch} is not a timm model (timm.list_models() names "
                          f"them, e.g. resnet18, vit_tiny_patch16_224)")
    options = plain(options)
    if pretrained and "file" not in options.get("pretrained_cfg_overlay", {}):
        offline_unless_reachable("model.pretrained=true")
    try:
        model = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes,
                                  in_chans=input_shape[0], **options)
    except (OSError, RuntimeError) as err:
        if not pretrained:
            raise
        line = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
        raise ConfigError(f"model.pretrained=true: {arch}'s weights could not be loaded "
                          f"({line}); offline, point at a local file with "
                          f"+model.options.pretrained_cfg_overlay.file=PATH, " +
                          OWN_WEIGHTS.format(key="model.pretrained=false")) from None
    log.info("timm %s: created with num_classes=%d, in_chans=%d%s", arch, num_classes,
             input_shape[0], " (pretrained: timm drops a head of another size and adapts the "
             "stem to the channels)" if pretrained else ", from scratch")
    return model
