"""ACK semantics and MLLP connection outcomes, over real TCP connections to the server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable

import pytest

from appliance.hl7.ack import parse_ack
from appliance.hl7.errors import Hl7Error
from appliance.hl7.messages import Report, normalise
from appliance.hl7.mllp import END, START, MllpClient, frame
from tests.hl7.helpers import cda_of, fill, replace_cda

ORU = "CR_C-ORU.hl7"
MDM = "CR_C-MDM.hl7"


def msh_field(message: str, index: int, value: str) -> str:
    lines = message.split("\r")
    fields = lines[0].split("|")
    fields[index - 1] = value
    lines[0] = "|".join(fields)
    return "\r".join(lines)


def segment_replace(message: str, prefix: str, new: str) -> str:
    lines = message.split("\r")
    return "\r".join(new if line.startswith(prefix) else line for line in lines)


async def roundtrip(port: int, message: str | bytes) -> tuple[str, str, list[tuple[str, str]]]:
    async with await MllpClient.connect("127.0.0.1", port, timeout=10) as client:
        return parse_ack(await client.send(message))


async def read_until_closed(reader: asyncio.StreamReader, timeout: float = 5) -> bytes:
    async with asyncio.timeout(timeout):
        return await reader.read()  # b"" or the remaining bytes up to EOF


@pytest.fixture
def oru(ans_messages) -> str:
    return fill(ans_messages[ORU], "C-1")


# --- refusals before the handler -----------------------------------------------------------


def _cases(oru_text: str, cda: bytes) -> dict[str, tuple[Callable[[], str], str, str, str]]:
    """name -> (message builder, ack code, ERR-3 code, a word the reason must contain)."""
    other_patient = cda.replace(b'extension="279035121518989"', b'extension="185057800608436"')
    other_ipp = cda.replace(b'extension="IPP101"', b'extension="IPP999"')
    o = oru_text
    ins_rep = "279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS^^~"
    ipp_rep = "~IPP101^^^AUT-AFFECTATION&1.2.250.1.213.4.5.2.4&ISO^PI"
    xxe = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
           b'<ClinicalDocument xmlns="urn:hl7-org:v3">&e;</ClinicalDocument>')
    yes = "Y^^expandedYes-NoIndicator"
    return {
        "unsupported type": (lambda: msh_field(o, 9, "ADT^A01^ADT_A01"), "AR", "200", "ADT"),
        "unsupported event": (lambda: msh_field(o, 9, "ORU^R30^ORU_R30"), "AR", "201", "R30"),
        "unsupported version": (lambda: msh_field(o, 12, "2.3"), "AR", "203", "2.3"),
        "MDM version on ORU": (lambda: msh_field(o, 12, "2.6"), "AR", "203", "2.5"),
        "unsupported processing id": (lambda: msh_field(o, 11, "X"), "AR", "202", "processing"),
        "unsupported charset": (lambda: msh_field(o, 18, "8859/1"), "AR", "103", "character"),
        "no control id": (lambda: msh_field(o, 10, ""), "AR", "101", "MSH-10"),
        "not HL7": (lambda: "hello world", "AR", "100", "MSH"),
        "missing INS": (lambda: o.replace(ins_rep, ""), "AE", "101", "INS"),
        "INS with unknown OID": (lambda: o.replace("NIR&1.2.250.1.213.1.4.10", "NIR&1.2.3.4"),
                                 "AE", "103", "OID"),
        "INS with a wrong key": (lambda: o.replace("279035121518989^", "279035121518988^"),
                                 "AE", "102", "key"),
        "missing IPP": (lambda: o.replace(ipp_rep, ""), "AE", "101", "IPP"),
        "missing PID": (lambda: segment_replace(o, "PID|", "NTE|1"), "AE", "100", "PID"),
        "bad base64": (lambda: o.replace("^Base64^PD94", "^Base64^!!PD94"), "AE", "102",
                       "base64"),
        "not base64 encoded": (lambda: o.replace("^Base64^", "^A^"), "AE", "102", "Base64"),
        "no CDA": (lambda: segment_replace(o, "OBX|1|", "NTE|1"), "AE", "101", "CDA"),
        "unparseable CDA": (lambda: replace_cda(o, cda[: len(cda) // 2]), "AE", "102",
                            "well-formed"),
        "CDA not a ClinicalDocument": (lambda: replace_cda(o, b"<html/>"), "AE", "102",
                                       "ClinicalDocument"),
        "CDA with DOCTYPE": (lambda: replace_cda(o, xxe), "AE", "102", "DOCTYPE"),
        "CDA for another patient": (lambda: replace_cda(o, other_patient), "AE", "207", "INS"),
        "CDA with another IPP": (lambda: replace_cda(o, other_ipp), "AE", "207", "IPP"),
        "preliminary result": (lambda: o.replace("||||||F|\rPRT", "||||||P|\rPRT"), "AE", "103",
                               "OBX-11"),
        "bad MetaDMPMSS flag": (lambda: o.replace(yes, "maybe^^expandedYes-NoIndicator", 1),
                                "AE", "103", "MetaDMPMSS"),
    }


CASE_NAMES = list(_cases("MSH|", b"").keys())


@pytest.mark.parametrize("case", CASE_NAMES)
async def test_refused_before_the_handler(case, ans_messages, start_server, recorder, caplog):
    oru_text = fill(ans_messages[ORU], "C-1")
    build, code, err, word = _cases(oru_text, cda_of(oru_text))[case]
    message = build()
    server = await start_server(recorder)
    with caplog.at_level(logging.DEBUG):
        ack_code, control_id, errors = await roundtrip(server.port, message)
    assert ack_code == code
    assert len(errors) == 1
    assert errors[0][0] == err, errors
    assert word.lower() in errors[0][1].lower(), errors
    if case not in ("no control id", "not HL7"):
        assert control_id == "C-1"
    assert recorder.reports == [], "the handler must not see a refused message"
    # Reasons go back to the RIS and into logs: never the patient's identifiers.
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "refused" in logged
    for secret in ("279035121518989", "IPP101", "PAT-TROIS", "DOMINIQUE"):
        assert secret not in errors[0][1]
        assert secret not in logged


async def test_ack_echoes_the_header(ans_messages, start_server, recorder):
    server = await start_server(recorder)
    for name, trigger, version in ((ORU, "R01", "2.5"), (MDM, "T02", "2.6")):
        message = fill(ans_messages[name], f"E-{trigger}")
        async with await MllpClient.connect("127.0.0.1", server.port) as client:
            ack = await client.send(message)
        msh = normalise(ack).split("\r")[0].split("|")
        # sending/receiving swapped (MSH-3..6), type ACK^<trigger>^ACK, same version, charset
        assert msh[2:6] == ["DRIMBOX", "SITE_SOURCE", "RIS_TEST", "CLINIQUE_TEST"]
        assert msh[8] == f"ACK^{trigger}^ACK"
        assert msh[9] and msh[9] != f"E-{trigger}"  # our own control id
        assert (msh[10], msh[11]) == ("P", version)
        assert msh[17] == "UNICODE UTF-8"
        assert parse_ack(ack) == ("AA", f"E-{trigger}", [])


async def test_ack_application_can_be_configured(oru, start_server, recorder):
    server = await start_server(recorder, application="DRIMBOX_SRC", facility="CHU_X")
    async with await MllpClient.connect("127.0.0.1", server.port) as client:
        msh = (await client.send(oru)).split("\r")[0].split("|")
    assert msh[2:6] == ["DRIMBOX_SRC", "CHU_X", "RIS_TEST", "CLINIQUE_TEST"]


async def test_strict_accession_check_refuses_the_ans_samples(oru, start_server, recorder):
    server = await start_server(recorder, check_accession=True)
    code, _, errors = await roundtrip(server.port, oru)
    assert code == "AE" and errors[0][0] == "207" and "accession" in errors[0][1]
    assert recorder.reports == []


async def test_invalid_utf8_is_refused(oru, start_server, recorder):
    server = await start_server(recorder)
    raw = oru.encode("utf-8").replace(b"PAT-TROIS", b"PAT-\xff\xfeTROIS", 1)
    code, control_id, errors = await roundtrip(server.port, raw)
    assert (code, control_id) == ("AR", "C-1")
    assert errors[0][0] == "102" and "UTF-8" in errors[0][1]
    assert recorder.reports == []


# --- the handler ---------------------------------------------------------------------------


async def test_handler_refusal_is_sent_back(oru, start_server):
    async def refuse(report: Report) -> None:
        raise Hl7Error("AE", 204, "study unknown to this site", "OBR^1^3")

    server = await start_server(refuse)
    assert await roundtrip(server.port, oru) == ("AE", "C-1", [("204",
                                                                "study unknown to this site")])


async def test_unexpected_handler_error_gives_generic_ae_without_patient_data(
        oru, start_server, caplog):
    async def broken(report: Report) -> None:
        raise RuntimeError(f"database is locked while storing {report.ins} {report.birth_family}")

    server = await start_server(broken)
    with caplog.at_level(logging.DEBUG):
        code, control_id, errors = await roundtrip(server.port, oru)
    assert (code, control_id) == ("AE", "C-1")
    assert errors[0][0] == "207" and "again" in errors[0][1]
    assert "279035121518989" not in errors[0][1]
    logged = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "RuntimeError" in logged
    for secret in ("279035121518989", "PAT-TROIS", "IPP101"):
        assert secret not in logged


async def test_aa_only_after_the_handler_returns(oru, start_server, recorder):
    committed = asyncio.Event()

    async def slow_commit(report: Report) -> None:
        await committed.wait()

    recorder.before = slow_commit
    server = await start_server(recorder)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(frame(oru.encode()))
    await writer.drain()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await reader.read(1)  # nothing may arrive while the job is not committed
    committed.set()
    async with asyncio.timeout(5):
        data = await reader.readuntil(END)
    assert parse_ack(data[1:-2].decode())[0] == "AA"
    assert len(recorder.reports) == 1
    writer.close()


async def test_repeated_control_id_is_acked_and_processed_once(oru, start_server, tmp_path):
    """The documented contract: the handler dedupes on MSH-10 in its database and returns."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.execute("CREATE TABLE reports (control_id TEXT PRIMARY KEY, study TEXT)")

    async def store(report: Report) -> None:
        assert report.cda_report is not None
        with db:
            db.execute("INSERT OR IGNORE INTO reports VALUES (?, ?)",
                       (report.control_id, report.cda_report.study_uid))

    server = await start_server(store)
    async with await MllpClient.connect("127.0.0.1", server.port) as client:
        first = parse_ack(await client.send(oru))
        again = parse_ack(await client.send(oru))
    assert first == again == ("AA", "C-1", [])
    assert db.execute("SELECT count(*) FROM reports").fetchone() == (1,)


