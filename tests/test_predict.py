"""Inference: the one image reader, the evaluation transform and resolution rule, the predictor (whole image and
blended windows), ``pamm.load`` for every kind of input, the files of ``pamm predict`` and its command line."""

from __future__ import annotations

import errno
import io
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import pamm
import pamm.fs
from pamm.cli import main
from pamm.data.io import ImageReadError, ImageTooLargeError, read_rgb_image, rgb_from_pil
from pamm.data.transforms import EvalTransform, build_transforms
from pamm.engine.checkpoint import save_weights
from pamm.engine.predictor import (
    Predictor,
    bilinear_strips,
    blend_windows,
    resample_postprocess,
    window_origins,
    window_weights,
)
from pamm.errors import EXIT_INPUT, EXIT_RESOURCE, InputError, ResourceError, exit_code
from pamm.inference import ImagePredictor, Prediction
from pamm.models.meta import ModelMeta
from pamm.outputs import DEPTH_PNG_SCALE
from pamm.predict_files import PredictionFailed, find_inputs, predict_files
from pamm.tasks import DATASETS, postprocess
from pamm.viz import palette_for

from conftest import tiny_config

NYUD = DATASETS["nyud"]


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth, photo-like RGB uint8 image (gradients and a disc) with some noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width, 1)
    disc = ((yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.08).astype(np.float64)
    rgb = np.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.5 - 0.3 * disc], axis=-1) * 255
    return np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


# ----------------------------------------------------------------------------------------------------------
# The one image reader (pamm.data.io)


def test_image_kinds_are_read_as_rgb(tmp_path):
    rgb = _photo(20, 30)
    gray = rgb[..., 0]
    assert np.array_equal(read_rgb_image(_save(Image.fromarray(rgb), tmp_path / "rgb.png")), rgb)
    assert np.array_equal(read_rgb_image(_save(Image.fromarray(gray), tmp_path / "l.png")), np.dstack([gray] * 3))
    palette_image = Image.fromarray(rgb).quantize(16)
    assert np.array_equal(
        read_rgb_image(_save(palette_image, tmp_path / "p.png")), np.asarray(palette_image.convert("RGB"))
    )
    sixteen = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100
    out = read_rgb_image(_save(Image.fromarray(sixteen), tmp_path / "i16.png"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.array_equal(out[..., 1], np.rint(sixteen * (255 / 65535)).astype(np.uint8))
    cmyk = read_rgb_image(_save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95))
    assert cmyk.shape == (20, 30, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 12
    bilevel = read_rgb_image(_save(Image.fromarray(gray > 128), tmp_path / "one.bmp"))
    assert set(np.unique(bilevel)) <= {0, 255} and np.array_equal(bilevel[..., 0] == 255, gray > 128)


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :2, 3] = 255  # left half opaque red, right half fully transparent
    out = read_rgb_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png"))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 3]) == (255, 255, 255)
    la = Image.fromarray(np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 0, np.uint8)], -1), mode="LA")
    assert tuple(read_rgb_image(_save(la, tmp_path / "la.png"))[1, 1]) == (255, 255, 255)
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.putpixel((1, 0), 1)
    out = read_rgb_image(_save(palette, tmp_path / "p_transparent.png", transparency=1))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (255, 255, 255)
    # a decoded PIL image follows the same rules as its file
    assert np.array_equal(rgb_from_pil(Image.fromarray(rgba)), read_rgb_image(tmp_path / "rgba.png"))


def test_content_decides_not_the_extension_and_exif_orientation_is_applied(tmp_path):
    rgb = _photo(20, 40)
    as_jpeg = read_rgb_image(_save(Image.fromarray(rgb), tmp_path / "photo.jpg", quality=95))
    disguised = tmp_path / "photo.png"
    disguised.write_bytes((tmp_path / "photo.jpg").read_bytes())
    assert np.array_equal(read_rgb_image(disguised), as_jpeg)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rotated_path = _save(Image.fromarray(rgb), tmp_path / "rotated.jpg", exif=exif, quality=95)
    rotated = read_rgb_image(rotated_path)
    assert rotated.shape == (40, 20, 3)
    assert np.abs(rotated.astype(int) - np.rot90(as_jpeg, k=-1)).mean() < 3
    with Image.open(rotated_path) as opened:  # the PIL route applies the orientation too
        assert np.array_equal(rgb_from_pil(opened), rotated)


