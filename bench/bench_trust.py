"""Benchmark: what the trust checks cost a peer read, beside Orthanc's DICOMweb, same run.

    .venv/bin/python bench/bench_trust.py [--slices 300] [--runs 3]

One synthetic CT series goes into a box store and into a private Orthanc. The box's DICOMweb app
(in its own process, behind its access guard) is read two ways: as a **site tool** on
``dicomweb.open_to`` (no check beyond the address) and as a **peer box** (client certificate as
the TLS gateway passes it, checked against the anchors and the verified whitelist; a Pro Santé
Connect token introspected at the PSC simulator over mTLS, then cached; the KOS looked up and
its series/instance scope applied). Cases: every instance at concurrency 4, and the whole
series in one multipart answer; Orthanc's plugin serves the same. Also the first peer request
(token not cached yet) against the next ones. TLS itself is not in this figure (the gateway's
cost is measured by bench_dmp.py --gateway). Not run in CI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def serve(spec_file: str) -> None:
    """Child process: the box's root app + DICOMweb behind the guard; prints its port."""
    import ssl

    from aiohttp import web

    from appliance import config
    from appliance.dicomweb import make_app as dicomweb_app
    from appliance.keys.certs import load_pem_certificates
    from appliance.psc.client import PscClient
    from appliance.store import Store
    from appliance.trust import verify
    from appliance.trust.guard import Guard
    from appliance.trust.published import PublishedKos
    from appliance.web.server import make_app

    spec = json.loads(Path(spec_file).read_text())
    store = Store(config.parse(config.example(spec["data_dir"])))
    store.open()
    whitelist = verify(Path(spec["whitelist"]).read_bytes(),
                       load_pem_certificates([Path(spec["ans_anchor"])]), revocation="off")
    anchors = load_pem_certificates([Path(spec["bundle"])])

    async def main() -> None:
        ctx = ssl.create_default_context(cafile=spec["bundle"])
        ctx.load_cert_chain(spec["client_cert"], spec["client_key"])
        psc = PscClient(config.PscConfig(enabled=True, discovery_url=spec["discovery_url"],
                                         client_id=spec["client_id"],
                                         ca_file=Path(spec["bundle"])),
                        aiohttp.TCPConnector(ssl=ctx), lambda url: url)
        guard = Guard(published=PublishedKos(store.db), anchors=lambda: anchors,
                      whitelist=lambda: whitelist, tokens=lambda: psc,
                      audience=spec["client_id"], open_to=["127.0.0.2"], max_per_peer=16)
        app = make_app(lambda: (True, {}), {"/dicom-web": dicomweb_app(store, guard=guard)},
                       behind_gateway=True)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


async def timed(fn: Any) -> tuple[float, int]:
    t = time.perf_counter()
    n = await fn()
    return time.perf_counter() - t, n


