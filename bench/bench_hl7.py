"""HL7 intake benchmark: parse + CDA extraction, ACK building, and MLLP round trips on loopback.

    /work/venv/bin/python bench/bench_hl7.py [--seconds 4]

Messages: the ANS derived ORU (CR_C-ORU, ~29 kB) and a full-size variant whose CDA body holds a
175 kB PDF, as the original ANS messages do (~325 kB). The handler does nothing, so the round
trip measures the intake itself (framing, parsing, CDA, ACK), not the store. Takes < 1 minute.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.hl7.ack import build_ack  # noqa: E402
from appliance.hl7.messages import Report, read_report  # noqa: E402
from appliance.hl7.mllp import MllpClient, MllpServer  # noqa: E402
from tests.conftest import conformance_path  # noqa: E402
from tests.hl7.helpers import DERIVED, fill, full_size  # noqa: E402


def percentiles(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:7.2f} ms  p95 {q[94] * 1000:7.2f} ms  (n={len(samples)})"


def timed(fn: Callable[[], object], seconds: float) -> list[float]:
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < 20:
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


async def roundtrips(message: str, seconds: float, connections: int) -> tuple[list[float], float]:
    async def nothing(report: Report) -> None:
        return None

    server = MllpServer("127.0.0.1", 0, nothing)
    await server.start()
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    async def sender(k: int) -> None:
        async with await MllpClient.connect("127.0.0.1", server.port) as client:
            i = 0
            while time.perf_counter() < end or i < 5:
                text = message.replace("|BENCH-0|", f"|B{k}-{i}|", 1)
                t = time.perf_counter()
                ack = await client.send(text)
                latencies.append(time.perf_counter() - t)
                assert "MSA|AA|" in ack, ack[:200]
                i += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(sender(k) for k in range(connections)))
    elapsed = time.perf_counter() - t0
    await server.stop()
    return latencies, len(latencies) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=4.0, help="per measurement")
    args = ap.parse_args()
    root = conformance_path()
    if root is None:
        sys.exit("ANS conformance data not found (set DRIMBOX_CONFORMANCE)")
    small = fill((root / DERIVED / "examen-c" / "CR_C-ORU.hl7").read_bytes().decode(), "BENCH-0")
    big = full_size(small)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; "
          f"{args.seconds:.0f} s per measurement")
    for label, msg in ((f"ANS derived ({len(small) // 1000} kB)", small),
                       (f"full size   ({len(big) // 1000} kB)", big)):
        parse = timed(lambda m=msg: read_report(m), args.seconds)  # type: ignore[misc]
        ack = timed(lambda m=msg: build_ack(m), 1.0)  # type: ignore[misc]
        print(f"\n{label}")
        print(f"  parse HL7+CDA+checks : {percentiles(parse)}")
        print(f"  build ACK            : {percentiles(ack)}")
        for conns in (1, 4):
            lat, rate = asyncio.run(roundtrips(msg, args.seconds, conns))
            print(f"  MLLP round trip x{conns}   : {percentiles(lat)}  -> {rate:7.0f} msg/s "
                  f"({rate * 60:,.0f}/min)")


if __name__ == "__main__":
    main()
