"""The README's examples run as written."""

import re
from pathlib import Path

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
