"""Known checkpoints: the manifest (`manifest.py`), checking files against it and picking the
best present (`verify.py`), downloading on request (`fetch.py`), and `app.py weights` (`cli.py`)."""
