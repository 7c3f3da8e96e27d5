"""The streaming system, one package per stage of a frame's path:

    io (source) -> detect -> pose -> temporal -> render -> io (sinks)

`stream` runs that loop; `batch`, `ui` and `bench` are the three ways in (files, the browser,
the benchmark); `weights` knows the checkpoints; `offline` keeps ultralytics and gradio off the
network; `device` holds what every stage asks of the device.

Importing `realtime` runs `configure_offline()` once, before any of its modules can import
ultralytics or gradio, so every entry point (app.py, a script that builds a pipeline) is offline.
"""

from realtime.offline import configure_offline

configure_offline()
