"""Evaluation protocols: sliding window, flip, multi-scale, output stride, CRF, BF in evaluate()."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from segbench.data.base import IMAGENET_MEAN, IMAGENET_STD
from segbench.app.loaded import resolve_protocol
from segbench.engine.evaluator import evaluate, metrics_record
from segbench.data.normalization import Normalization
from segbench.engine.inference import predict, scaled_size, slide_windows
from segbench.engine.protocol import Protocol
from segbench.errors import SegbenchError
from segbench.models.base import SegmentationModel

torch.manual_seed(0)


class Pointwise(SegmentationModel):
    """1x1 conv: local, translation- and flip-equivariant."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


class GlobalContext(nn.Module):
    """3x3 conv + the image mean: every output depends on the whole input."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, padding=1)
        self.mix = nn.Linear(3, classes)

    def forward(self, x):
        return {"out": self.conv(x) + self.mix(x.mean((2, 3)))[:, :, None, None]}


class MirrorSymmetric(nn.Module):
    """3x3 conv whose kernel is symmetric left-right (and zero padding): flip-equivariant."""

    def __init__(self, classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, padding=1)
        with torch.no_grad():
            w = self.conv.weight
            w.copy_((w + w.flip(-1)) / 2)

    def forward(self, x):
        return {"out": self.conv(x)}


@pytest.fixture
def images():
    return torch.randn(2, 3, 30, 40)


@torch.no_grad()
def test_sliding_window_equals_whole_image_when_the_window_covers_it(images):
    model = GlobalContext().eval()
    whole = predict(model, images)
    for crop in ([30, 40], [64, 64], [512, 1024]):
        slide = predict(model, images, protocol={"mode": "slide", "crop_size": crop})
        assert torch.equal(slide, whole), crop
    # smaller windows see less context: the global model now differs ...
    small = predict(model, images, protocol={"mode": "slide", "crop_size": [16, 16], "stride": [8, 8]})
    assert not torch.allclose(small, whole)
    # ... but a local model does not, and every pixel is covered exactly as often as counted
    local = Pointwise().eval()
    tiled = predict(local, images, protocol={"mode": "slide", "crop_size": [16, 24], "stride": [7, 9],
                                             "window_batch": 3})
    assert torch.allclose(tiled, predict(local, images), atol=1e-5)


def test_slide_windows_cover_the_image_with_equal_sizes():
    boxes = slide_windows(30, 40, (16, 24), (7, 9))
    cover = np.zeros((30, 40), int)
    for y1, y2, x1, x2 in boxes:
        assert (y2 - y1, x2 - x1) == (16, 24) and y1 >= 0 and x1 >= 0 and y2 <= 30 and x2 <= 40
        cover[y1:y2, x1:x2] += 1
    assert cover.min() >= 1
    assert slide_windows(30, 40, (64, 64), (43, 43)) == [(0, 30, 0, 40)]
    # PSPNet's default stride: ceil(2/3 crop)
    assert Protocol.from_config({"mode": "slide", "crop_size": 713}).window_stride == (476, 476)


@torch.no_grad()
def test_flip_averaging_of_a_flip_equivariant_model_equals_the_plain_result(images):
    model = MirrorSymmetric().eval()
    assert torch.allclose(predict(model, images, protocol={"flip": True}), predict(model, images), atol=1e-6)
    assert torch.allclose(predict(model, images, protocol={"flip": True, "mode": "slide", "crop_size": [16, 16]}),
                          predict(model, images, protocol={"mode": "slide", "crop_size": [16, 16]}), atol=1e-6)
    skewed = GlobalContext().eval()  # not symmetric: flipping changes its output
    assert not torch.allclose(predict(skewed, images, protocol={"flip": True}), predict(skewed, images), atol=1e-4)


@torch.no_grad()
def test_multi_scale_with_one_scale_equals_single_scale_and_returns_input_size(images):
    model = GlobalContext().eval()
    plain = model(images)["out"]
    assert torch.equal(predict(model, images, protocol={"scales": [1.0]}), plain)
    assert torch.equal(predict(model, images, protocol={"scales": [1.0], "average": "logits"}), plain)
    assert torch.allclose(predict(model, images, protocol={"scales": [1.0], "average": "probs"}), plain.softmax(1))
    ms = predict(model, images, protocol={"scales": [0.5, 0.75, 1.25], "flip": True, "average": "probs"})
    assert ms.shape == plain.shape
    assert torch.allclose(ms.sum(1), torch.ones(2, 30, 40), atol=1e-5)  # a mean of probabilities
    expected = sum(F.interpolate(model(F.interpolate(images, size=s, mode="bilinear"))["out"], size=(30, 40),
                                 mode="bilinear") for s in [(15, 20), (38, 50)]) / 2
    assert torch.allclose(predict(model, images, protocol={"scales": [0.5, 1.25]}), expected, atol=1e-5)


def test_base_size_resizes_the_long_side():
    assert scaled_size(30, 40, 1.0, 48) == (36, 48)
    assert scaled_size(40, 30, 0.5, 48) == (24, 18)
    assert scaled_size(30, 40, 0.5, None) == (15, 20)


def test_protocol_config_errors_are_user_errors():
    with pytest.raises(SegbenchError, match="unknown key"):
        Protocol.from_config({"scale": [1.0]})
    with pytest.raises(SegbenchError, match="crop_size"):
        Protocol.from_config({"mode": "slide"})
    with pytest.raises(SegbenchError, match="mode"):
        Protocol.from_config({"mode": "tiles"})
    described = Protocol.from_config({"mode": "slide", "crop_size": [713, 713], "scales": [0.5, 1.0], "flip": True,
                                      "output_stride": 8}).describe()
    assert described == "slide 713x713 MS(0.5,1)+flip OS8"


class StrideModel(nn.Module):
    """Records the output stride it ran at."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.output_stride, self.seen = 16, []

    def set_output_stride(self, os):
        self.output_stride = os

    def forward(self, x):
        self.seen.append(self.output_stride)
        return {"out": self.conv(x)}


