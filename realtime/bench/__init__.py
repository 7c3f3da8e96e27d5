"""The FPS benchmark (`app.py bench`): `run_benchmark` (`run.py`) times every stage and the whole
loop on a clip (`frames.py`), beside YOLO-pose peers (`reference.py`), counts host syncs
(`counters.py`), and writes a report and a chart (`report.py`; `summary.py` for the GPU check).
`browser.py` measures the webcam page in Chromium."""
