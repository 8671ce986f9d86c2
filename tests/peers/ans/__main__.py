"""``python -m tests.peers.ans [--dir DIR] [--port N] [--domains N]``: the test ANS for the demo.

Serves a list of N fictitious domains signed by the test signer until interrupted, and prints
the list URL and the anchor to configure (``[trust] whitelist_url``, ``whitelist_anchors``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

from appliance.trust.whitelist import Domain

from .server import AnsPeer


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m tests.peers.ans")
    p.add_argument("--dir", type=Path, default=None)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--domains", type=int, default=3)
    args = p.parse_args()
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="ans-peer-"))
    peer = AnsPeer.start(workdir, port=args.port)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    peer.publish([Domain(str(n), f"db{n}.test.example", f"vi{n}.test.example", f"Site {n}",
                         f"CN=db{n}.test.example,OU=49970036790900{n % 10},O=SITE {n},C=FR",
                         "support@example.invalid", now) for n in range(1, args.domains + 1)])
    print(f"whitelist_url = {peer.url!r}\nwhitelist_anchors = [{str(peer.anchor)!r}]",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        peer.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
