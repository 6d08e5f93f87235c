"""``python -m pipeline.web``: the worker of ``get_app()`` with the web API registered.

Same as ``python pipeline.py worker`` once ``get_app()`` calls ``register_web`` itself
(``register_web`` is idempotent); settings come from the WO_* environment.
"""

from __future__ import annotations

import os

from pipeline.app import get_app, run_worker
from pipeline.web import register_web


def main() -> None:
    """Run the worker until SIGTERM/SIGINT."""
    app = get_app()
    register_web(app)
    run_worker(app, loglevel=os.environ.get("WO_LOGLEVEL", "info"))


if __name__ == "__main__":
    main()