# --- framing and connection outcomes -------------------------------------------------------


async def test_several_messages_per_connection_and_split_frames(ans_messages, start_server,
                                                                recorder):
    server = await start_server(recorder)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    data = b"".join(frame(fill(ans_messages[n], f"S-{i}").encode())
                    for i, n in enumerate([ORU, MDM, ORU]))
    # Split across many TCP writes, one of them between 0x1C and 0x0D.
    cut = data.index(END) + 1
    for chunk in (data[:7], data[7:cut], data[cut:cut + 1], data[cut + 1:]):
        writer.write(chunk)
        await writer.drain()
        await asyncio.sleep(0.01)
    acks = []
    async with asyncio.timeout(10):
        for _ in range(3):
            acks.append(parse_ack((await reader.readuntil(END))[1:-2].decode()))
    assert acks == [("AA", f"S-{i}", []) for i in range(3)]
    assert [r.control_id for r in recorder.reports] == ["S-0", "S-1", "S-2"]
    writer.close()


async def test_byte_by_byte_delivery(oru, start_server, recorder):
    server = await start_server(recorder)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    data = frame(oru.encode())
    head, tail = data[:300], data[300:]
    for i in range(len(head)):
        writer.write(head[i:i + 1])
        await writer.drain()
    writer.write(tail)
    async with asyncio.timeout(10):
        ack = (await reader.readuntil(END))[1:-2].decode()
    assert parse_ack(ack)[0] == "AA"
    writer.close()


