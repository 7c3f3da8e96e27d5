"""The page's notice when the demo weights are in use, and its button that fetches real ones.

The notice (`realtime.weights.recommended.DEMO_NOTICE`) sits at the top of the page, above the
webcam. Its button downloads the recommended COCO-trained pose network and person detector for
this machine into the weights folder, with a progress bar, resumable and hash-checked like
`python app.py weights fetch --recommended`. The button shows, and works, only for a browser
on the server's own computer (a request addressed to 127.0.0.1 or localhost from a loopback
client), never through a share link; nothing is fetched until it is clicked.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gradio as gr

from realtime.weights.fetch import Progress
from realtime.weights.manifest import Manifest, ManifestEntry, load_manifest, manifest_path
from realtime.weights.recommended import demo_notice, fetch_recommended, recommendation

logger = logging.getLogger(__name__)

BUTTON_LABEL = "Fetch real-person weights"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def is_loopback(request: gr.Request | None) -> bool:
    """Whether `request` came from this computer to its loopback address (not a share link)."""
    if request is None:
        return False
    headers = {k.lower(): v for k, v in dict(request.headers).items()}
    host = urlsplit("//" + headers.get("host", "")).hostname or ""
    client = getattr(getattr(request, "client", None), "host", "") or ""
    try:
        return host in _LOCAL_HOSTS and ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


class WeightsFetcher:
    """The button's handlers: show it to loopback visitors, fetch on a click, one at a time."""

    def __init__(self, manifest: Manifest, weights_dir: Path, device: str | None) -> None:
        self.manifest = manifest
        self.weights_dir = weights_dir
        self.device = device
        self._lock = threading.Lock()

    def offer(self, request: gr.Request) -> dict[str, Any]:
        """On page load: the button is visible to a visitor on this computer only."""
        return gr.update(visible=is_loopback(request))

    def fetch(
        self,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's way)
    ) -> str:
        """On a click: fetch the recommended pair; returns what happened, in words."""
        if not is_loopback(request):
            raise gr.Error("Weights can be fetched only from a browser on the server's computer.")
        if not self._lock.acquire(blocking=False):
            raise gr.Error("A download is already running; wait for it to finish.")
        try:
            paths = fetch_recommended(
                self.manifest, self.weights_dir, self.device, lambda e: _bar(e, progress)
            )
        except (ValueError, OSError) as err:
            logger.warning("fetching the recommended weights failed: %s", err)
            raise gr.Error(f"Fetching failed: {err}. Click again to resume.") from err
        finally:
            self._lock.release()
        names = ", ".join(f"`{p.name}`" for p in paths)
        return (
            f"Fetched and verified: {names}. Restart `python app.py ui` to use them "
            "(the best verified weights are picked by themselves)."
        )


def _bar(entry: ManifestEntry, progress: gr.Progress) -> Progress:
    """A `fetch` progress callback driving Gradio's progress bar, at most once per percent."""
    shown = [-1]

    def update(done: int, total: int | None) -> None:
        if total:
            percent = 100 * done // total
            if percent != shown[0]:
                shown[0] = percent
                progress(done / total, desc=f"{entry.file}: {done / 2**20:.1f} MiB")
        else:
            progress(None, desc=f"{entry.file}: {done / 2**20:.1f} MiB")

    return update


def add_weights_notice(
    demo: gr.Blocks,
    pose: Path | str,
    detector: Path | str,
    weights_dir: Path,
    device: str | None = None,
) -> WeightsFetcher | None:
    """Inside `demo`'s context: the notice and fetch button when `pose` or `detector` are demo
    weights (by the manifest of `weights_dir`); nothing, and None, otherwise."""
    manifest = load_manifest(manifest_path(weights_dir))
    notice = demo_notice((pose, detector), manifest)
    if notice is None:
        return None
    chosen = recommendation(device)
    fetcher = WeightsFetcher(manifest, weights_dir, device)
    with gr.Group(elem_id="demo-weights"):
        gr.Markdown(f"**{notice}**", elem_id="demo-notice")
        with gr.Row():
            button = gr.Button(
                f"{BUTTON_LABEL} ({chosen.pose} and {chosen.detector})",
                variant="primary",
                visible=False,
                elem_id="fetch-weights",
            )
        status = gr.Markdown(elem_id="fetch-status")
    demo.load(fetcher.offer, None, button, api_visibility="private")
    button.click(
        fetcher.fetch, None, status, api_visibility="private", concurrency_limit=1,
        concurrency_id="fetch-weights",
    )  # fmt: skip
    return fetcher
