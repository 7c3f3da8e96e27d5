"""Flag values are range-checked at parse time: one line naming the flag, exit code 2, before
any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from app_module import load_app

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    return load_app()


BAD_FLAGS = [
    (["video", "--min-score", "2"], "argument --min-score: 2 is out of range: must be in [0, 1]"),
    (
        ["video", "--nms-threshold", "-1"],
        "argument --nms-threshold: -1 is out of range: must be in [0, 1]",
    ),
    (["video", "--blur", "4"], "argument --blur: 4 is even: must be odd (or 0 = off)"),
    (["video", "--blur", "-3"], "argument --blur: -3 is out of range: must be >= 0"),
    (["video", "--ssp-alpha", "nan"], "argument --ssp-alpha: nan is not a finite number"),
    (
        ["images", "x", "--det-conf", "1.5"],
        "argument --det-conf: 1.5 is out of range: must be in [0, 1]",
    ),
    (["video", "--det-iou", "inf"], "argument --det-iou: inf is not a finite number"),
    (["video", "--det-size", "300"], "argument --det-size: 300 is not a multiple of 32"),
    (["video", "--det-every", "0"], "argument --det-every: 0 is out of range: must be >= 1"),
    (["video", "--batch-size", "two"], "argument --batch-size: 'two' is not an integer"),
    (["ui", "--port", "70000"], "argument --port: 70000 is out of range: must be in [1, 65535]"),
    (["bench", "--frames", "0"], "argument --frames: 0 is out of range: must be >= 1"),
    (["bench", "--warmup", "-1"], "argument --warmup: -1 is out of range: must be >= 0"),
    (["bench", "--fixed-people", "0"], "argument --fixed-people: 0 is out of range: must be >= 1"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[a[-2] for a, _ in BAD_FLAGS])
def test_a_value_out_of_range_stops_at_parse_time_naming_the_flag(app, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        app.parser().parse_args(argv)
    assert stop.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(message), errors


def test_values_in_range_pass_with_their_types(app):
    args = app.parser().parse_args(
        ["video", "--min-score", "1", "--nms-threshold", "0", "--blur", "0", "--ssp-alpha",
         "-0.75", "--det-size", "320", "--det-every", "1", "--batch-size", "8"]
    )  # fmt: skip
    assert (args.min_score, args.nms_threshold, args.blur, args.ssp_alpha) == (1.0, 0.0, 0, -0.75)
    assert (args.det_size, args.det_every, args.batch_size) == (320, 1, 8)
    assert isinstance(args.blur, int) and isinstance(args.min_score, float)
    assert app.parser().parse_args(["video", "--blur", "7"]).blur == 7


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see torch load")
def test_ctrl_c_while_the_libraries_load_is_one_line(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "video", "--out", str(tmp_path / "out")],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    maps = Path(f"/proc/{process.pid}/maps")
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        if "libtorch" in maps.read_text(errors="replace"):  # torch is loading: imports go on
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err.strip().splitlines() == ["stopped by SIGINT while starting"], err
