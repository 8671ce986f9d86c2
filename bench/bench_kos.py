"""KOS build (and parse) time for 300- and 1,300-instance studies. Not run in CI.

Run: /work/venv/bin/python bench/bench_kos.py [--repeat N]
Prints, per size, the median and slowest wall-clock time and the median CPU time of N runs
(milliseconds), and the KOS size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from datetime import time as dtime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from appliance.dicom.kos import Instance, KosRequest, Patient, Study, build_kos, parse_kos
from appliance.dicom.uids import new_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def request(instances: int, per_series: int = 100) -> KosRequest:
    rows = []
    for n in range(0, instances, per_series):
        series_uid = new_uid()
        for i in range(min(per_series, instances - n)):
            rows.append(Instance(series_uid, "CT", n // per_series + 1, "Thorax", CT_IMAGE,
                                 new_uid(), i + 1))
    return KosRequest(
        patient=Patient("2770763220829", "1.2.250.1.213.1.4.10", "DUPONT", "Hélène",
                        date(1977, 7, 6), "F"),
        study=Study(new_uid(), date(2024, 5, 2), dtime(9, 30), "ST42", "ACC2024001",
                    "1.2.250.1.999.1.2.3", "ORD-77", "1.2.250.1.999.1.2.4"),
        instances=rows,
        public_url="https://db1.example.org:8443",
    )


def timed(fn, repeat: int) -> tuple[list[float], list[float]]:  # type: ignore[no-untyped-def]
    """Wall-clock and CPU milliseconds per run (CPU time is steadier on a shared machine)."""
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append((time.perf_counter() - w0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def summary(name: str, runs: tuple[list[float], list[float]]) -> str:
    wall, cpu = runs
    return (f"{name} wall median {statistics.median(wall):.0f} ms (max {max(wall):.0f}), "
            f"CPU median {statistics.median(cpu):.0f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    for n in (300, 1300):
        req = request(n)
        built = build_kos(req)  # warm-up
        build = timed(lambda req=req: build_kos(req), args.repeat)
        parse = timed(lambda data=built.data: parse_kos(data), args.repeat)
        print(f"{n:5d} instances, {len(built.data) / 1024:.0f} KiB: "
              f"{summary('build', build)}; {summary('parse', parse)}")

if __name__ == "__main__":
    main()
