"""The browser demo (`app.py ui`): `build_ui` / `launch` in `page.py`; the live webcam view in
`live.py` (a WebSocket beside the page: JPEG frames up, JSON poses down, drawn in the browser
by `static/live.js`); each visitor's session in `sessions.py`, the settings panel in
`settings.py`, uploads and downloads in `media.py`, the demo-weights notice in
`weights_notice.py`."""
