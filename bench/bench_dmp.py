"""ITI-41 throughput and latency against the DMP simulator on loopback, with a 300-instance KOS,
signatures on SoftHSM2; and the share of time spent signing on the token.

    /work/venv/bin/python bench/bench_dmp.py [--n 40] [--instances 300] [--concurrency 1]
                                             [--gateway]

The simulator runs in its own process (``python -m tests.peers.dmp``), as in the demo, so its
xmlsec verification does not share the client's event loop. Without ``--gateway`` the client
does mTLS itself (pkcs11-provider in this process); with it, the client sends plain HTTP to a TLS
gateway process (``python -m appliance.tlsgateway``) that does the mTLS, as the daemon does.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from appliance import config as config_mod
from appliance.config import DmpConfig
from appliance.dmp import (
    DmpClient,
    KosSubmission,
    PatientId,
    TokenSigner,
)
from appliance.keys.testpki import make_test_pki
from tests.dmp.conftest import client_context
from tests.dmp.kos import sample_submission
from appliance.tlsgateway import contract
from tests.dmp.pki import simulator_certs
from tests.peers.network import with_test_keys

REPO = Path(__file__).resolve().parent.parent

PATIENT = PatientId("248098765432112", "1.2.250.1.213.1.4.10")


class TimedSigner:
    def __init__(self, inner: TokenSigner) -> None:
        self.inner, self.seconds, self.count = inner, 0.0, 0
        self.algorithm, self.certificate = inner.algorithm, inner.certificate

    def sign(self, data: bytes) -> bytes:
        t = time.perf_counter()
        try:
            return self.inner.sign(data)
        finally:
            self.seconds += time.perf_counter() - t
            self.count += 1


def submission(instances: int) -> KosSubmission:
    return sample_submission(instances, patient=PATIENT)


def start_gateway(pki, url: str, d: Path) -> tuple[subprocess.Popen, contract.Plan]:
    """A TLS gateway on a box configuration whose DMP is the simulator at ``url``."""
    text = with_test_keys(config_mod.example(str(d / "data")), pki, url, dmp_timeout=30.0)  # the default
    d.mkdir(parents=True, exist_ok=True)
    (d / "box.toml").write_text(text)
    plan = contract.plan(config_mod.load(d / "box.toml"))
    proc = subprocess.Popen([sys.executable, "-m", "appliance.tlsgateway", "-c",
                             str(d / "box.toml")], cwd=REPO)
    for _ in range(600):
        if plan.egress_socket.exists():
            return proc, plan
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the TLS gateway did not start")


async def run(args: argparse.Namespace) -> dict:
    d = Path(tempfile.mkdtemp(prefix="bench-dmp-"))
    pki = make_test_pki(d / "pki")
    sc = simulator_certs(pki, d / "sim")
    token = pki.token(0)
    gateway: subprocess.Popen | None = None
    sim = subprocess.Popen(  # noqa: ASYNC220 (once, before the measured part)
        [sys.executable, "-m", "tests.peers.dmp", "--cert", str(sc.cert), "--key", str(sc.key),
         "--client-ca", str(sc.client_ca), "--patient", PATIENT.xds],
        stdout=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent, text=True)
    try:
        assert sim.stdout is not None
        url = json.loads(sim.stdout.readline())["url"]
        signer = TimedSigner(TokenSigner(token, "sign", "rsa-sha256"))
        subs = [submission(args.instances) for _ in range(args.n + 2)]
        dmp = DmpConfig(url=url, ca_file=pki.bundle)
        if args.gateway:
            gateway, plan = start_gateway(pki, url, d / "gateway")
            client = DmpClient(dmp, signer, connector=aiohttp.UnixConnector(
                path=str(plan.egress_socket), force_close=True),
                endpoint=contract.egress_url("dmp", url))
        else:
            client = DmpClient(dmp, signer, client_context(pki))
        async with client:
            for s in subs[:2]:                              # warm-up: TLS, imports
                await client.publish(s)
            signer.seconds, signer.count, client.signing_seconds = 0.0, 0, 0.0
            latencies: list[float] = []
            queue = list(subs[2:])

            async def worker() -> None:
                while queue:
                    s = queue.pop()
                    t = time.perf_counter()
                    await client.publish(s)
                    latencies.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            wall = time.perf_counter() - t0
        q = statistics.quantiles(latencies, n=20)
        return {
            "benchmark": "dmp_iti41", "via": "tls-gateway" if args.gateway else "direct mTLS",
            "n": args.n, "kos_instances": args.instances,
            "kos_bytes": len(subs[0].kos), "concurrency": args.concurrency,
            "submissions_per_second": round(args.n / wall, 2),
            "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "latency_p95_ms": round(q[18] * 1000, 1),
            "token_signatures_per_submission": signer.count / args.n,
            "token_signing_share_of_wall": round(signer.seconds / wall, 3),
            "build_and_sign_share_of_wall": round(client.signing_seconds / wall, 3),
            "token_ms_per_signature": round(signer.seconds / signer.count * 1000, 2),
        }
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(10)
        sim.terminate()
        sim.wait(5)
    

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--instances", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--gateway", action="store_true",
                   help="go through a TLS gateway process, as the daemon does")
    print(json.dumps(asyncio.run(run(p.parse_args()))))


if __name__ == "__main__":
    main()
