"""The read-only web dashboard of a store (``dacapo-store ui``): runs, one run, compare runs.

Needs the ``ui`` extra (``pip install 'dacapo-store[ui]'``): Starlette, uvicorn, Jinja2 and
Plotly (whose bundled ``plotly.min.js`` the pages load from the server: no CDN, no internet).
Modules: :mod:`.queries` (what each page shows, read from the stores), :mod:`.commands` (the
CLI lines shown for a run), :mod:`.formatting` (the templates' filters), :mod:`.app` (routes
and responses; ``templates/`` and ``static/`` beside it), :mod:`.serving` (uvicorn in a
thread, for the CLI, the screenshots and the browser tests), :mod:`.screenshots` (the docs'
pictures).
"""

from __future__ import annotations

UI_EXTRA_HINT = "the dashboard needs the ui extra: pip install 'dacapo-store[ui]'"
"""What to tell a user whose install lacks the ``ui`` extra."""
