"""``check_dataset`` lists every problem of a dataset folder."""

from __future__ import annotations

import shutil

import numpy as np

from pamm.data import PascalContext, Problem, check_dataset
from test_data_fixtures import HEIGHT, WIDTH, write_png

pytest_plugins = ["test_data_fixtures"]  # the nyud_root / pascal_root fixtures


def test_clean_datasets_have_no_problems(nyud_root, pascal_root):
    assert check_dataset("nyud", nyud_root) == []
    assert check_dataset("pascal", pascal_root, workers=2, progress=False) == []


def test_every_nyud_problem_is_listed(nyud_root):
    images = nyud_root / "images"
    (images / "0001.png").write_bytes(b"")  # zero bytes
    (images / "0002.png").write_bytes((images / "0002.png").read_bytes()[:70])  # truncated
    write_png(nyud_root / "segmentation" / "0003.png", np.full((HEIGHT, WIDTH), 77, np.uint8))  # out of range
    write_png(nyud_root / "edge" / "0003.png", np.zeros((HEIGHT, WIDTH - 1), np.uint8))  # size mismatch
    (nyud_root / "depth" / "0004.npy").unlink()  # missing file
    with open(nyud_root / "gt_sets" / "val.txt", "a") as handle:
        handle.write("ghost\n")  # id without any file

    problems = check_dataset("nyud", nyud_root)
    keywords = ("empty", "truncated", "out of range", "differs", "missing file", "no files at all")
    found = {(problem.path, next(word for word in keywords if word in problem.message)) for problem in problems}
    assert found == {
        (str(images / "0001.png"), "empty"),
        (str(images / "0002.png"), "truncated"),
        (str(nyud_root / "segmentation" / "0003.png"), "out of range"),
        (str(nyud_root / "edge" / "0003.png"), "differs"),
        (str(nyud_root / "depth" / "0004.npy"), "missing file"),
        (str(nyud_root / "gt_sets" / "val.txt"), "no files at all"),
    }
    assert len(problems) == 6
    assert all(str(problem) == f"{problem.path}: {problem.message}" for problem in problems)
    assert "'ghost'" in next(problem.message for problem in problems if "no files" in problem.message)
    assert "val.txt" in next(problem.message for problem in problems if "missing file" in problem.message)


def test_missing_folders_split_files_and_root(pascal_root, tmp_path):
    shutil.rmtree(pascal_root / "sal_distill")
    (pascal_root / "ImageSets" / "Context" / "val.txt").unlink()
    problems = check_dataset("pascal", pascal_root)
    assert [str(p) for p in problems] == [
        f"{pascal_root / 'sal_distill'}: missing folder (expected a distilled saliency PNG per image)",
        f"{pascal_root / 'ImageSets' / 'Context' / 'val.txt'}: missing split file (expected one image id per line; "
        "splits found here: ['train'])",
    ]
    assert check_dataset("nyud", tmp_path / "absent") == [
        Problem(str(tmp_path / "absent"), "dataset root is not a folder (expected the nyud dataset root)")
    ]


def test_problems_found_by_check_are_those_the_loader_raises(pascal_root):
    write_png(pascal_root / "normals_distill" / "2008_000002.png", np.zeros((HEIGHT, WIDTH), np.uint8))
    (pascal_root / "pascal-context" / "trainval" / "2008_000003.mat").write_bytes(b"")
    problems = check_dataset("pascal", pascal_root)
    assert [problem.path for problem in problems] == [
        str(pascal_root / "normals_distill" / "2008_000002.png"),
        str(pascal_root / "pascal-context" / "trainval" / "2008_000003.mat"),
    ]
    dataset = PascalContext(pascal_root, "train")
    for index, problem in zip((1, 2), problems):
        try:
            dataset[index]
        except ValueError as err:
            assert str(err) == str(problem)
        else:
            raise AssertionError("the loader accepted a file the check rejects")
