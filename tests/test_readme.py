"""The README's examples run as written."""

import itertools
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from landscape.data import load_dataset
from landscape.report.build import default_report_path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_resnet18_probe_example_runs(capsys):
    block = next(b for b in python_blocks() if "resnet18" in b)
    namespace = {}
    exec(compile(block, "README.md", "exec"), namespace)
    records = namespace["probe"].records
    assert [r.step for r in records] == [0, 5, 10]
    assert all(len(r.loss) == 4 and r.beta > 0 for r in records)
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_readme_quick_start_matches_ci():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q tests" in text and "python -m pytest -q tests" in ci


def test_readme_quick_start_plots_the_file_it_wrote(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    quick_start = text[text.index("## Install and quick start"):]
    commands = re.search(r"```bash\n(.*?)```", quick_start, flags=re.S).group(1).splitlines()
    written = re.search(r"--out (\S+)", next(c for c in commands if "landscape run" in c)).group(1)
    assert f"landscape plot {written}" in commands
    monkeypatch.chdir(tmp_path)
    Path(written).parent.mkdir(parents=True)  # as `landscape run` left it
    page = default_report_path(written)  # where `landscape plot` writes without -o
    assert page == Path(written).with_suffix(".html") and f"`{page}`" in quick_start


class Python2Pickler(pickle._Pickler):
    """Writes ``bytes`` as Python 2 ``str`` (BINSTRING), as the official CIFAR-10 pickles hold
    their keys and numpy's raw data: they load as bytes with ``encoding="bytes"``, as str with
    torchvision's ``encoding="latin1"``, and not at all with pickle's default ASCII."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_python2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


def write_fake_cifar10_batches(folder, images_per_batch=3):
    """A ``cifar-10-batches-py`` folder in the official layout (five training batches, the test
    batch, ``batches.meta``), random images and labels; returns each batch's dict by name."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    batches = {}
    for name in names:
        batches[name] = {b"batch_label": name.encode(),
                         b"labels": [int(v) for v in rng.integers(0, 10, images_per_batch)],
                         b"data": rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8),
                         b"filenames": [f"{k}.png".encode() for k in range(images_per_batch)]}
        with open(folder / name, "wb") as f:
            Python2Pickler(f, protocol=2).dump(batches[name])
    meta = {b"num_cases_per_batch": images_per_batch, b"num_vis": 3072,
            b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                             b"frog", b"horse", b"ship", b"truck"]}
    with open(folder / "batches.meta", "wb") as f:
        Python2Pickler(f, protocol=2).dump(meta)
    return batches


def test_readme_cifar10_pickles_to_npz_recipe(tmp_path, monkeypatch):
    batches = write_fake_cifar10_batches(tmp_path / "cifar-10-batches-py")
    with pytest.raises(UnicodeDecodeError):  # the fake is a Python 2 pickle, as the real files
        pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    block = next(b for b in python_blocks() if "cifar-10-batches-py" in b)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    data = load_dataset("cifar10.npz")  # what `--dataset cifar10.npz` loads
    assert data.name == "cifar10" and data.path == str(tmp_path / "cifar10.npz")
    # Direct: image i of the split is row i of the batches in file order; its pixel (c, h, w)
    # is that row's byte c*1024 + h*32 + w.
    splits = ((data.x_train, data.y_train, [f"data_batch_{i}" for i in range(1, 6)]),
              (data.x_test, data.y_test, ["test_batch"]))
    for images, labels, names in splits:
        rows = [row for n in names for row in batches[n][b"data"]]
        assert labels.tolist() == [label for n in names for label in batches[n][b"labels"]]
        assert images.shape == (len(rows), 3, 32, 32)
        images = images.numpy()
        for i, row in enumerate(rows):
            for c, h, w in itertools.product(range(3), range(32), range(32)):
                assert images[i, c, h, w] == row[c * 1024 + h * 32 + w]
    # The README's other route, torchvision reading the folder (its checksums aside: the fake's
    # differ), gives the same arrays.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda path, md5=None: Path(path).is_file())
    read = load_dataset("cifar10", root=tmp_path)
    for a in ("x_train", "y_train", "x_test", "y_test", "mean", "std"):
        assert torch.equal(getattr(read, a), getattr(data, a)), a
