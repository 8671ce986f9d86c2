"""Benchmark: the box's DICOMweb read side versus Orthanc's DICOMweb plugin, same run, same data.

    /work/venv/bin/python bench/bench_dicomweb.py [--slices 300] [--runs 5]

A 300-slice synthetic CT (about 158 MB) goes into a box store and, by storescu (TCP_NODELAY),
into a private Orthanc. Each server runs in its own process. Measured warm (after one untimed
pass): WADO-RS retrieve of every instance (concurrency 1 and 6), series /metadata with and without
gzip, and QIDO; the servers alternate within each case. Prints medians, spread and the box/Orthanc ratio against the targets
of IMAGING-AND-PERFORMANCE.md §3. Not run in CI; takes well under a minute.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
# Pixels are never gzip'd by the box; ask both servers for identity so bytes are comparable
# (aiohttp sends "gzip, deflate" by default and Orthanc would gzip each instance on the fly).
QIDO = {"Accept": "application/dicom+json", "Accept-Encoding": "identity"}


def serve(data_dir: str) -> None:
    """Child process: the box's DICOMweb app over an existing store; prints its port."""
    from aiohttp import web

    from appliance import config
    from appliance.dicomweb import AccessLogger, make_app
    from appliance.store import Store
    from appliance.trust.guard import Guard

    store = Store(config.parse(config.example(data_dir)))
    store.open()

    async def main() -> None:
        root = web.Application()
        # The benchmark client is a site tool on loopback (dicomweb.open_to).
        root.add_subapp("/dicom-web", make_app(store, guard=Guard(open_to=["127.0.0.1"])))
        runner = web.AppRunner(root, access_log=None, access_log_class=AccessLogger)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


Case = Callable[[], Awaitable[int]]


def cases(s: aiohttp.ClientSession, base: str, study: str, series: str,
          sops: list[str]) -> dict[str, Case]:
    """name -> a coroutine factory doing one timed unit of work, returning bytes received."""
    async def get(url: str, headers: dict[str, str]) -> int:
        async with s.get(url, headers=headers) as r:
            assert r.status == 200, (url, r.status, await r.text())
            return len(await r.read())

    inst = f"{base}/studies/{study}/series/{series}/instances"
    meta = f"{base}/studies/{study}/series/{series}/metadata"

    def every_instance(concurrency: int) -> Case:
        async def run() -> int:
            sem = asyncio.Semaphore(concurrency)

            async def one(sop: str) -> int:
                async with sem:
                    return await get(f"{inst}/{sop}", {"Accept": ACCEPT_DICOM,
                                                       "Accept-Encoding": "identity"})
            return sum(await asyncio.gather(*(one(x) for x in sops)))
        return run

    return {
        "WADO-RS every instance, 1 at a time": every_instance(1),
        "WADO-RS every instance, 6 at a time": every_instance(6),
        "series /metadata, gzip": lambda: get(meta, {"Accept": "application/dicom+json",
                                                     "Accept-Encoding": "gzip"}),
        "series /metadata, identity": lambda: get(meta, {"Accept": "application/dicom+json",
                                                         "Accept-Encoding": "identity"}),
        "QIDO /studies?StudyInstanceUID": lambda: get(
            f"{base}/studies?StudyInstanceUID={study}", QIDO),
        "QIDO series instances": lambda: get(inst, QIDO),
    }


