"""No code runs from a weights file unless the user trusts it: `--detector evil.pt` and
`bench --reference-weights evil.pt` are refused before ultralytics unpickles them, unless the
file's full hash is in the manifest or `--trust` is given; model .yaml files stay allowed."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import torch

from realtime.batch.usage import UsageError, load_pipeline
from realtime.bench.reference import check_reference_weights
from realtime.detect.detector import DetectorConfig, PersonDetector
from realtime.stream.assemble import PipelineSpec
from realtime.weights.manifest import WEIGHTS_DIR, Manifest, ManifestEntry
from realtime.weights.verify import UntrustedWeightsError, check_weights_trusted


class _Payload:
    """Unpickling it creates the file `marker`: proof that code from the weights file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload-ran"
    weights = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, weights)
    return weights, marker


def test_an_unknown_detector_file_is_refused_before_it_is_unpickled(tmp_path):
    weights, marker = _evil(tmp_path)
    with pytest.raises(UntrustedWeightsError, match="evil.pt: loading it unpickles it.*--trust"):
        PersonDetector(DetectorConfig(weights=weights, device="cpu"))
    assert not marker.exists()
    spec = PipelineSpec(detector=weights, device="cpu")
    with pytest.raises(UsageError, match=f"^--detector {weights}: loading it unpickles it"):
        load_pipeline(spec)
    assert not marker.exists()
    # With --trust the user takes the risk: the file is unpickled (and its payload runs).
    trusted = dataclasses.replace(spec.detection, weights=str(weights), trust=True)
    with pytest.raises(ValueError, match="could not be loaded"):
        PersonDetector(dataclasses.replace(trusted, device="cpu"))
    assert marker.exists()


def test_bench_reference_weights_are_checked_the_same_way(tmp_path):
    weights, marker = _evil(tmp_path)
    with pytest.raises(UntrustedWeightsError, match="^--reference-weights .*evil.pt: loading"):
        check_reference_weights(weights)
    assert not marker.exists()
    assert check_reference_weights(weights, trust=True) == str(weights)
    assert check_reference_weights("yolo11n-pose.yaml") == "yolo11n-pose.yaml"  # parsed, no pickle


def test_known_full_hashes_pass_and_hash_prefixes_do_not(tmp_path):
    demo = WEIGHTS_DIR / "demo-yolo11n-person.pt"
    assert "demo-yolo11n-person" in check_weights_trusted(demo, trust=False)
    data = tmp_path / "det.pt"
    data.write_bytes(b"weights")
    full = hashlib.sha256(b"weights").hexdigest()
    entry = ManifestEntry("det", "detector", "yolo11n", "ultralytics", "det.pt", "", "x", full)
    assert "det's" in check_weights_trusted(data, False, Manifest(tmp_path, (entry,)))
    prefix = dataclasses.replace(entry, sha256=full[:8])  # stops corruption, not a crafted file
    with pytest.raises(UntrustedWeightsError):
        check_weights_trusted(data, False, Manifest(tmp_path, (prefix,)))
    (tmp_path / "model.yaml").write_text("nc: 1\n")
    assert ".yaml" in check_weights_trusted(tmp_path / "model.yaml", trust=False)