def batches(n=2, size=(16, 16), classes=3):
    images = torch.randn(n, 3, *size)
    labels = torch.randint(0, classes, (n, *size))
    return [{"image": images, "label": labels, "id": [f"img{i}" for i in range(n)]}]


def test_eval_output_stride_is_set_for_evaluation_and_restored():
    model = StrideModel()
    evaluate(model, batches(), 3, torch.device("cpu"), protocol={"output_stride": 8}, progress=False)
    assert model.seen == [8] and model.output_stride == 16
    with pytest.raises(SegbenchError, match="fixed output stride"):
        evaluate(Pointwise(3), batches(), 3, torch.device("cpu"), protocol={"output_stride": 8}, progress=False)


def test_evaluate_keeps_the_trainer_signature_and_adds_bf():
    loader = batches()
    matrix = evaluate(Pointwise(3), loader, 3, torch.device("cpu"), "fp32", False,
                      {"scales": [1.0], "flip": False}, on_batch=None, progress=False)
    scores = matrix.compute()
    assert "BF" not in scores and 0 <= scores["mIoU"] <= 1
    scores = evaluate(Pointwise(3), loader, 3, torch.device("cpu"), protocol={"boundary_f1": True},
                      progress=False).compute()
    assert 0 <= scores["BF"] <= 1
    record = metrics_record(scores, ["a", "b", "c"], "val", "x.pt", 1, {"boundary_f1": True}, "eval")
    assert record.scores["BF"] == scores["BF"] and record.protocol["boundary_f1"] is True
    assert record.protocol["mode"] == "whole"  # the full protocol is recorded, defaults included