def test_unreadable_files_raise_one_error_naming_them_once(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is text, not an image")
    buffer = io.BytesIO()
    Image.fromarray(_photo(64, 64)).save(buffer, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (tmp_path / "folder.png").mkdir()
    for name, message in [
        ("empty.png", "empty"),
        ("notes.jpg", "not a readable image"),
        ("truncated.png", "truncated"),
        ("missing.png", "missing file"),
        ("folder.png", "is a folder, not a file"),
    ]:
        with pytest.raises(ImageReadError, match=message) as err:
            read_rgb_image(tmp_path / name)
        assert str(err.value).count(name) == 1 and err.value.path.endswith(name)
        assert "\n" not in str(err.value) and exit_code(err.value) == EXIT_INPUT
    floats = Image.fromarray(np.zeros((2, 2), np.float32))
    with pytest.raises(ImageReadError, match="floating-point"):
        read_rgb_image(_save(floats, tmp_path / "float.tiff"))


def test_pixel_limit_and_resize(tmp_path):
    path = _save(Image.fromarray(_photo(100, 150)), tmp_path / "big.jpg", quality=90)
    with pytest.raises(ImageTooLargeError, match=r"150x100 = 15,000 pixels is above the limit of 5,000 .*e\.g\. 86"):
        read_rgb_image(path, max_pixels=5000)
    assert read_rgb_image(path, max_pixels=5000, resize=60).shape == (40, 60, 3)
    assert read_rgb_image(path, resize=1000).shape == (100, 150, 3)  # never upscaled
    with pytest.raises(ImageTooLargeError, match="smaller resize"):
        read_rgb_image(path, max_pixels=100, resize=60)
    with pytest.raises(ImageTooLargeError, match=r"e\.g\. 1\b"):  # the hint is never "e.g. 0"
        read_rgb_image(path, max_pixels=1)
    for bad in ({"max_pixels": 0}, {"resize": 0}, {"max_pixels": -5}):
        with pytest.raises(ValueError, match="positive"):
            read_rgb_image(path, **bad)


def test_pillows_decompression_bomb_warning_does_not_leak(tmp_path, monkeypatch):
    path = _save(Image.fromarray(_photo(40, 40)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 1,600 pixels: Pillow warns (above 1x), refuses above 2x
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_rgb_image(path).shape == (40, 40, 3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)
    with pytest.raises(ImageTooLargeError, match="bomb.png: refused by Pillow's decompression-bomb limit"):
        read_rgb_image(path)


def test_dataset_loader_and_predictor_read_the_same_pixels(tmp_path):
    from pamm.data import NYUDv2
    from pamm.data.synth import synthesize

    synthesize(tmp_path, layout="nyud", n_train=1, n_val=1, size=(32, 48), seed=0, progress=False)
    root = tmp_path / "NYUDv2"
    image_id = (root / "gt_sets" / "train.txt").read_text().split()[0]
    path = root / "images" / f"{image_id}.png"
    rgba = np.dstack([_photo(32, 48), np.linspace(0, 255, 48 * 32).reshape(32, 48).astype(np.uint8)])
    Image.fromarray(rgba).save(path)  # transparency: the rule that used to differ between the two
    raw = NYUDv2(root, "train", tasks=["depth"]).load_raw(0)["image"]
    tensor, picture = ImagePredictor(Predictor(*_stub())).read(path)
    assert tensor.dtype == torch.uint8 and torch.equal(raw, tensor.float())
    assert np.array_equal(picture, read_rgb_image(path))


# ----------------------------------------------------------------------------------------------------------
# The evaluation transform and the resolution rule


def test_the_models_metadata_gives_the_evaluation_transform():
    cfg = pamm.load_config("demo")
    meta = ModelMeta.from_config(cfg)
    transform = meta.transforms()
    assert isinstance(transform, EvalTransform)
    assert transform.size == tuple(cfg.data.test_size) and transform.multiple == cfg.model.backbone.patch_size
    sample = {"image": torch.rand(3, 50, 70) * 255, "depth": torch.rand(1, 50, 70), "meta": {"valid": (0, 0, 50, 70)}}
    reference = build_transforms(False, tuple(cfg.data.test_size), cfg.model.backbone.patch_size)(dict(sample), None)
    out = transform(dict(sample))
    assert out["image"].shape == (3, 96, 128) and out["meta"]["valid"] == (23, 29, 50, 70)
    for key in ("image", "depth"):
        assert torch.equal(out[key], reference[key])


@pytest.mark.parametrize(
    "size, expected",
    [
        ((288, 384), (96, 128)),
        ((384, 288), (128, 96)),
        ((96, 128), (96, 128)),
        ((10, 10), (111, 111)),
        ((3000, 4000), (96, 128)),
        ((1, 500), (5, 2479)),
    ],
)
def test_the_resolution_rule_matches_the_test_area_and_keeps_the_aspect(size, expected):
    transform = EvalTransform((96, 128), multiple=8)
    assert transform.inference_size(*size) == expected
    h, w = expected
    assert abs(h * w - 96 * 128) <= 96 * 128 * 0.03 + max(h, w)
    assert transform.inference_size(*size, scale=1.0) == size
    assert transform.inference_size(300, 400, scale=0.5) == (150, 200)
    with pytest.raises(ValueError, match="positive"):
        transform.inference_size(300, 400, scale=0.0)
    sample = transform.prepare(torch.full((3, *size), 128.0))
    padded = sample["image"].shape[-2:]
    assert padded[0] % 8 == 0 and padded[1] % 8 == 0 and padded[0] >= 96 and padded[1] >= 128
    top, left, valid_h, valid_w = sample["meta"]["valid"]
    assert (valid_h, valid_w) == expected and sample["meta"]["size"] == size
    assert top == (padded[0] - valid_h) // 2 and left == (padded[1] - valid_w) // 2


# ----------------------------------------------------------------------------------------------------------
# The engine's predictor


@pytest.mark.parametrize("task", ["semseg", "depth", "normals", "edge", "sal", "human_parts"])
@pytest.mark.parametrize("source, target", [((7, 9), (30, 41)), ((12, 16), (5, 6)), ((8, 8), (8, 8))])
def test_strip_resampling_equals_interpolating_then_postprocessing(task, source, target):
    channels = {"semseg": 40, "depth": 1, "normals": 3, "edge": 1, "sal": 2, "human_parts": 7}[task]
    raw = torch.randn(channels, *source, dtype=torch.float64)
    resampled = F.interpolate(raw[None], size=target, mode="bilinear", align_corners=False)[0]
    strips = list(bilinear_strips(raw, target, strip_elements=2 * channels * target[1]))  # strips of 2 rows
    assert len(strips) == -(-target[0] // 2) and all(strip.shape[1] <= 2 for strip in strips)
    torch.testing.assert_close(torch.cat(strips, dim=1), resampled, rtol=1e-14, atol=1e-14)
    got = resample_postprocess(task, raw, target, strip_elements=2 * channels * target[1])
    expected = postprocess(task, resampled[None])[0]
    if task in ("semseg", "human_parts"):
        assert got.dtype == torch.uint8 and torch.equal(got.long(), expected)
    else:  # postprocess computes in float32
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)


class PointwiseStub(torch.nn.Module):
    """Outputs that are a per-pixel function of the input (1x1 convolutions), recording the input sizes."""

    def __init__(self, num_outputs: dict[str, int]):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Conv2d(3, k, 1) for t, k in num_outputs.items()})
        for head in self.heads.values():
            torch.nn.init.normal_(head.weight, generator=generator)
        self.sizes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape))
        return {t: torch.tanh(head(x)) * 3 for t, head in self.heads.items()}


