"""Every row of the harness, in the order RESULTS.md shows them."""

from __future__ import annotations

from . import rows_http, rows_logs, rows_manager, rows_mesh, rows_servers

ROWS = [
    *rows_servers.ROWS,
    *rows_logs.ROWS,
    *rows_manager.ROWS,
    *rows_mesh.ROWS,
    *rows_http.ROWS,
]
