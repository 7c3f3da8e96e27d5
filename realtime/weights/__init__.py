"""Known checkpoints: the manifest (`manifest.py`), checking files against it and picking the
best present (`verify.py`), downloading on request (`fetch.py`), what to fetch for real people
on this machine (`recommended.py`), and `app.py weights` (`cli.py`)."""
