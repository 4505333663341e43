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

from conftest import one_cpu_thread
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


def test_readme_recorder_loop_writes_the_file_info_and_plot_read(tmp_path, monkeypatch, capsys):
    """The Python API's first example (kuangliu/pytorch-cifar's loop with a Recorder), then
    the commands the README runs on the file it wrote."""
    from landscape.cli import main
    from landscape.read import read_sweep

    block = next(b for b in python_blocks() if "Recorder(" in b)
    text = README.read_text(encoding="utf-8")
    after = text[text.index(block) + len(block):]
    commands = re.search(r"```bash\n(.*?)```", after, flags=re.S).group(1).splitlines()
    monkeypatch.chdir(tmp_path)
    with one_cpu_thread():
        exec(compile(block, "README.md", "exec"), {})
    sweep = read_sweep("runs/mine.h5")
    assert [(r.lr, r.status, len(r.steps.step), len(r.probe.step)) for r in sweep.runs] == [
        (0.05, "completed", 40, 4), (0.1, "completed", 40, 4)]
    for command in commands:
        args = command.split("#")[0].split()
        assert args[0] == "landscape" and main(args[1:]) == 0, capsys.readouterr().err
    assert Path("runs/mine.html").stat().st_size > 100_000


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


RECORDS_SECTION = "### Records and data classes"


def documented_fields() -> dict[str, list[tuple[str, str]]]:
    """{class or pop() named in the README's records list: [(field, type column), ...]}."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(RECORDS_SECTION):]
    section = section[:section.index("\n## ")]
    tables, current, previous = {}, None, ""
    for line in section.splitlines():
        if line.startswith("`") and not previous:  # a paragraph naming the class
            current = line[1:line.index("`", 1)]
            tables[current] = []
        elif line.startswith("| `") and current is not None:
            name, kind = (cell.strip() for cell in line.strip("|").split("|")[:2])
            tables[current].append((name.strip("`"), kind))
        previous = line.strip()
    return tables


def documented_instances() -> dict:
    """One real instance of each documented class (or what pop() returns, by field)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from landscape import data, probes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(12, 6), torch.randint(0, 3, (12,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    weights, grads = probes.WeightStats(model).attach(opt), probes.GradientStats().attach(opt)
    for _ in range(2):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        ics = probes.internal_covariate_shift(model, F.cross_entropy, x, y, opt, ["3"])
        opt.step()
    columns = grads.pop()
    return {
        "LandscapeRecord": probes.along_gradient(model, F.cross_entropy, x, y, [0.1, 0.2]),
        "ICSRecord": ics,
        "ActivationRecord": probes.activation_stats(model, x, ["0"]),
        "SharpnessRecord": probes.sharpness(model, F.cross_entropy, x, y, k=2,
                                            keep_vectors=True),
        "WeightStats.pop()": weights.pop(),
        "GradientStats.pop()": {f: columns[:, i] for i, f in
                                enumerate(probes.GRADIENT_STAT_FIELDS)},
        "landscape.data.ImageData": data.load_cifar10_mini(),
        "landscape.data.GaussianLinearData": data.load_gaussian_linear(),
    }


def field_names(instance) -> list[str]:
    import dataclasses

    from landscape import probes

    if isinstance(instance, dict):  # pop(): the code's own list of fields
        return list(probes.WEIGHT_STAT_FIELDS if "norm" in instance
                    else probes.GRADIENT_STAT_FIELDS)
    return [f.name for f in dataclasses.fields(instance)]


def test_readme_lists_every_field_of_the_records_and_data_classes():
    """Issue 23, point 3: each list names exactly the class's fields, in order, and each
    field's documented type (dtype and number of dimensions for arrays) is what an instance
    holds."""
    import numpy as np
    import torch

    tables, instances = documented_fields(), documented_instances()
    assert list(tables) == list(instances)
    for name, instance in instances.items():
        assert [f for f, _ in tables[name]] == field_names(instance), name
        for field, kind in tables[name]:
            value = instance[field] if isinstance(instance, dict) else getattr(instance, field)
            if value is None:
                assert "or None" in kind or "when known" in kind, (name, field)
                continue
            dtype = kind.split()[0]
            if dtype in ("float64", "float32", "uint8", "int64"):
                assert str(value.dtype).removeprefix("torch.") == dtype, (name, field)
                assert isinstance(value, torch.Tensor) == ("tensor" in kind), (name, field)
                shape = kind[kind.index("(") + 1:kind.index(")")]
                assert value.ndim == len([d for d in shape.split(",") if d.strip()]), (name, field)
            else:
                python_type = {"float": float, "int": int, "str": str, "list": list,
                               "tuple": tuple}[dtype]
                assert isinstance(value, python_type), (name, field)
                if python_type in (list, tuple):
                    assert all(isinstance(v, str) for v in value)
            assert isinstance(value, (np.ndarray, torch.Tensor, float, int, str, list, tuple))