async def bench(bases: dict[str, str], study: str, series: str, sops: list[str],
                runs: int) -> dict[str, dict[str, tuple[list[float], int]]]:
    """Each case: one warm-up per server, then ``runs`` rounds alternating the servers."""
    sessions = {n: aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=6),
                                         auto_decompress=False) for n in bases}
    try:
        table = {n: cases(sessions[n], b, study, series, sops) for n, b in bases.items()}
        out: dict[str, dict[str, tuple[list[float], int]]] = {n: {} for n in bases}
        for case in table[next(iter(bases))]:
            times: dict[str, list[float]] = {n: [] for n in bases}
            size: dict[str, int] = {}
            for n in bases:
                await table[n][case]()
            for _ in range(runs):
                for n in bases:
                    t = time.perf_counter()
                    size[n] = await table[n][case]()
                    times[n].append(time.perf_counter() - t)
            for n in bases:
                out[n][case] = (times[n], size[n])
        return out
    finally:
        for sess in sessions.values():
            await sess.close()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return

    import pydicom

    from appliance import config
    from appliance.generate import synthetic_study
    from appliance.store import Store
    from tests.peers.orthanc import DCMTK_ENV, Orthanc, available

    class TunedOrthanc(Orthanc):
        """Orthanc's own advice for speed (orthanc-book faq/scalability): index-only finds."""

        def _config(self) -> dict[str, Any]:
            return {**super()._config(), "StorageAccessOnFind": "Never"}

    if (reason := available()) or not shutil.which("storescu"):
        sys.exit(f"cannot run: {reason or 'storescu (dcmtk) not installed'}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    box = None
    try:
        t = time.perf_counter()
        files = synthetic_study("CT", args.slices, out_dir=tmp / "ct")
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"generated {len(files)} CT slices, {total_mb:.1f} MB in "
              f"{time.perf_counter() - t:.1f} s")
        first = pydicom.dcmread(files[0], stop_before_pixels=True)
        study, series = first.StudyInstanceUID, first.SeriesInstanceUID
        sops = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]

        store = Store(config.parse(config.example(str(tmp / "box"))))
        store.open()
        for f in files:
            store.ingest_bytes(f.read_bytes())
        store.close()
        box = subprocess.Popen([sys.executable, __file__, "--serve", str(tmp / "box")],
                               stdout=subprocess.PIPE, text=True)
        assert box.stdout is not None
        box_base = f"http://127.0.0.1:{box.stdout.readline().strip()}/dicom-web"

        rss_before = rss_kb(box.pid) / 1024
        with TunedOrthanc(workdir=tmp / "orthanc") as orthanc:
            subprocess.run(["storescu", "-aet", "BENCH", "-aec", orthanc.aet, "-xs",
                            "127.0.0.1", str(orthanc.dicom_port), *map(str, files)],
                           check=True, env=DCMTK_ENV)
            results = asyncio.run(bench({"box": box_base, "orthanc": orthanc.url + "/dicom-web"},
                                        study, series, sops, args.runs))
            box_rss = rss_kb(box.pid) / 1024
        report(results, args.runs, total_mb, rss_before, box_rss)
    finally:
        if box is not None:
            box.terminate()
            box.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict[str, dict[str, tuple[list[float], int]]], runs: int, total_mb: float,
           rss_before: float, box_rss: float) -> None:
    print(f"\nwarm, median of {runs} runs (min-max); MB/s on the bytes received\n")
    print(f"{'case':40} {'box':>22} {'orthanc':>22} {'orthanc/box time':>17}")
    ratios = {}
    for case in results["box"]:
        cells = []
        med = {}
        for name in ("box", "orthanc"):
            times, size = results[name][case]
            m = statistics.median(times)
            med[name] = m
            rate = f" {size / 1e6 / m:6.0f} MB/s" if size > 5e6 else f" {size / 1e3:7.0f} KB"
            cells.append(f"{m * 1e3:7.1f} ms{rate}")
            cells[-1] += f" [{min(times) * 1e3:.0f}-{max(times) * 1e3:.0f}]"
        ratios[case] = med["orthanc"] / med["box"]
        print(f"{case:40} {cells[0]:>22} {cells[1]:>22} {ratios[case]:16.2f}x")
    meta_ms = statistics.median(results["box"]["series /metadata, gzip"][0]) * 1e3
    print("\ntargets (IMAGING-AND-PERFORMANCE.md §3):")
    wado = ratios["WADO-RS every instance, 6 at a time"]
    print(f"  warm WADO-RS >= 100% of Orthanc MB/s: {wado * 100:.0f}% "
          f"{'PASS' if wado >= 1 else 'FAIL'}")
    meta = ratios["series /metadata, gzip"]
    print(f"  warm /metadata <= 50 ms and >= 5x Orthanc: {meta_ms:.1f} ms, {meta:.1f}x "
          f"{'PASS' if meta_ms <= 50 and meta >= 5 else 'FAIL'}")
    streamed = sum(size * (runs + 1) for case, (_, size) in results["box"].items()) / 1e9
    growth = box_rss - rss_before
    print(f"  box RSS growth <= 64 MB while streaming {streamed:.1f} GB: {rss_before:.0f} -> "
          f"{box_rss:.0f} MB (+{growth:.0f}) {'PASS' if growth <= 64 else 'FAIL'}")


if __name__ == "__main__":
    main()
