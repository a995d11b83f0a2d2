"""The report of quantised sweeps (issue 20, part 3): the format, the float and quantised
clean metrics, faults in codes vs scales, one figure of the metric against BER per format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import paramcorrupt as pc
from paramcorrupt.losses import accuracy
from paramcorrupt.probe.report.document import write_report
from paramcorrupt.probe.store import ResultsStore
from paramcorrupt.probe.sweep import SweepConfig, sweep


@pytest.mark.slow
def test_report_of_several_formats(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(128, 64)
    data = [(x[i : i + 64], x[i : i + 64, :4].argmax(1)) for i in range(0, 128, 64)]
    paths = []
    for fmt, options in [(None, None), ("int8", {}), ("int4", {"group_size": 16})]:
        config = SweepConfig(methods=["bitflip"], settings={"bitflip": {"ber": [1e-3, 1e-2]}}, trials=2,
                             quantize=fmt, quantize_options=options, task="toy", grouping="all")
        paths.append(tmp_path / f"{fmt}.jsonl")
        with ResultsStore(paths[-1]) as store:
            rows = sweep(model, config, data, data, pc.classification_loss, {"accuracy": accuracy},
                         groups={"all": pc.select(model)}, store=store, progress=False)
        if fmt is None:
            float_metric = rows[0]["metric_before"]
        else:
            assert all(r["metric_float"] == float_metric for r in rows)
    report = write_report(paths, tmp_path / "report")
    text = report.read_text()
    assert "quantized=int4" in text and "quantized=int8" in text
    assert "float accuracy | quantised accuracy | in codes / scales / zero points (mean)" in text
    assert "as a whole" in text
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").glob("*_formats.png"))
    assert len(figures) == 1 and "in each stored format" in text