async def test_frame_cut_then_eof_delivers_nothing(oru, start_server, recorder):
    server = await start_server(recorder)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    data = frame(oru.encode())
    writer.write(data[: len(data) - 5])
    await writer.drain()
    writer.write_eof()
    assert await read_until_closed(reader) == b""  # no ACK: nothing was received
    assert recorder.reports == []
    await asyncio.sleep(0.05)
    assert server.health().details["dropped_partial"] == 1
    writer.close()


@pytest.mark.parametrize("padding", [0, 2_000_000])
async def test_oversized_message_is_refused_and_connection_closed(oru, start_server, recorder,
                                                                  padding):
    """The AR reaches the sender even while it is still writing a big message."""
    server = await start_server(recorder, max_message_bytes=10_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    big = oru.replace("\rPRT|", "\rNTE|1||" + "x" * padding + "\rPRT|", 1)
    writer.write(frame(big.encode()))  # >= 29 kB
    with contextlib.suppress(ConnectionError):
        await writer.drain()  # the server may close before reading everything
    rest = await read_until_closed(reader)
    assert rest.startswith(START) and END in rest
    code, control_id, errors = parse_ack(rest[1:rest.index(END)].decode())
    assert (code, control_id) == ("AR", "C-1")
    assert "10000-byte limit" in errors[0][1]
    assert recorder.reports == []
    assert server.health().details["oversized"] == 1
    writer.close()


async def test_oversized_without_end_marker_is_refused_early(start_server, recorder):
    """A sender streaming an endless frame is cut off near the limit, not buffered forever."""
    server = await start_server(recorder, max_message_bytes=50_000)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(START + b"MSH|^~\\&|A|B|C|D|||ORU^R01|X-9|P|2.5\r" + b"x" * 60_000)
    await writer.drain()
    rest = await read_until_closed(reader)
    assert parse_ack(rest[1:rest.index(END)].decode())[:2] == ("AR", "X-9")
    assert recorder.reports == []
    writer.close()


async def test_data_outside_a_frame_closes_the_connection(oru, start_server, recorder):
    server = await start_server(recorder)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(oru.encode())  # no MLLP start byte
    await writer.drain()
    assert await read_until_closed(reader) == b""
    assert recorder.reports == []
    writer.close()


async def test_idle_connection_is_closed(oru, start_server, recorder):
    server = await start_server(recorder, idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(frame(oru.encode()))
    ack = await reader.readuntil(END)
    assert parse_ack(ack[1:-2].decode())[0] == "AA"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await read_until_closed(reader, timeout=5) == b""
    assert 0.2 < loop.time() - t0 < 3
    assert server.health().details["idle_closed"] == 1
    writer.close()


async def test_slow_partial_frame_is_closed_by_idle_timeout(oru, start_server, recorder):
    server = await start_server(recorder, idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(frame(oru.encode())[:100])
    await writer.drain()
    assert await read_until_closed(reader, timeout=5) == b""
    assert recorder.reports == []
    writer.close()


async def test_health_and_stop(start_server, recorder):
    server = await start_server(recorder)
    assert server.health().ready
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    await server.stop()
    assert not server.health().ready
    assert await read_until_closed(reader) == b""  # the open connection was closed
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", server.port)
    await server.stop()  # idempotent
    writer.close()


async def test_stop_lets_an_inflight_report_finish(oru, start_server, recorder):
    started = asyncio.Event()

    async def commit(report: Report) -> None:
        started.set()
        await asyncio.sleep(0.3)

    recorder.before = commit
    server = await start_server(recorder)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(frame(oru.encode()))
    await writer.drain()
    await started.wait()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await server.stop()
    assert loop.time() - t0 < 2, "stop() returns once the ACK is sent, not after the grace"
    data = await read_until_closed(reader)
    assert parse_ack(data[1:data.index(END)].decode())[0] == "AA"
    assert len(recorder.reports) == 1
    writer.close()


async def test_connections_beyond_the_limit_are_closed(oru, start_server, recorder):
    server = await start_server(recorder, max_connections=2)
    kept = [await MllpClient.connect("127.0.0.1", server.port) for _ in range(2)]
    for client in kept:  # an answered message proves the server holds the connection
        assert parse_ack(await client.send(oru))[0] == "AA"
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    assert await read_until_closed(reader) == b""
    writer.close()
    assert parse_ack(await kept[0].send(oru))[0] == "AA"  # the others still work
    await kept[0].close()
    async with asyncio.timeout(5):
        while server.health().details["open_connections"] > 1:
            await asyncio.sleep(0.01)
    async with await MllpClient.connect("127.0.0.1", server.port) as again:
        assert parse_ack(await again.send(oru))[0] == "AA"  # a slot was freed
    await kept[1].close()
    assert server.health().details["refused_connections"] == 1


async def test_full_size_ans_message_with_default_limits(oru, start_server, recorder):
    from tests.hl7.helpers import full_size

    big = full_size(oru)
    assert len(big) > 300_000
    server = await start_server(recorder)
    assert await roundtrip(server.port, big) == ("AA", "C-1", [])
    assert recorder.reports[0].cda is not None and len(recorder.reports[0].cda) > 200_000


async def test_server_from_config(oru, recorder, port_factory):
    from appliance.config import Hl7Config
    from appliance.hl7.mllp import MllpServer

    config = Hl7Config(bind="127.0.0.1", port=port_factory(), max_message_bytes=20_000,
                       idle_timeout=30.0)
    server = MllpServer.from_config(config, recorder)
    await server.start()
    try:
        assert server.port == config.port
        code, _, errors = await roundtrip(server.port, oru)  # ~29 kB > 20 kB
        assert code == "AR" and "20000-byte limit" in errors[0][1]
    finally:
        await server.stop()
