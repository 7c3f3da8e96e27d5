"""The browser demo (`app.py ui`): `build_ui` / `launch` in `page.py`, each visitor's session in
`sessions.py`, the settings panel in `settings.py`, uploads and downloads in `media.py`."""
