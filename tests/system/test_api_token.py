"""Only the exact monitoring token opens monitoring: not a prefix, not an empty one."""

from __future__ import annotations

from api_support import api_server

TOKEN = "s3cret-t0ken"


def test_only_the_exact_token_opens_monitoring(database_url):
    wrong = [
        "Bearer",
        "Bearer ",
        "Bearer  ",
        "bearer s",
        "Bearer s3cret",
        TOKEN[:-1],
        f"Bearer {TOKEN[:-1]}",
        f"Bearer {TOKEN}x",
        f"Bearer x{TOKEN}",
        f"Bearer {TOKEN.upper()}",
        f"Token {TOKEN}",
        f"Bearer{TOKEN}",
    ]
    with api_server(database_url, TASK_PROCESSOR_MONITORING_TOKEN=TOKEN) as server:
        refused = {
            header: server.get("/processor/monitoring", {"Authorization": header})[0]
            for header in wrong
        }
        assert refused == dict.fromkeys(wrong, 401)
        for right in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"Bearer  {TOKEN} "):
            assert server.get("/processor/monitoring", {"Authorization": right})[0] == 200