def _stub(train_size=(32, 48), test_size=(32, 48)):
    meta = ModelMeta(
        dataset="nyud",
        tasks=NYUD.tasks,
        num_outputs=dict(NYUD.num_outputs),
        train_size=train_size,
        stride=16,
        test_size=test_size,
    )
    return PointwiseStub(meta.num_outputs), meta


def test_whole_mode_is_one_pass_at_the_model_scale_and_outputs_come_back_at_the_image_size():
    stub, meta = _stub()
    predictor = Predictor(stub, meta)
    image = torch.from_numpy(_photo(96, 144)).permute(2, 0, 1)  # 3x the test size
    result = predictor.predict([image])[0]
    assert stub.sizes == [(1, 3, 32, 48)]  # one pass, at the test size
    sample = meta.transforms().prepare(image)
    with torch.no_grad():
        raw = stub(sample["image"][None])
    for task in NYUD.tasks:
        expected = postprocess(task, F.interpolate(raw[task], size=(96, 144), mode="bilinear", align_corners=False))[0]
        assert result[task].shape[-2:] == (96, 144)
        if task == "semseg":
            assert torch.equal(result[task].long(), expected)
        else:
            torch.testing.assert_close(result[task], expected)


def test_results_do_not_depend_on_batching_or_on_the_other_images():
    stub, meta = _stub()
    images = [
        torch.from_numpy(_photo(*size, seed=i)).permute(2, 0, 1)
        for i, size in enumerate([(32, 48), (50, 70), (64, 96), (40, 30), (5, 7)])
    ]
    alone = [Predictor(stub, meta, batch_size=1).predict([image])[0] for image in images]
    stub.sizes.clear()
    together = Predictor(stub, meta, batch_size=8).predict(images)
    padded = [tuple(meta.transforms().prepare(image)["image"].shape[-2:]) for image in images]
    assert sorted(stub.sizes) == sorted((padded.count(size), 3, *size) for size in set(padded))  # one pass a size
    assert len(set(padded)) == 2
    for single, batched, image in zip(alone, together, images):
        for task in NYUD.tasks:
            assert batched[task].shape[-2:] == image.shape[-2:]
            torch.testing.assert_close(batched[task].float(), single[task].float(), rtol=1e-5, atol=1e-5)


def test_window_origins_cover_with_overlap():
    assert window_origins(50, 64, 0.25) == [0] and window_origins(64, 64, 0.25) == [0]
    for length, window in [(100, 64), (1000, 96), (97, 96)]:
        starts = window_origins(length, window, 1 / 3)
        assert starts[0] == 0 and starts[-1] == length - window
        assert all(0 < b - a <= window * 2 / 3 for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError, match="overlap"):
        window_origins(100, 64, 1.0)


