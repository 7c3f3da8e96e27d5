"""Keep ultralytics and gradio off the network: `configure_offline()`, which `import realtime` runs.

Both libraries read their switches from the environment when they are imported, so this module
sets them with `os.environ.setdefault` (a value the user exported wins):

- `YOLO_OFFLINE=1`: ultralytics skips its connectivity probe and treats the machine as offline.
- `YOLO_AUTOINSTALL=False`: ultralytics never pip-installs a missing requirement.
- `GRADIO_ANALYTICS_ENABLED=False`: gradio sends no usage analytics and no version check
  (read when a Blocks app is built).
- `YOLO_CONFIG_DIR`: where ultralytics keeps `settings.json`; a per-user cache folder
  (`$XDG_CACHE_HOME/ccm-pose`, else `~/.cache/ccm-pose`) unless the user chose one.

It then turns the ultralytics setting `sync` (anonymous usage events) off, and copies a local
TrueType font to `$YOLO_CONFIG_DIR/Ultralytics/Arial.ttf`: ultralytics looks for that file
before drawing text and downloads it when it is missing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
from pathlib import Path

log = logging.getLogger(__name__)

OFFLINE_ENV: dict[str, str] = {
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
}
FONT_NAME = "Arial.ttf"
_SYSTEM_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
)


def default_config_dir() -> Path:
    """The per-user cache folder used as `YOLO_CONFIG_DIR` when the user set none."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "ccm-pose"


def configure_offline() -> Path:
    """Set the offline environment, disable ultralytics `sync`, and provide its font. Idempotent.

    Returns:
        The ultralytics config folder, `$YOLO_CONFIG_DIR/Ultralytics`.
    """
    for name, value in OFFLINE_ENV.items():
        os.environ.setdefault(name, value)
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(default_config_dir())))
    ultralytics_dir = config_dir.expanduser() / "Ultralytics"
    ultralytics_dir.mkdir(parents=True, exist_ok=True)
    _install_font(ultralytics_dir / FONT_NAME)
    _disable_ultralytics_sync(ultralytics_dir)
    return ultralytics_dir


def _font_candidates() -> list[Path]:
    """Local DejaVu Sans files: matplotlib's bundled copy first, then common system paths."""
    found = []
    spec = importlib.util.find_spec("matplotlib")  # located, not imported: importing it is slow
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            found.append(Path(root) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf")
    return found + list(_SYSTEM_FONTS)


def _install_font(target: Path) -> None:
    if target.is_file() and target.stat().st_size > 0:
        return
    for source in _font_candidates():
        if source.is_file():
            # Copy to a temporary name and rename, so a concurrent process never reads half a font.
            partial = target.with_name(f".{target.name}.{os.getpid()}.part")
            shutil.copyfile(source, partial)
            partial.replace(target)
            log.debug("copied %s to %s", source, target)
            return
    log.warning(
        "no local TrueType font found to install as %s; ultralytics may try to download one "
        "when it draws text (install matplotlib, or copy any .ttf file there)",
        target,
    )


def _disable_ultralytics_sync(ultralytics_dir: Path) -> None:
    if importlib.util.find_spec("ultralytics") is None:
        return
    already_imported = "ultralytics.utils" in sys.modules
    # ultralytics.utils sets OMP_NUM_THREADS=1 when imported; torch imported after that would run
    # every op (the pose network too) on one thread. Import torch first, and give the variable
    # back its own value afterwards.
    import torch  # noqa: F401

    omp_threads = os.environ.get("OMP_NUM_THREADS")
    import ultralytics.utils as ul  # the environment above is set, so this import stays offline

    if not already_imported:
        if omp_threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = omp_threads

    if already_imported and (ul.ONLINE or Path(ul.USER_CONFIG_DIR) != ultralytics_dir):
        log.warning(
            "ultralytics was imported before configure_offline() (online=%s, config dir %s); "
            "call configure_offline() first so its offline settings apply",
            ul.ONLINE,
            ul.USER_CONFIG_DIR,
        )
    if ul.SETTINGS.get("sync", True):
        ul.SETTINGS.update(sync=False)  # writes settings.json once; later calls find it off
