"""ImageNet weights through the libraries' own weight APIs, with one actionable offline error.

torchvision weights live in the torch hub cache (``$TORCH_HOME/hub/checkpoints``), timm's in the
Hugging Face hub cache. Offline and uncached, both raise :class:`WeightsNotAvailableError` naming
the file expected, the folder it goes in and how to get it there (DESIGN: tests never need the
network; a user without it gets one message instead of a urllib traceback).
"""
from __future__ import annotations

import os
from urllib.error import URLError

import torch
from torch import nn

from segbench.errors import WeightsNotAvailableError

OR_NOT_PRETRAINED = "or set model.pretrained=false."


def torchvision_state_dict(weights) -> dict[str, torch.Tensor]:
    """State dict of a torchvision ``WeightsEnum`` member (e.g. ``VGG16_Weights.IMAGENET1K_V1``).

    The call ``weights.get_state_dict()`` makes (torch hub cache, hash checked), with the
    offline error above instead of urllib's."""
    try:
        return torch.hub.load_state_dict_from_url(weights.url, progress=True, check_hash=True)
    except (URLError, OSError, RuntimeError) as err:  # offline, unreachable, bad hash
        file = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
        raise WeightsNotAvailableError(
            f"pretrained weights {weights} are not cached and could not be downloaded "
            f"({type(err).__name__}: {err}). Expected file: {file}. On a machine with network access "
            f"download {weights.url} and copy it to that path (the cache folder is "
            f"$TORCH_HOME/hub/checkpoints), {OR_NOT_PRETRAINED}"
        ) from err


def timm_model(name: str, tag: str, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.create_model("<name>.<tag>")``; weights come from the Hugging Face hub cache."""
    import timm  # imported here: only the deep-stem ResNets and Xception need it

    try:
        return timm.create_model(f"{name}.{tag}", pretrained=pretrained, **kwargs)
    except OSError as err:  # huggingface_hub's offline / not-found errors are OSErrors
        from huggingface_hub.constants import HF_HUB_CACHE  # timm's dependency, imported with it

        repo = f"timm/{name}.{tag}"
        folder = os.path.join(HF_HUB_CACHE, "models--" + repo.replace("/", "--"))
        raise WeightsNotAvailableError(
            f"pretrained weights {repo} are not in the Hugging Face cache and could not be "
            f"downloaded ({err}). Expected file: {folder}/snapshots/<revision>/model.safetensors. "
            f"On a machine with network access run `python -c \"import timm; "
            f"timm.create_model('{name}.{tag}', pretrained=True)\"` (or `hf download {repo}`) and "
            f"copy its {os.path.basename(folder)} folder into {HF_HUB_CACHE} (or set HF_HUB_CACHE "
            f"to the cache that holds it); {OR_NOT_PRETRAINED}"
        ) from err