def test_blended_windows_leave_no_seams():
    """A model whose output is constant per window (its input's mean): plain averaging of overlapping windows would
    jump by about half the step between neighbouring windows at every window edge; the blend changes smoothly."""
    ramp = torch.linspace(0, 255, 300).expand(1, 3, 48, 300).contiguous()

    def window_mean(x):
        return {"depth": x.mean(dim=(1, 2, 3), keepdim=True).expand(x.shape[0], 1, *x.shape[-2:])}

    out = blend_windows(window_mean, ramp, (48, 64), overlap=1 / 3)["depth"][0, 0]
    starts = window_origins(300, 64, 1 / 3)
    step = max(b - a for a, b in zip(starts, starts[1:])) * 255 / 299  # between neighbouring windows' means
    jumps = (out[:, 1:] - out[:, :-1]).abs().max()
    assert jumps < 0.1 * step
    assert torch.all(out[:, 1:] >= out[:, :-1] - 1e-3)  # monotone, like the input
    constant = blend_windows(lambda x: {"edge": torch.ones(x.shape[0], 1, *x.shape[-2:])}, ramp, (48, 64))
    torch.testing.assert_close(constant["edge"], torch.ones(1, 1, 48, 300))  # a weighted mean, not a sum
    weights = window_weights(48, 64)
    assert weights.min() > 0 and weights[24, 32] == weights.max()
    with pytest.raises(ValueError, match="pad them"):
        blend_windows(window_mean, torch.zeros(1, 3, 10, 100), (48, 64))


@pytest.mark.parametrize("size", [(100, 130), (20, 30), (1, 1), (32, 48)])
def test_slide_mode_equals_whole_mode_for_a_pointwise_model(size):
    stub, meta = _stub()
    image = torch.from_numpy(_photo(*size)).permute(2, 0, 1)
    whole = Predictor(stub, meta, scale=1.0).predict([image])[0]
    stub.sizes.clear()
    slide = Predictor(stub, meta, mode="slide", scale=1.0).predict([image])[0]
    assert {s[-2:] for s in stub.sizes} == {(32, 48)}  # every window is the training size
    for task in NYUD.tasks:
        assert slide[task].shape[-2:] == size
        torch.testing.assert_close(slide[task].float(), whole[task].float(), rtol=1e-4, atol=1e-4)


def test_predictor_options_are_checked():
    stub, meta = _stub()
    for options, message in [
        ({"mode": "tiles"}, "mode"),
        ({"scale": 0}, "scale"),
        ({"overlap": 1.5}, "overlap"),
        ({"batch_size": 0}, "batch_size"),
    ]:
        with pytest.raises(ValueError, match=message):
            Predictor(stub, meta, **options)
    with pytest.raises(ValueError, match=r"this model predicts \['semseg', 'depth', 'normals', 'edge'\]"):
        Predictor(stub, meta).predict([torch.zeros(3, 4, 4)], tasks=["sal"])
    with pytest.raises(ValueError, match=r"image 0: expected an RGB tensor \(3, H, W\)"):
        Predictor(stub, meta).predict([torch.zeros(4, 4)])
    if not torch.cuda.is_available():
        with pytest.raises(ResourceError, match="CUDA is not available"):
            Predictor(stub, meta, device="cuda")
    with pytest.raises(InputError, match="device 'gpu0': expected auto, cpu, cuda or cuda:N"):
        Predictor(stub, meta, device="gpu0")


# ----------------------------------------------------------------------------------------------------------
# pamm.load and the predictor it returns


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = tiny_config()
    model = pamm.build_model(cfg, load_backbone_weights=False)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_weights(path, model.state_dict(), cfg)
    return path


def test_load_takes_every_model_source(tiny_checkpoint, tmp_path):
    predictor = pamm.load(tiny_checkpoint, device="cpu")
    assert isinstance(predictor, ImagePredictor) and predictor.tasks == NYUD.tasks
    assert predictor.meta.test_size == (64, 96) and "mode='whole'" in repr(predictor)
    image = _photo(40, 60)
    reference = predictor(image)["depth"]
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "step-0000020.safetensors").write_bytes(tiny_checkpoint.read_bytes())
    from_run = pamm.load(run, device="cpu", batch_size=2)
    assert from_run.predictor.batch_size == 2 and np.array_equal(from_run(image)["depth"], reference)
    predictor.predictor.model.save_pretrained(tmp_path / "pretrained")
    from_folder = pamm.load(tmp_path / "pretrained", device="cpu")
    assert from_folder.meta == predictor.meta  # the evaluation transform's sizes travel with the folder
    assert np.array_equal(from_folder(image)["depth"], reference)
    (tmp_path / "empty").mkdir()
    (tmp_path / "run2" / "checkpoints").mkdir(parents=True)
    for source, message in [
        (tmp_path / "nothing", "no such file or folder"),
        (tmp_path / "empty", "neither a run folder"),
        (tmp_path / "run2", "no valid checkpoint"),
    ]:
        with pytest.raises(InputError, match=message):
            pamm.load(source)


@pytest.fixture
def stub_predictor():
    stub, meta = _stub()
    return ImagePredictor(Predictor(stub, meta))


