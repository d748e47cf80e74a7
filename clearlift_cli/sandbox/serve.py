"""`clearlift sandbox serve`: the sandboxes in the foreground, with ready-to-use tokens."""

from __future__ import annotations

import signal
import threading

from clearlift_cli.sandbox import Sandbox


def serve(host: str, port: int, token_ttl: float | None) -> None:
    ports = {} if port == 0 else {p: port + i for i, p in enumerate(("google", "facebook", "tiktok", "stripe"))}
    sb = Sandbox(host=host, ports=ports).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        print("# sandbox platforms on loopback; export these to point clearlift at them:")
        for k, v in sb.env().items():
            print(f"export {k}={v}")
        print("# tokens valid on each sandbox (access, refresh):")
        for p in ("google", "facebook", "tiktok", "stripe"):
            access, refresh = sb.issue_token(p, ttl=token_ttl)
            print(f"# {p}: {access} {refresh}")
        print("# Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        sb.stop()
