"""End-to-end tuning of group scales and norm weights (--tune-steps): the grid it rounds back onto, the loss it
lowers, and the package it writes against the PyTorch model holding the same weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from edgekit.exporters.quantize import GridFormat, QuantConfig
from edgekit.exporters.quantize.rtn import quantize_rtn, rescale_groups
from edgekit.exporters.quantize.sequential import torch_module, write_fake_quantized
from edgekit.exporters.quantize.tune import float_teacher, norm_names, tune_scales
from edgekit.exporters.reference import TorchReference
from test_quantize import FAST_CALIBRATION, _cli, _export_and_compare

from edgekit.errors import EdgekitError

RNG = np.random.default_rng(1)


@pytest.mark.parametrize("fmt", [GridFormat(4, 32), GridFormat(3, 64, True), GridFormat(2, 32),
                                 GridFormat(8, 32)], ids=lambda f: f.name)
def test_rescaled_groups_stay_on_the_stored_grid(fmt: GridFormat) -> None:
    q = quantize_rtn(RNG.standard_normal((8, 128)).astype(np.float32), fmt)
    factors = 1 + 0.02 * RNG.standard_normal(q.scales.shape)
    r = rescale_groups(q, factors)
    assert np.array_equal(r.codes, q.codes)
    assert np.array_equal(r.scales, r.scales.astype(np.float16).astype(np.float32))
    assert np.array_equal(r.offsets, r.offsets.astype(np.float16).astype(np.float32))
    np.testing.assert_allclose(r.scales, q.scales * factors, rtol=2.0 ** -(11 - fmt.bits))
    if fmt.bits < 8 or fmt.symmetric:  # an integer zero point stays the same integer, z·s exact
        np.testing.assert_array_equal(-r.offsets / r.scales, -q.offsets / q.scales)


def _kl(teacher: object, student: object, ids: np.ndarray) -> float:
    with torch.no_grad():
        t = torch.log_softmax(teacher(torch.from_numpy(ids)).logits, -1)
        s = torch.log_softmax(student(torch.from_numpy(ids)).logits, -1)
        return float((t.exp() * (t - s)).sum(-1).mean())


def test_tuning_lowers_the_distillation_loss(tiny_hf: Path) -> None:
    student = TorchReference(str(tiny_hf), "cpu").model
    teacher = float_teacher(student)
    fmt = GridFormat(2, 32)
    names = [f"layers.{i}.{p}" for i in range(len(student.model.layers)) for p in ("q", "k", "v", "o", "gate", "up",
                                                                                    "down")]
    quantized = {n: quantize_rtn(torch_module(student, n).weight.detach().numpy(), fmt) for n in names}
    write_fake_quantized(student, quantized)
    windows = np.random.default_rng(0).integers(0, student.config.vocab_size, (4, 32))
    before = _kl(teacher, student, windows)
    tuned, norms = tune_scales(teacher, student, quantized, windows, steps=40)
    assert _kl(teacher, student, windows) < 0.8 * before
    assert set(norms) == set(norm_names(len(student.model.layers)))
    assert all(np.array_equal(tuned[n].codes, quantized[n].codes) for n in names)
    assert any(not np.array_equal(tuned[n].scales, quantized[n].scales) for n in names)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_tuned_package_matches_the_torch_model(tmp_path: Path, tiny_hf: Path, method: str) -> None:
    config = QuantConfig(GridFormat(4, 32), method, FAST_CALIBRATION, tune_steps=4)
    recipe = _export_and_compare(tmp_path, tiny_hf, config)
    assert recipe["method"] == method and recipe["tune_steps"] == 4
    assert recipe["calibration"].startswith("self-generated")


def test_bad_tune_steps(tmp_path: Path, tiny_hf: Path) -> None:
    with pytest.raises(EdgekitError, match="--tune-steps must be 0 or more"):
        QuantConfig(GridFormat(4), tune_steps=-1)
    code, err = _cli(["export", str(tiny_hf), "-o", str(tmp_path / "out"), "--tune-steps", "10"])
    assert code != 0 and "--tune-steps needs --weights" in err and not (tmp_path / "out").exists()