def test_every_input_kind_gives_maps_at_its_own_size(stub_predictor, tmp_path):
    rgb = _photo(30, 40)
    path = _save(Image.fromarray(rgb), tmp_path / "x.png")
    chw = torch.from_numpy(rgb).permute(2, 0, 1)
    kinds = {
        "path": path,
        "str": str(path),
        "PIL": Image.fromarray(rgb),
        "uint8 array": rgb,
        "float array": rgb / 255.0,
        "float32 array": (rgb / 255.0).astype(np.float32),
        "uint8 CHW tensor": chw,
        "float CHW tensor": chw.float() / 255,
        "non-contiguous array": np.asfortranarray(rgb),
    }
    reference = stub_predictor(rgb)
    assert isinstance(reference, Prediction) and np.array_equal(reference.image, rgb) and reference.colors == {}
    for name, item in kinds.items():
        result = stub_predictor(item)
        assert set(result) == set(NYUD.tasks), name
        for task in NYUD.tasks:
            assert result[task].shape[:2] == (30, 40), name
            np.testing.assert_allclose(
                result[task].astype(np.float64), reference[task].astype(np.float64), atol=1e-4, err_msg=name
            )
    assert np.shares_memory(reference.image, rgb)  # a uint8 array is not copied
    assert reference["semseg"].dtype == np.uint8 and reference["normals"].shape == (30, 40, 3)
    assert all(value.flags.c_contiguous for value in reference.values())
    assert reference["depth"].dtype == np.float32 and (reference["depth"] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(reference["normals"], axis=-1), 1.0, rtol=1e-5)
    assert ((reference["edge"] >= 0) & (reference["edge"] <= 1)).all()


def test_lists_and_batches_give_lists_in_order(stub_predictor):
    images = [_photo(30, 40, seed=1), _photo(20, 50, seed=2), _photo(64, 64, seed=3)]
    results = stub_predictor([images[0], Image.fromarray(images[1]), torch.from_numpy(images[2]).permute(2, 0, 1)])
    assert [r["depth"].shape for r in results] == [(30, 40), (20, 50), (64, 64)]
    for image, result in zip(images, results):
        np.testing.assert_allclose(result["depth"], stub_predictor(image)["depth"], atol=1e-5)
    batch = torch.from_numpy(np.stack([images[0], _photo(30, 40, seed=4)])).permute(0, 3, 1, 2)
    from_batch = stub_predictor(batch)
    assert isinstance(from_batch, list) and len(from_batch) == 2
    np.testing.assert_allclose(from_batch[0]["depth"], results[0]["depth"], atol=1e-5)
    assert stub_predictor([]) == []


def test_colour_maps_on_request_and_a_subset_of_tasks(stub_predictor):
    result = stub_predictor(_photo(30, 40), colorize=True, tasks=["semseg", "depth"])
    assert set(result) == {"semseg", "depth"} and set(result.colors) == {"semseg", "depth"}
    for colour in result.colors.values():
        assert colour.shape == (30, 40, 3) and colour.dtype == np.uint8
    palette = palette_for("nyud", "semseg")
    assert np.array_equal(result.colors["semseg"], palette[result["semseg"]])
    with pytest.raises(ValueError, match="expected a non-empty subset"):
        stub_predictor(_photo(4, 4), tasks=["human_parts"])


@pytest.mark.parametrize(
    "item, error, message",
    [
        (42, TypeError, r"input: got int; expected a path, a PIL image, a NumPy array \(H, W, 3\)"),
        ({"image": 1}, TypeError, "got dict"),
        (np.zeros((4, 5)), ValueError, r"NumPy array of shape \(4, 5\); expected an RGB image \(H, W, 3\)"),
        (np.zeros((3, 4, 5)), ValueError, r"shape \(3, 4, 5\); expected an RGB image \(H, W, 3\)"),
        (np.zeros((4, 5, 4), np.uint8), ValueError, r"shape \(4, 5, 4\)"),
        (np.zeros((0, 5, 3), np.uint8), ValueError, "an empty image"),
        (np.full((4, 5, 3), 200.0), ValueError, r"values must be finite and in \[0, 1\], got 200..200"),
        (np.full((4, 5, 3), np.nan), ValueError, r"finite and in \[0, 1\]"),
        (np.zeros((4, 5, 3), np.int32), ValueError, r"input: dtype int32; expected uint8 \(0..255\) or floating point"),
        (torch.zeros(4, 5, 3), ValueError, r"tensor of shape \(4, 5, 3\); expected an RGB image \(3, H, W\)"),
        (torch.zeros(2, 1, 4, 5), ValueError, r"expected a batch \(N, 3, H, W\)"),
        ([np.zeros((4, 5, 3), np.uint8), "x.png", torch.zeros(1, 3, 4, 4)], ValueError, "input 2: a batch tensor"),
        ([np.zeros((4, 5, 3), np.uint8), 3.5], TypeError, "input 1: got float"),
    ],
)
def test_wrong_inputs_raise_errors_naming_what_was_expected(stub_predictor, item, error, message):
    with pytest.raises(error, match=message):
        stub_predictor(item)


def test_a_path_that_cannot_be_read_raises_the_readers_error(stub_predictor, tmp_path):
    with pytest.raises(ImageReadError, match="nothing.png: missing file"):
        stub_predictor(tmp_path / "nothing.png")
    limited = ImagePredictor(stub_predictor.predictor, max_pixels=100)
    with pytest.raises(ImageTooLargeError, match="above the limit of 100"):
        limited(_save(Image.fromarray(_photo(20, 20)), tmp_path / "big.png"))
    assert limited(_photo(20, 20))["depth"].shape == (20, 20)  # arrays are not read from files: no limit
    assert ImagePredictor(stub_predictor.predictor, resize=10)(tmp_path / "big.png")["depth"].shape == (10, 10)


