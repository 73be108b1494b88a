"""``pamm predict``: reading every kind of image, the sliding-window tiler, outputs and failures."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pamm
from pamm.engine.checkpoint import save_weights
from pamm.engine.predictor import (
    ImageReadError,
    ImageTooLargeError,
    OutputFolderError,
    PredictionFailed,
    Predictor,
    load_image,
    predict,
    sliding_window_outputs,
    window_origins,
)
from pamm.models.pamm import ModelMeta
from pamm.tasks import DATASETS

from conftest import tiny_config

NYUD = DATASETS["nyud"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run several times faster on one thread than on two contended ones (shared CI machines)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
# Reading images


def test_image_kinds_are_read_as_rgb(tmp_path):
    rgb = _photo(20, 30)
    gray = rgb[..., 0]
    assert np.array_equal(load_image(_save(Image.fromarray(rgb), tmp_path / "rgb.png")), rgb)
    assert np.array_equal(load_image(_save(Image.fromarray(gray), tmp_path / "l.png")), np.dstack([gray] * 3))
    palette_image = Image.fromarray(rgb).quantize(16)
    assert np.array_equal(load_image(_save(palette_image, tmp_path / "p.png")),
                          np.asarray(palette_image.convert("RGB")))
    sixteen = (np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) * 100)
    out = load_image(_save(Image.fromarray(sixteen), tmp_path / "i16.png"))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.array_equal(out[..., 1], np.rint(sixteen * (255 / 65535)).astype(np.uint8))
    cmyk = load_image(_save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.jpg", quality=95))
    assert cmyk.shape == (20, 30, 3) and np.abs(cmyk.astype(int) - rgb).mean() < 12


def test_transparency_is_composited_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, :2, 3] = 255  # left half opaque red, right half fully transparent
    out = load_image(_save(Image.fromarray(rgba), tmp_path / "rgba.png"))
    assert tuple(out[0, 0]) == (200, 0, 0) and tuple(out[0, 3]) == (255, 255, 255)
    la = Image.fromarray(np.stack([np.full((4, 4), 100, np.uint8), np.full((4, 4), 0, np.uint8)], -1), mode="LA")
    assert tuple(load_image(_save(la, tmp_path / "la.png"))[1, 1]) == (255, 255, 255)
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 40, 50, 60])
    palette.putpixel((1, 0), 1)
    out = load_image(_save(palette, tmp_path / "p_transparent.png", transparency=1))
    assert tuple(out[0, 0]) == (10, 20, 30) and tuple(out[0, 1]) == (255, 255, 255)


def test_content_decides_not_the_extension_and_exif_orientation_is_applied(tmp_path):
    rgb = _photo(20, 40)
    as_jpeg = load_image(_save(Image.fromarray(rgb), tmp_path / "photo.jpg", quality=95))
    disguised = tmp_path / "photo.png"
    disguised.write_bytes((tmp_path / "photo.jpg").read_bytes())
    assert np.array_equal(load_image(disguised), as_jpeg)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    rotated = load_image(_save(Image.fromarray(rgb), tmp_path / "rotated.jpg", exif=exif, quality=95))
    assert rotated.shape == (40, 20, 3)
    assert np.abs(rotated.astype(int) - np.rot90(as_jpeg, k=-1)).mean() < 3


def test_unreadable_files_raise_errors_naming_them(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("this is text, not an image")
    buffer = io.BytesIO()
    Image.fromarray(_photo(64, 64)).save(buffer, format="PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    for name, message in [("empty.png", "empty"), ("notes.jpg", "not an image"), ("truncated.png", "truncated"),
                          ("missing.png", "no such file")]:
        with pytest.raises(ImageReadError, match=message) as err:
            load_image(tmp_path / name)
        assert name in str(err.value) and err.value.path.endswith(name)
    floats = Image.fromarray(np.zeros((2, 2), np.float32))
    with pytest.raises(ImageReadError, match="floating-point"):
        load_image(_save(floats, tmp_path / "float.tiff"))


def test_pixel_limit_and_resize(tmp_path):
    path = _save(Image.fromarray(_photo(100, 150)), tmp_path / "big.jpg", quality=90)
    with pytest.raises(ImageTooLargeError, match=r"150x100 = 15,000 pixels is above the limit of 5,000 .*e\.g\. 86"):
        load_image(path, max_pixels=5000)
    assert load_image(path, max_pixels=5000, resize=60).shape == (40, 60, 3)
    assert load_image(path, resize=1000).shape == (100, 150, 3)  # never upscaled
    with pytest.raises(ImageTooLargeError, match="smaller resize"):
        load_image(path, max_pixels=100, resize=60)


# ----------------------------------------------------------------------------------------------------------
# Tiling


def test_window_origins_cover_with_overlap():
    assert window_origins(50, 64, 0.25) == [0] and window_origins(64, 64, 0.25) == [0]
    for length, window in [(100, 64), (1000, 96), (97, 96)]:
        starts = window_origins(length, window, 0.25)
        assert starts[0] == 0 and starts[-1] == length - window
        assert all(0 < b - a <= window * 0.75 for a, b in zip(starts, starts[1:]))


class PointwiseStub(torch.nn.Module):
    """Outputs that are a per-pixel function of the input (1x1 convolutions), recording window sizes."""

    def __init__(self, num_outputs: dict[str, int]):
        super().__init__()
        torch.manual_seed(0)
        self.heads = torch.nn.ModuleDict({t: torch.nn.Conv2d(3, k, 1) for t, k in num_outputs.items()})
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return {t: torch.tanh(head(x)) * 3 for t, head in self.heads.items()}


def _stub_predictor(train_size=(32, 48)):
    meta = ModelMeta(dataset="nyud", tasks=NYUD.tasks, num_outputs=dict(NYUD.num_outputs), train_size=train_size,
                     stride=16)
    stub = PointwiseStub(meta.num_outputs)
    return Predictor(stub, meta), stub


@pytest.mark.parametrize("size", [(100, 130), (32, 200), (20, 30), (1, 1), (32, 48)])
def test_tiles_equal_a_direct_prediction_and_respect_the_window(size):
    predictor, stub = _stub_predictor()
    image = _photo(*size)
    raw = predictor.raw_outputs(image)
    x = (torch.tensor(image, dtype=torch.float32).permute(2, 0, 1) / 255 - torch.tensor(predictor.meta.mean)[:, None,
         None]) / torch.tensor(predictor.meta.std)[:, None, None]
    with torch.no_grad():
        direct = stub.forward(x[None])
    for task in NYUD.tasks:
        assert raw[task].shape == (NYUD.num_outputs[task], *size)
        torch.testing.assert_close(raw[task], direct[task][0], rtol=1e-5, atol=1e-5)
    assert set(stub.sizes[:-1]) == {(32, 48)}  # every window (the direct call excluded) is the training size


def test_sliding_window_averages_overlaps():
    calls = []

    def ones(window):
        calls.append(window.shape)
        return {"edge": torch.ones(1, 1, *window.shape[-2:])}

    out = sliding_window_outputs(ones, torch.zeros(3, 70, 100), (32, 48), overlap=0.5)
    assert torch.equal(out["edge"], torch.ones(1, 70, 100))  # averaging, not summing
    assert max(c[-2] * c[-1] for c in calls) == 32 * 48 and len(calls) == 4 * 4
    with pytest.raises(ValueError, match="pad it first"):
        sliding_window_outputs(ones, torch.zeros(3, 10, 100), (32, 48))


# ----------------------------------------------------------------------------------------------------------
# predict(): files


def _check_outputs(out: Path, stem: str, size: tuple[int, int], tasks=NYUD.tasks):
    for task in tasks:
        value = np.load(out / f"{stem}_{task}.npy")
        if task == "semseg":
            assert value.shape == size and value.dtype == np.uint8 and value.max() < 40
        elif task == "normals":
            assert value.shape == (*size, 3) and value.dtype == np.float32
            np.testing.assert_allclose(np.linalg.norm(value, axis=-1), 1.0, rtol=1e-4)
        else:
            assert value.shape == size and value.dtype == np.float32
            if task == "edge":
                assert (value >= 0).all() and (value <= 1).all()
            if task == "depth":
                assert (value >= 0).all()
    assert Image.open(out / f"{stem}_panel.png").mode == "RGB"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = tiny_config()
    model = pamm.build_model(cfg, load_backbone_weights=False)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_weights(path, model.state_dict(), cfg)
    return path


def test_predict_with_a_checkpoint_continues_past_failures(tiny_checkpoint, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    rgb = _photo(50, 70)  # not a multiple of 16, smaller than the 64x96 training size
    files = [
        _save(Image.fromarray(rgb), inputs / "rgb.png"),
        _save(Image.fromarray(rgb[..., 1].astype(np.uint16) * 257), inputs / "sixteen.png"),
        _save(Image.fromarray(rgb), inputs / "jpeg_named.png", format="JPEG"),
        _save(Image.fromarray(rgb[:1, :1]), inputs / "one.png"),
        _save(Image.fromarray(_photo(50, 130)), inputs / "wide.jpg"),  # wider than 96: two windows
        _save(Image.fromarray(_photo(120, 160)), inputs / "huge.png"),
    ]
    corrupt = inputs / "corrupt.jpg"
    corrupt.write_bytes((inputs / "wide.jpg").read_bytes()[:300])
    out = tmp_path / "out"
    with pytest.raises(PredictionFailed) as err:
        predict(tiny_checkpoint, [*files[:2], corrupt, *files[2:]], out, max_pixels=16_000)
    failures = dict(err.value.failures)
    assert set(failures) == {str(corrupt), str(files[-1])}
    assert "corrupt.jpg" in failures[str(corrupt)] and "--resize" in failures[str(files[-1])]
    assert "2 image(s) failed" in str(err.value)
    for path in files[:-1]:
        size = {"one": (1, 1), "wide": (50, 130)}.get(path.stem, (50, 70))
        _check_outputs(out, path.stem, size)
    assert len(err.value.written) == 5 * (len(files) - 1)
    assert not [p for p in os.listdir(out) if p.startswith(".")]  # no temporary files left behind


def test_predict_writes_outputs_for_every_image_kind(tmp_path):
    predictor, _ = _stub_predictor()
    rgb = _photo(30, 40)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90° counter-clockwise to display
    files = [
        _save(Image.fromarray(rgb[..., 0]), tmp_path / "gray.png"),
        _save(Image.fromarray(np.dstack([rgb, np.full((30, 40), 90, np.uint8)])), tmp_path / "rgba.png"),
        _save(Image.fromarray(rgb).quantize(32), tmp_path / "palette.gif"),
        _save(Image.fromarray(rgb).convert("CMYK"), tmp_path / "cmyk.jpg"),
        _save(Image.fromarray(rgb).convert("1"), tmp_path / "bilevel.bmp"),
        _save(Image.fromarray(rgb), tmp_path / "webp.webp"),
        _save(Image.fromarray(rgb), tmp_path / "rotated.jpg", exif=exif),
    ]
    written = predict("unused", files, tmp_path / "out", predictor=predictor)
    assert len(written) == 5 * len(files)
    for path in files:
        _check_outputs(tmp_path / "out", path.stem, (40, 30) if path.stem == "rotated" else (30, 40))


def test_predict_resizes_on_request_and_names_clashing_stems(tmp_path):
    predictor, _ = _stub_predictor()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _save(Image.fromarray(_photo(100, 150)), tmp_path / "a" / "x.png")
    second = _save(Image.fromarray(_photo(30, 40)), tmp_path / "b" / "x.jpg")
    written = predict("unused", [first, second], tmp_path / "out", resize=75, predictor=predictor)
    assert np.load(tmp_path / "out" / "x_depth.npy").shape == (50, 75)
    assert np.load(tmp_path / "out" / "x-2_depth.npy").shape == (30, 40)
    assert len(written) == 10 and all(p.is_file() for p in written)


def test_unwritable_output_folder_fails_before_any_work(tmp_path):
    predictor, stub = _stub_predictor()
    image = _save(Image.fromarray(_photo(10, 10)), tmp_path / "x.png")
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(OutputFolderError, match="not writable"):
        predict("unused", [image], tmp_path / "file" / "out", predictor=predictor)
    if os.geteuid() != 0:  # root ignores permission bits
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(OutputFolderError, match="locked"):
            predict("unused", [image], locked, predictor=predictor)
    assert stub.sizes == []