class FixedLogits(nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return {"out": self.logits.expand(x.shape[0], -1, -1, -1)}


def test_crf_changes_predictions_only_where_the_unary_is_uncertain():
    """A black | white image (edge between columns 7 and 8). The network is sure of class 0 on
    columns 0-5 and class 1 on 10-15; on 6-9 it is unsure and leans the wrong way (class 1 on
    the black side, class 0 on the white). The dense CRF's appearance kernel should pull the
    unsure pixels to the label of their same-coloured, confident neighbours and leave every
    confident pixel alone."""
    h, w = 12, 16
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:, 8:] = 255
    probs = torch.zeros(2, h, w)
    probs[0, :, :6], probs[1, :, 10:] = 0.99, 0.99
    probs[1, :, 6:8], probs[0, :, 8:10] = 0.55, 0.55
    probs[1] = torch.where(probs[1] == 0, 1 - probs[0], probs[1])
    probs[0] = 1 - probs[1]
    logits = probs.clamp_min(1e-6).log()[None]
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]  # the loader's uint8 batch
    loader = [{"image": image, "label": torch.zeros(1, h, w, dtype=torch.uint8)}]
    model = FixedLogits(logits)

    def run(protocol):
        seen = []
        evaluate(model, loader, 2, torch.device("cpu"), protocol=protocol, progress=False,
                 on_batch=lambda batch, pred: seen.append(pred[0].clone()),
                 normalization=Normalization(IMAGENET_MEAN, IMAGENET_STD))
        return seen[0]

    plain = run({})
    crf = {"_target_": "segbench.models.crf.DenseCRF", "iterations": 10}
    refined = run({"postprocess": crf})
    confident = torch.zeros(h, w, dtype=torch.bool)
    confident[:, :6] = confident[:, 10:] = True
    assert torch.equal(refined[confident], plain[confident])
    changed = refined != plain
    assert changed.any() and not (changed & confident).any()
    assert (refined[:, :8] == 0).all() and (refined[:, 8:] == 1).all()  # follows the colour edge
    # the exact (torch) backend agrees with the reference lattice implementation here
    exact = run({"postprocess": {**crf, "backend": "torch"}})
    assert torch.equal(exact, refined)


# ---- the images the CRF and the panels see: the uint8 batch, whatever the normalisation ---------
def test_normalization_comes_from_the_data_config():
    from tests.conftest import compose_train

    lcn = Normalization.from_data_config(compose_train(["experiment=segnet_basic_camvid"]).data)
    assert lcn.kind == "lcn"
    voc = Normalization.from_data_config(compose_train(["data=voc"]).data)
    assert voc == Normalization(IMAGENET_MEAN, IMAGENET_STD, "meanstd")
    with pytest.raises(SegbenchError, match="normalize differ"):
        Normalization.from_data_config(compose_train(["data=voc", "+data.transforms.val.normalize=lcn"]).data)


def grey_batch():
    grey = np.repeat(np.random.default_rng(1).integers(0, 256, (12, 16, 1), dtype=np.uint8), 3, axis=2)
    return {"image": torch.from_numpy(grey.transpose(2, 0, 1).copy())[None], "label": torch.zeros(1, 12, 16).long(),
            "id": ["grey"]}


def test_lcn_panels_show_the_image_as_read(tmp_path):
    """LCN cannot be undone, so the panels once showed the network input stretched to 0..255;
    with the uint8 batch at hand they show the image itself (a grey input stays that grey)."""
    from PIL import Image

    from segbench.engine.evaluator import PredictionWriter

    class Palette:
        def colorize(self, label):
            return np.stack([label * 40] * 3, -1).astype(np.uint8)

    batch = grey_batch()
    writer = PredictionWriter(Palette(), tmp_path, "color", num_panels=1)
    writer(batch, torch.zeros(1, 12, 16, dtype=torch.long))
    panel = np.array(Image.open(tmp_path / "panels" / "grey.png"))[:, :16]
    assert np.array_equal(panel, batch["image"][0].permute(1, 2, 0).numpy())


def test_crf_sees_the_rgb_image_under_lcn_too(monkeypatch):
    """The CRF's colour kernel gets the uint8 image from the batch, so an LCN model (SegNet-Basic)
    can be post-processed too; the network still gets the LCN input."""
    seen = {}

    def postprocess(image, probs):
        seen["image"] = image
        return probs

    class Spy(Pointwise):
        def forward(self, x):
            seen["input"] = x
            return super().forward(x)

    batch = grey_batch()
    lcn = Normalization(IMAGENET_MEAN, IMAGENET_STD, "lcn")
    from segbench.engine import inference

    monkeypatch.setattr(inference, "build_postprocess", lambda protocol: postprocess)
    evaluate(Spy(3), [batch], 3, torch.device("cpu"), progress=False, normalization=lcn)
    assert np.array_equal(seen["image"], batch["image"][0].permute(1, 2, 0).numpy())
    torch.testing.assert_close(seen["input"], lcn(batch["image"]))