# ----------------------------------------------------------------------------------------------------------
# A trained model: whole-image inference is consistent across resolutions; the mosaic is not


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """The demo preset (EfficientNet-Lite0 from ImageNet weights), semantic segmentation only, trained for 40
    steps on 32 rendered 48x64 rooms: about 15 s on one core. Returns (run folder, dataset root)."""
    from pamm.data.synth import synthesize
    from pamm.engine.trainer import Trainer

    base = tmp_path_factory.mktemp("trained")
    synthesize(base / "data", layout="nyud", n_train=32, n_val=2, size=(48, 64), seed=0, progress=False)
    root = base / "data" / "NYUDv2"
    cfg = pamm.load_config(
        "demo",
        {
            "data.root": str(root),
            "data.train_size": [48, 64],
            "data.test_size": [48, 64],
            "data.tasks": ["semseg"],
            "data.workers": 0,
            "train.iterations": 40,
            "train.warmup_iters": 5,
            "train.eval_every": 0,
            "train.checkpoint_every": 0,
        },
    )
    Trainer(cfg, base / "run", device="cpu", progress=False, log=lambda message: None).fit()
    return base / "run", root


def test_whole_image_prediction_agrees_across_resolutions_and_the_mosaic_does_not(trained_run):
    run, root = trained_run
    whole = pamm.load(run, device="cpu")
    mosaic = pamm.load(run, device="cpu", mode="slide", scale=1.0)  # training-size windows at full resolution
    for image_id in (root / "gt_sets" / "val.txt").read_text().split():
        image = read_rgb_image(root / "images" / f"{image_id}.png")
        upscaled = np.asarray(Image.fromarray(image).resize((64 * 3, 48 * 3), Image.Resampling.BILINEAR))
        original = whole(image)["semseg"]
        assert len(np.unique(original)) >= 3  # a real segmentation, not one class everywhere
        big = whole(upscaled)
        assert big["semseg"].shape == (144, 192)
        agreement = (big["semseg"][1::3, 1::3] == original).mean()  # the centre pixel of every 3x3 block
        assert agreement >= 0.9, f"{image_id}: {agreement:.3f}"
        tiled = mosaic(upscaled)["semseg"]
        assert tiled.shape == (144, 192)
        assert (tiled[1::3, 1::3] == original).mean() < 0.9  # each window sees a ninth of the room, zoomed in


# ----------------------------------------------------------------------------------------------------------
# Files (pamm predict)


def test_find_inputs_expands_folders_and_patterns(tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    for name in ("b.jpg", "a.PNG", "sub/c.webp", "clip.mp4"):
        (photos / name).write_bytes(b"x")
    (photos / "README.txt").write_text("not an image")
    assert find_inputs([photos]) == [photos / "a.PNG", photos / "b.jpg", photos / "clip.mp4"]
    assert find_inputs([str(photos / "**" / "*.webp")]) == [photos / "sub" / "c.webp"]
    assert find_inputs([photos / "b.jpg", photos, photos / "README.txt"]) == [
        photos / "b.jpg",
        photos / "a.PNG",
        photos / "clip.mp4",
        photos / "README.txt",
    ]  # each once; files as given
    (tmp_path / "empty").mkdir()
    for argument, message in [
        (tmp_path / "nothing.jpg", "nothing.jpg: no such file or folder"),
        (tmp_path / "empty", "a folder without images or videos"),
        (str(tmp_path / "*.gif"), r"\*.gif: no file matches this pattern"),
    ]:
        with pytest.raises(InputError, match=message):
            find_inputs([argument])


def test_each_image_gets_its_maps_pictures_and_panel(stub_predictor, tmp_path):
    rgb = _photo(30, 40)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display
    inputs = [
        _save(Image.fromarray(rgb), tmp_path / "photo.jpg"),
        _save(Image.fromarray(rgb[..., 0]), tmp_path / "gray.png"),
        _save(Image.fromarray(rgb), tmp_path / "rotated.jpg", exif=exif),
    ]
    out = tmp_path / "out"
    report = predict_files(stub_predictor, inputs, out)
    assert report.images == 3 and len(report.written) == 3 * (2 * 4 + 1) and not report.failures
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in report.written)  # nothing else
    for stem, size in [("photo", (30, 40)), ("gray", (30, 40)), ("rotated", (40, 30))]:
        maps = {task: np.load(out / f"{stem}_{task}.npy") for task in NYUD.tasks}
        semseg = Image.open(out / f"{stem}_semseg.png")
        assert semseg.mode == "P" and np.array_equal(np.asarray(semseg), maps["semseg"])
        assert np.array_equal(np.asarray(semseg.convert("RGB")), palette_for("nyud", "semseg")[maps["semseg"]])
        depth = Image.open(out / f"{stem}_depth.png")
        assert depth.mode.startswith("I;16") and depth.size == size[::-1]
        assert np.array_equal(np.asarray(depth), np.rint(maps["depth"] * DEPTH_PNG_SCALE).astype(np.uint16))
        normals = np.asarray(Image.open(out / f"{stem}_normals.png"))
        assert normals.shape == (*size, 3)
        assert np.abs(normals / 255 * 2 - 1 - maps["normals"]).max() <= 1 / 255 + 1e-6
        edge = Image.open(out / f"{stem}_edge.png")
        assert edge.mode == "L" and np.array_equal(np.asarray(edge), np.rint(maps["edge"] * 255).astype(np.uint8))
        assert Image.open(out / f"{stem}_panel.png").mode == "RGB"


