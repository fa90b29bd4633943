"""The public Python API: segbench.build_model / build_dataset."""
import pytest
import torch

import segbench
from segbench.errors import SegbenchError


def test_build_model_resolves_sibling_defaults():
    model = segbench.build_model("unet_small", num_classes=6)
    assert isinstance(model, torch.nn.Module)
    assert model(torch.zeros(1, 3, 32, 32))["out"].shape == (1, 6, 32, 32)


def test_unknown_names_list_the_choices():
    with pytest.raises(SegbenchError, match="available: .*pspnet"):
        segbench.build_model("nonet", num_classes=3)
    with pytest.raises(SegbenchError, match="available: .*voc"):
        segbench.build_dataset("nodata", root=".", split="train")


def test_build_dataset_reads_the_synthetic_set(synthetic_root):
    dataset = segbench.build_dataset("synthetic", synthetic_root, "val", num_train=32, num_val=8, image_size=32)
    item = dataset[0]
    # uint8 image and labels, as the loaders hand them over (normalised on the device: data.normalization)
    assert len(dataset) == 8 and item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8
    assert item["label"].dtype == torch.uint8