def test_eval_command_protocol_inherits_the_run_protocol():
    run_cfg = OmegaConf.create({"eval_protocol": {"scales": [0.5, 1.0], "flip": True, "output_stride": 8}})
    cli = OmegaConf.create({"protocol": {"scales": None, "flip": False, "mode": None}, "postprocess": None})
    assert resolve_protocol(cli, run_cfg) == {"scales": [0.5, 1.0], "flip": False, "output_stride": 8}
    cli = OmegaConf.create({"protocol": {}, "postprocess": {"_target_": "segbench.models.crf.DenseCRF"}})
    assert resolve_protocol(cli, run_cfg)["postprocess"]["_target_"].endswith("DenseCRF")
    run_cfg.eval_protocol.postprocess = {"_target_": "segbench.models.crf.DenseCRF"}
    cli = OmegaConf.create({"protocol": {}, "postprocess": {}})  # postprocess=none
    assert resolve_protocol(cli, run_cfg)["postprocess"] is None


# ---- PSPNet's sliding window (hszhao/semseg tool/test.py scale_process / net_process) ------------
class WindowAware(nn.Module):
    """Known logits that depend on the window: its mean (so padding matters), the pixel, and the
    column inside the window (so the flip pair differs)."""

    def forward(self, x):
        n, _, h, w = x.shape
        col = torch.arange(w, dtype=x.dtype).expand(n, h, w)
        return {"out": torch.stack([x[:, 0], x[:, 0].mean((1, 2), keepdim=True).expand(n, h, w), 0.3 * col], 1)}


def _semseg_by_hand(image: np.ndarray, crop, stride, flip: bool) -> np.ndarray:
    """scale_process + net_process on one C x H x W image, written out with numpy loops."""
    def logits(window):  # WindowAware on one window
        h, w = window.shape[1:]
        return np.stack([window[0], np.full((h, w), window[0].mean()), 0.3 * np.tile(np.arange(w), (h, 1))])

    def softmax(z):
        e = np.exp(z - z.max(0))
        return e / e.sum(0)

    _, ori_h, ori_w = image.shape
    pad_h, pad_w = max(crop[0] - ori_h, 0), max(crop[1] - ori_w, 0)
    top, left = int(pad_h / 2), int(pad_w / 2)
    padded = np.pad(image, ((0, 0), (top, pad_h - top), (left, pad_w - left)))  # the mean = 0 here
    new_h, new_w = padded.shape[1:]
    grid_h = int(np.ceil((new_h - crop[0]) / stride[0]) + 1)
    grid_w = int(np.ceil((new_w - crop[1]) / stride[1]) + 1)
    total, count = np.zeros((3, new_h, new_w)), np.zeros((new_h, new_w))
    for i in range(grid_h):
        for j in range(grid_w):
            e_h = min(i * stride[0] + crop[0], new_h)
            e_w = min(j * stride[1] + crop[1], new_w)
            s_h, s_w = e_h - crop[0], e_w - crop[1]
            window = padded[:, s_h:e_h, s_w:e_w]
            probs = softmax(logits(window))
            if flip:
                probs = (probs + softmax(logits(window[:, :, ::-1]))[:, :, ::-1]) / 2
            total[:, s_h:e_h, s_w:e_w] += probs
            count[s_h:e_h, s_w:e_w] += 1
    return (total / count)[:, top:top + ori_h, left:left + ori_w]


@pytest.mark.parametrize("size, crop", [((2, 5), (4, 3)), ((7, 9), (4, 4))])
@torch.no_grad()
def test_pspnet_slide_equals_a_hand_computed_pad_softmax_average(size, crop):
    images = torch.randn(2, 3, *size, dtype=torch.float64)
    protocol = {"mode": "slide", "slide_variant": "pspnet", "crop_size": list(crop), "stride": [2, 2],
                "flip": True, "average": "probs"}
    got = predict(WindowAware(), images, protocol=protocol)
    expected = np.stack([_semseg_by_hand(im.numpy(), crop, (2, 2), flip=True) for im in images])
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=1e-6)  # scores are float32
    mmseg = predict(WindowAware(), images, protocol={**protocol, "slide_variant": "mmseg"})
    assert not torch.allclose(mmseg, got)  # clipped windows + logits averaging is another protocol


def test_pspnet_slide_variant_needs_probabilities():
    with pytest.raises(SegbenchError, match="average=probs"):
        Protocol.from_config({"mode": "slide", "slide_variant": "pspnet", "crop_size": [4, 4], "average": "logits"})
    with pytest.raises(SegbenchError, match="slide_variant"):
        Protocol.from_config({"mode": "slide", "slide_variant": "caffe", "crop_size": [4, 4]})