def test_tasks_no_panel_and_clashing_names(stub_predictor, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _save(Image.fromarray(_photo(30, 40)), tmp_path / "a" / "x.png")
    second = _save(Image.fromarray(_photo(20, 20)), tmp_path / "b" / "x.jpg")
    out = tmp_path / "out"
    predict_files(stub_predictor, [first, second], out, tasks=["depth"], panel=False)
    assert sorted(p.name for p in out.iterdir()) == ["x-2_depth.npy", "x-2_depth.png", "x_depth.npy", "x_depth.png"]
    assert np.load(out / "x-2_depth.npy").shape == (20, 20)
    with pytest.raises(ValueError, match="this model predicts"):
        predict_files(stub_predictor, [first], tmp_path / "out2", tasks=["sal"])
    assert not (tmp_path / "out2").exists()


def test_unreadable_inputs_are_reported_after_the_others(stub_predictor, tmp_path):
    good = [_save(Image.fromarray(_photo(30, 40, seed=i)), tmp_path / f"good{i}.png") for i in range(3)]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    huge = _save(Image.fromarray(_photo(120, 160)), tmp_path / "huge.png")
    limited = ImagePredictor(stub_predictor.predictor, max_pixels=5000)
    with pytest.raises(PredictionFailed) as err:
        predict_files(limited, [good[0], corrupt, good[1], huge, good[2]], tmp_path / "out")
    report = err.value.report
    assert [path for path, _ in report.failures] == [str(corrupt), str(huge)]
    assert "--resize" in report.failures[1][1] and report.images == 3
    assert str(err.value).startswith("2 input(s) failed:") and exit_code(err.value) == EXIT_INPUT
    for path in good:
        assert (tmp_path / "out" / f"{path.stem}_panel.png").is_file()
    assert not list((tmp_path / "out").glob("corrupt*")) and not list((tmp_path / "out").glob(".*"))


def test_disk_full_names_the_file_and_leaves_no_partial_set(stub_predictor, tmp_path, monkeypatch):
    inputs = [_save(Image.fromarray(_photo(30, 40, seed=i)), tmp_path / f"im{i}.png") for i in range(3)]
    out = tmp_path / "out"
    real_open, opened = open, []

    def open_until_full(file, mode="r", *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if "w" in mode:
            opened.append(file)
            if len(opened) == 9 + 4:  # the 4th file of the second image (9 files an image)

                class Full:
                    def __enter__(self):
                        return self

                    def __exit__(self, *exc):
                        handle.close()

                    def write(self, data):
                        raise OSError(errno.ENOSPC, "No space left on device")

                return Full()
        return handle

    monkeypatch.setattr(pamm.fs, "open", open_until_full, raising=False)
    with pytest.raises(ResourceError) as err:
        predict_files(stub_predictor, inputs, out, progress=False)
    message = str(err.value)
    assert "im1_" in message and "no space left on the device" in message and "\n" not in message
    assert exit_code(err.value) == EXIT_RESOURCE
    names = sorted(p.name for p in out.iterdir())
    assert len([n for n in names if n.startswith("im0_")]) == 9  # the first image complete
    assert not [n for n in names if not n.startswith("im0_")]  # nothing of the second, no temporary files


def test_existing_outputs_are_not_overwritten_unless_asked(stub_predictor, tmp_path):
    image = _save(Image.fromarray(_photo(30, 40)), tmp_path / "x.png")
    out = tmp_path / "out"
    predict_files(stub_predictor, [image], out)
    (out / "x_depth.npy").write_bytes(b"keep me")
    with pytest.raises(InputError, match=r"x_\w+\.\w+ and 8 more output file\(s\) exist already; pass --overwrite"):
        predict_files(stub_predictor, [image], out)
    assert (out / "x_depth.npy").read_bytes() == b"keep me"
    predict_files(stub_predictor, [image], out, overwrite=True)
    assert np.load(out / "x_depth.npy").shape == (30, 40)


def test_an_output_folder_that_cannot_be_written_fails_before_any_work(stub_predictor, tmp_path):
    image = _save(Image.fromarray(_photo(10, 10)), tmp_path / "x.png")
    (tmp_path / "file").write_text("a file, not a folder")
    stub = stub_predictor.predictor.model
    with pytest.raises(InputError, match="file: is a file, not a folder"):
        predict_files(stub_predictor, [image], tmp_path / "file")
    with pytest.raises(ResourceError, match="cannot write the output folder"):
        predict_files(stub_predictor, [image], tmp_path / "file" / "out")
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ResourceError, match="locked"):
            predict_files(stub_predictor, [image], locked)
    assert stub.sizes == []


# ----------------------------------------------------------------------------------------------------------
# Videos


def _write_clip(path: Path, frames: int = 5, size=(40, 56)) -> None:
    av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed: pip install 'pamm[video]'")
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            frame = np.roll(_photo(*size, seed=i), 4 * i, axis=1)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))


