"""`clearlift sandbox serve`: the sandboxes in the foreground, with ready-to-use tokens."""

from __future__ import annotations

import signal
import threading

from clearlift_cli.platforms import registry
from clearlift_cli.sandbox import Sandbox
from clearlift_cli.sandbox.d1 import D1App
from clearlift_cli.sandbox.server import SandboxServer


def serve(host: str, port: int, token_ttl: float | None) -> None:
    platforms = registry.names()  # served on consecutive ports from ``port``, then D1
    ports = {} if port == 0 else {p: port + i for i, p in enumerate(platforms)}
    sb = Sandbox(host=host, ports=ports).start()
    d1 = D1App()  # a fresh database in a temporary file, removed on exit
    d1.create_clearlift_tables()
    d1_server = SandboxServer(d1, host=host, port=0 if port == 0 else port + len(platforms)).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print("# sandbox platforms on loopback; export these to point clearlift at them:")
        for k, v in sb.env().items():
            print(f"export {k}={v}")
        print(f"export CLEARLIFT_D1_URL={d1.env(d1_server)['CLEARLIFT_D1_URL']}")
        print("# tokens valid on each sandbox (access, refresh):")
        for p in platforms:
            access, refresh = sb.issue_token(p, ttl=token_ttl)
            print(f"# {p}: {access} {refresh}")
        print(
            f"# d1: {d1.store_url} CLOUDFLARE_API_TOKEN={d1.token} (SQLite file {d1.path};"
            " with ClearLift's tables, as the API worker's D1 has them)"
        )
        print("# Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sb.stop()
        d1_server.stop()
        d1.close()
