"""Fuzzing of the three parsers: MLLP framing, HL7 messages, CDA documents.

Each may only succeed or raise its typed error (FramingError, Hl7Error, CdaError); any other
exception is a bug. Example counts are modest to keep CI short.
"""

from __future__ import annotations

import asyncio
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.hl7.ack import build_ack, parse_ack
from appliance.hl7.cda import CdaError, parse_cda
from appliance.hl7.errors import Hl7Error
from appliance.hl7.messages import read_report
from appliance.hl7.mllp import END, FrameReader, FramingError, frame
from tests.hl7.helpers import ans_files, cda_of, fill

# HL7_FUZZ_EXAMPLES=5000 for a deeper local run.
FUZZ = settings(max_examples=int(os.environ.get("HL7_FUZZ_EXAMPLES", "150")), deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


def _sample(conformance_dir) -> str:
    return fill(ans_files(conformance_dir)["CR_C-ORU.hl7"].read_bytes().decode(), "FZ-1")


# --- framing -------------------------------------------------------------------------------


async def _frames(data: bytes, chunks: list[int], max_bytes: int = 4096) -> list[bytes]:
    """Feed ``data`` in pieces of the given sizes while a FrameReader reads it."""
    reader = asyncio.StreamReader()

    async def feed() -> None:
        pos = 0
        for size in chunks:
            reader.feed_data(data[pos:pos + size])
            pos += size
            await asyncio.sleep(0)  # let the reader see this piece alone
        reader.feed_data(data[pos:])
        reader.feed_eof()

    feeder = asyncio.create_task(feed())
    frames = FrameReader(reader, max_bytes)
    out = []
    try:
        while (payload := await frames.next()) is not None:
            out.append(payload)
    finally:
        await feeder
    return out


# Payloads without 0x1C, so that the only END markers are the frame ends.
payloads = st.lists(st.binary(max_size=300).map(lambda b: b.replace(b"\x1c", b"")),
                    min_size=1, max_size=5)


@FUZZ
@given(payloads, st.lists(st.integers(min_value=0, max_value=64), max_size=30))
def test_frames_survive_any_tcp_segmentation(messages, chunks):
    data = b"".join(frame(m) for m in messages)
    assert asyncio.run(_frames(data, chunks)) == messages


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=1, max_value=256), max_size=10))
def test_framing_of_random_bytes_fails_only_with_framing_error(data, chunks):
    try:
        frames = asyncio.run(_frames(data, chunks, max_bytes=512))
    except FramingError:
        return
    for f in frames:
        assert len(f) <= 512 and END not in f


@FUZZ
@given(payloads, st.integers(min_value=1, max_value=200))
def test_cut_frame_is_never_delivered(messages, cut):
    data = b"".join(frame(m) for m in messages)
    cut = min(cut, len(data) - 1)
    delivered = asyncio.run(_frames(data[:len(data) - cut], []))
    complete = data[:len(data) - cut].count(END)
    assert delivered == messages[:complete]


# --- HL7 -----------------------------------------------------------------------------------

hl7ish = st.text(alphabet=st.sampled_from(list("MSHPIDOBXRC|^~\\&\r\n 0123456789.ATEF")),
                 max_size=400)


@FUZZ
@given(st.one_of(st.text(max_size=500), hl7ish, hl7ish.map(lambda t: "MSH|^~\\&|" + t)))
def test_hl7_parser_raises_only_hl7_error(text):
    try:
        read_report(text)
    except Hl7Error as e:
        assert e.ack_code in ("AE", "AR") and e.reason
        # whatever the input, an ACK can be built and parsed back
        code, _, errors = parse_ack(build_ack(text, e))
        assert code == e.ack_code and errors[0][0] == str(e.hl7_error_code)


@FUZZ
@given(data=st.data())
def test_mutated_ans_message_raises_only_hl7_error(conformance_dir, data):
    sample = _sample(conformance_dir)
    head = sample.index("^Base64^") + 8  # mutate the HL7 structure more than the base64
    tail = sample.index("|", head)
    pos = data.draw(st.one_of(st.integers(0, head), st.integers(tail, len(sample) - 1)))
    length = data.draw(st.integers(0, 20))
    insert = data.draw(st.text(alphabet=st.sampled_from(list("|^~\\&\rX9 ")), max_size=10))
    mutated = sample[:pos] + insert + sample[pos + length:]
    try:
        report = read_report(mutated)
    except Hl7Error as e:
        assert e.reason
        return
    assert report.ins and report.control_id


# --- CDA -----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=600))
def test_cda_parser_on_random_bytes(data):
    try:
        parse_cda(data)
    except CdaError as e:
        assert e.reason.startswith("CDA: ")


@FUZZ
@given(data=st.data())
def test_cda_parser_on_mutated_ans_cda(conformance_dir, data):
    cda = cda_of(_sample(conformance_dir))
    pos = data.draw(st.integers(0, len(cda) - 1))
    length = data.draw(st.integers(0, 40))
    insert = data.draw(st.binary(max_size=12) | st.sampled_from(
        [b"<", b">", b"/>", b'"', b"&amp;", b"&x;", b"<id/>", b"<!--", b"]]>", b"\xff"]))
    try:
        report = parse_cda(cda[:pos] + insert + cda[pos + length:])
    except CdaError as e:
        assert e.reason.startswith("CDA: ")
        return
    assert report.document_id.root and report.ins