def test_a_video_gives_a_video_of_panels(stub_predictor, tmp_path):
    from pamm.video import VideoReader

    clip = tmp_path / "clip.mp4"
    _write_clip(clip, frames=5)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    out = tmp_path / "out"
    with pytest.raises(PredictionFailed) as err:
        predict_files(
            ImagePredictor(Predictor(stub_predictor.predictor.model, stub_predictor.meta, batch_size=2)),
            [clip, broken],
            out,
        )
    report = err.value.report
    assert report.videos == 1 and report.frames == 5 and report.written == [out / "clip_panel.mp4"]
    assert [path for path, _ in report.failures] == [str(broken)] and "broken.mp4: not a readable video" in str(
        err.value
    )
    with VideoReader(out / "clip_panel.mp4") as video:
        frames = list(video)
        assert video.fps == 10
    assert len(frames) == 5 and len({f.shape for f in frames}) == 1
    panel = np.asarray(Image.open(io.BytesIO(_first_panel(stub_predictor, clip))))
    assert frames[0].shape[1] >= panel.shape[1] and frames[0].shape[0] >= panel.shape[0]
    assert sorted(p.name for p in out.iterdir()) == ["clip_panel.mp4"]


def _first_panel(predictor: ImagePredictor, clip: Path) -> bytes:
    from pamm.outputs import png_bytes
    from pamm.video import VideoReader
    from pamm.viz import make_panel

    with VideoReader(clip) as video:
        frame = next(iter(video))
    return png_bytes(make_panel(frame, predictor(frame), meta=predictor.meta))


def test_writing_a_video_is_all_or_nothing(tmp_path):
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed: pip install 'pamm[video]'")
    from pamm.video import write_video

    def frames_then_failure():
        yield np.zeros((10, 10, 3), np.uint8)
        raise RuntimeError("the model failed")

    target = tmp_path / "v.mp4"
    with pytest.raises(RuntimeError, match="the model failed"):
        write_video(target, frames_then_failure())
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="every frame must have one size"):
        write_video(target, [np.zeros((10, 10, 3), np.uint8), np.zeros((12, 10, 3), np.uint8)])
    assert list(tmp_path.iterdir()) == []
    assert write_video(target, [np.full((9, 11, 3), 128, np.uint8)] * 3, fps=5) == 3  # odd sides are padded
    assert target.is_file()


# ----------------------------------------------------------------------------------------------------------
# The command line


def _pamm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pamm", "predict", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_cli_predicts_folders_with_options_and_reports_failures_once(tiny_checkpoint, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        _save(Image.fromarray(_photo(50, 70, seed=i)), photos / f"p{i}.jpg")
    (photos / "notes.txt").write_text("skipped: not an image suffix")
    bad = photos / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    result = _pamm(
        "--checkpoint",
        str(tiny_checkpoint),
        str(photos),
        "--out",
        str(out),
        "--tasks",
        "semseg,depth",
        "--no-panel",
        "--batch-size",
        "2",
        "--quiet",
    )
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("pamm predict: error:")]
    assert len(errors) == 1 and errors[0].count("bad.png") == 1 and "cannot open the image" in errors[0]
    assert "2 of 3 input(s)" not in result.stderr and "1 of 3 input(s) failed" in result.stderr
    assert "predict:" not in result.stderr.replace("pamm predict:", "")  # --quiet: no progress bar
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"p{i}_{t}.{k}" for i in range(2) for t in ("semseg", "depth") for k in ("npy", "png")
    )
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = main(
        [
            "predict",
            "--checkpoint",
            str(tiny_checkpoint),
            str(photos / "p0.jpg"),
            "--out",
            str(out),
            "--tasks",
            "depth",
            "--no-panel",
        ]
    )
    stderr = capsys.readouterr().err
    assert again == 2 and "exist already; pass --overwrite" in stderr and len(stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_refuses_bad_arguments_before_loading_anything(tmp_path, capsys):
    for args, message in [
        (["--max-pixels", "0"], "--max-pixels: expected a positive integer (1 or more), got 0"),
        (["--resize", "-3"], "--resize: expected a positive integer"),
        (["--batch-size", "x"], "--batch-size: expected a positive integer, got 'x'"),
        (["--scale", "0"], "--scale: expected 'auto' or a positive factor"),
        (["--overlap", "1"], "--overlap: expected a fraction in [0, 1)"),
    ]:
        with pytest.raises(SystemExit) as exited:
            main(["predict", "--checkpoint", "nowhere", "photo.jpg", "--out", str(tmp_path / "out"), *args])
        stderr = capsys.readouterr().err
        assert exited.value.code == 2 and message in stderr, stderr
        assert "e.g. 0" not in stderr
    assert (
        main(["predict", "--checkpoint", "nowhere", str(tmp_path / "missing.jpg"), "--out", str(tmp_path / "out")]) == 2
    )
    assert "missing.jpg: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
