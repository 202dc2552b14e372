"""What a connector process imports before it runs: the pieces only some environments use
(the ops HTTP server, the in-process simulator) are left out until they are configured."""

from __future__ import annotations

import subprocess
import sys

# Imported only when configured: ops.address (aiohttp.web, prometheus_client: ~3 MB of RSS)
# and exchange.simulator (the simulator's server side: ~1 MB).
ON_DEMAND = ("aiohttp.web", "prometheus_client", "ssmd.ops_http", "ssmd.exchange.server")


def test_the_connector_entry_point_leaves_on_demand_modules_out() -> None:
    code = (
        "import sys, ssmd.cli, ssmd.runner; "
        f"print(sorted(m for m in {ON_DEMAND!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