async def bench(box: str, orthanc: str, study: str, series: str, sops: list[str],
                peer: dict[str, str], runs: int) -> dict[str, list[tuple[float, int]]]:
    # The site tool: the gateway passes the client's address; 127.0.0.2 is on open_to.
    site = {"X-Forwarded-For": "127.0.0.2"}
    contenders = {"box site": (box, site), "box peer": (box, peer), "orthanc": (orthanc, {})}
    out: dict[str, list[tuple[float, int]]] = {}
    async with aiohttp.ClientSession(auto_decompress=False) as s:
        async def get(url: str, headers: dict[str, str]) -> int:
            async with s.get(url, headers={"Accept": ACCEPT, "Accept-Encoding": "identity",
                                           **headers}) as r:
                assert r.status == 200, (url, r.status, await r.text())
                return len(await r.read())

        def every_instance(base: str, headers: dict[str, str]) -> Any:
            async def run() -> int:
                sem = asyncio.Semaphore(4)

                async def one(sop: str) -> int:
                    async with sem:
                        return await get(f"{base}/studies/{study}/series/{series}/instances/"
                                         f"{sop}", headers)
                return sum(await asyncio.gather(*map(one, sops)))
            return run

        def whole_series(base: str, headers: dict[str, str]) -> Any:
            async def run() -> int:
                return await get(f"{base}/studies/{study}/series/{series}", headers)
            return run

        first, _ = await timed(lambda: get(f"{box}/studies/{study}/series/{series}/instances/"
                                           f"{sops[0]}", peer))
        again = [(await timed(lambda: get(f"{box}/studies/{study}/series/{series}/instances/"
                                          f"{sops[0]}", peer)))[0] for _ in range(20)]
        out["first peer request (introspection)"] = [(first, 1)]
        out["next peer requests (cached)"] = [(statistics.median(again), 1)]
        for case, make in (("every instance, c=4", every_instance),
                           ("whole series", whole_series)):
            for name, (base, headers) in contenders.items():
                await make(base, headers)()            # warm, untimed
            for _ in range(runs):                      # alternate the contenders
                for name, (base, headers) in contenders.items():
                    out.setdefault(f"{case}: {name}", []).append(
                        await timed(make(base, headers)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--serve", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return

    import pydicom

    from appliance import config
    from appliance.dicom import kos as kosmod
    from appliance.generate import synthetic_study
    from appliance.keys.testpki import make_test_pki
    from appliance.store import Store
    from tests.peers import trustkit
    from tests.peers.ans.server import AnsPeer
    from tests.peers.ans.signer import domain_for_certificate
    from tests.peers.orthanc import Orthanc, available

    if reason := available():
        sys.exit(f"cannot run: {reason}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-trust-"))
    box = parts = None
    try:
        pki = make_test_pki(tmp / "pki")
        parts = trustkit.start(pki, tmp)
        with AnsPeer.start(tmp / "ans2") as ans:   # the list the box verifies at its start
            (tmp / "whitelist.xml").write_bytes(ans.signed([domain_for_certificate(
                pki.structures[1].auth_cert, trustkit.PEER_DOMAIN, "db2.test")]))
            shutil.copy(ans.anchor, tmp / "ans-root.pem")
        files = synthetic_study("CT", args.slices, out_dir=tmp / "ct")
        total_mb = sum(f.stat().st_size for f in files) / 1e6
        heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        study, series = heads[0].StudyInstanceUID, heads[0].SeriesInstanceUID
        store = Store(config.parse(config.example(str(tmp / "box"))))
        store.open()
        for f in files:
            store.ingest_bytes(f.read_bytes())
        built = kosmod.build_kos(kosmod.KosRequest(
            patient=kosmod.Patient(ins="248098765432112", ins_oid="1.2.250.1.213.1.4.10",
                                   family_name="BENCH"),
            study=kosmod.Study(study_uid=study),
            instances=[kosmod.Instance(h.SeriesInstanceUID, h.Modality, 1, "",
                                       h.SOPClassUID, h.SOPInstanceUID, i + 1)
                       for i, h in enumerate(heads)],
            public_url="https://db1.test"))
        trustkit.store_publication(store.db, study, built.data, built.sop_instance_uid)
        store.close()
        spec = {"data_dir": str(tmp / "box"), "whitelist": str(tmp / "whitelist.xml"),
                "ans_anchor": str(tmp / "ans-root.pem"), "bundle": str(pki.bundle),
                "client_cert": str(tmp / "client.pem"), "client_key": str(tmp / "client.key"),
                "discovery_url": parts.psc.discovery_url, "client_id": trustkit.BOX_CLIENT}
        (tmp / "spec.json").write_text(json.dumps(spec))
        box = subprocess.Popen([sys.executable, __file__, "--serve", str(tmp / "spec.json")],
                               stdout=subprocess.PIPE, text=True)
        assert box.stdout is not None
        box_base = f"http://127.0.0.1:{box.stdout.readline().strip()}/dicom-web"
        peer = {"X-Drimbox-Client-Cert": parts.peer_cert_header,
                "Authorization": f"Bearer {parts.token(lifetime=3600)}",
                "KOS-SOPInstanceUID": built.sop_instance_uid}
        with Orthanc(workdir=tmp / "orthanc") as orthanc:
            orthanc.upload(files)
            results = asyncio.run(bench(box_base, orthanc.url + "/dicom-web", study, series,
                                        [h.SOPInstanceUID for h in heads], peer, args.runs))
        report(results, total_mb)
    finally:
        if box is not None:
            box.terminate()
            box.wait(10)
        if parts is not None:
            parts.psc.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def report(results: dict[str, list[tuple[float, int]]], total_mb: float) -> None:
    print(f"\n{len(results)} figures, {total_mb:.0f} MB series, medians of the runs:")
    med: dict[str, float] = {}
    for name, xs in results.items():
        med[name] = statistics.median(t for t, _ in xs)
        if name.startswith(("first", "next")):
            print(f"  {name:40s} {med[name] * 1e3:8.1f} ms")
        else:
            print(f"  {name:40s} {med[name]:8.3f} s  {total_mb / med[name]:7.1f} MB/s")
    for case in ("every instance, c=4", "whole series"):
        site, peer, orth = (med[f"{case}: {n}"] for n in ("box site", "box peer", "orthanc"))
        print(f"  {case}: peer / site time {peer / site:.2f}x; "
              f"box peer MB/s / Orthanc MB/s {orth / peer:.2f}x")


if __name__ == "__main__":
    main()
