"""Action mapping beyond the ANS samples: ORU OBX-11 C, MDM T10/T04 (no ANS sample exists)."""

from __future__ import annotations

import pytest

from appliance.hl7.errors import Hl7Error
from appliance.hl7.messages import Action, read_report
from tests.hl7.helpers import fill


def _mdm(ans_messages, trigger: str) -> str:
    message = fill(ans_messages["CR_C-MDM.hl7"])
    return message.replace("MDM^T02^MDM_T02", f"MDM^{trigger}^MDM_{trigger}")


def _drop_segment(message: str, prefix: str) -> str:
    return "\r".join(s for s in message.split("\r") if not s.startswith(prefix))


@pytest.mark.parametrize("trigger, action", [("T02", Action.PUBLISH), ("T10", Action.REPLACE),
                                             ("T04", Action.WITHDRAW)])
def test_mdm_trigger_gives_the_action(ans_messages, trigger, action):
    report = read_report(_mdm(ans_messages, trigger))
    assert (report.trigger, report.action, report.effective_action) == (trigger, action, action)
    assert report.cda_report is not None


def test_mdm_t04_without_the_cda_uses_txa12(ans_messages):
    report = read_report(_drop_segment(_mdm(ans_messages, "T04"), "OBX|1|"))
    assert report.action is Action.WITHDRAW
    assert report.cda is None and report.cda_report is None
    assert report.document_number == "1.2.250.1.213.4.5.4.403"


def test_mdm_t04_without_cda_nor_txa12_is_refused(ans_messages):
    message = _drop_segment(_mdm(ans_messages, "T04"), "OBX|1|").replace(
        "|1.2.250.1.213.4.5.4.403|", "||")
    with pytest.raises(Hl7Error, match="TXA-12") as e:
        read_report(message)
    assert (e.value.ack_code, e.value.hl7_error_code) == ("AE", 101)


def test_mdm_txa12_must_match_the_cda(ans_messages):
    message = _mdm(ans_messages, "T02").replace("|1.2.250.1.213.4.5.4.403|", "|1.2.3.999|")
    with pytest.raises(Hl7Error, match="TXA-12"):
        read_report(message)


def test_mdm_t02_without_cda_is_refused(ans_messages):
    with pytest.raises(Hl7Error, match="CDA"):
        read_report(_drop_segment(_mdm(ans_messages, "T02"), "OBX|1|"))


def test_oru_correction_is_a_replace(ans_messages):
    message = fill(ans_messages["CR_C-ORU.hl7"]).replace("||||||F|\rPRT", "||||||C|\rPRT")
    report = read_report(message)
    assert (report.result_status, report.action) == ("C", Action.REPLACE)


def test_oru_orc_cancel_alone_is_a_withdrawal(ans_messages):
    message = fill(ans_messages["CR_C-ORU.hl7"]).replace("\rORC|NW|", "\rORC|CA|")
    assert read_report(message).action is Action.WITHDRAW


def test_crlf_separated_file_is_accepted(ans_messages):
    """The original ANS files use CRLF between segments; the box accepts CR, CRLF and LF."""
    message = fill(ans_messages["CR_C-ORU.hl7"])
    assert read_report(message.replace("\r", "\r\n")).control_id == \
        read_report(message.replace("\r", "\n")).control_id


async def test_send_command_prints_the_acks(ans_messages, start_server, recorder, tmp_path,
                                            capsys):
    from appliance.hl7.__main__ import _send

    good = tmp_path / "good.hl7"
    good.write_bytes(fill(ans_messages["CR_C-ORU.hl7"], "CLI-1").replace("\r", "\r\n").encode())
    bad = tmp_path / "bad.hl7"
    bad.write_text(fill(ans_messages["CR_C-ORU.hl7"], "CLI-2").replace("|2.5|", "|2.1|", 1))
    server = await start_server(recorder)
    assert await _send("127.0.0.1", server.port, [good], 10) == 0
    assert await _send("127.0.0.1", server.port, [good, bad], 10) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "good.hl7: AA CLI-1"
    assert out[2].startswith("bad.hl7: AR CLI-2 203: version '2.1'")


def test_escaped_and_accented_values_are_decoded(ans_messages):
    message = fill(ans_messages["CR_C-ORU.hl7"]).replace(
        "PAT-TROIS^DOMINIQUE^DOMINIQUE^^^^L", "D\\T\\FILS^Hélène^^^^^L")
    report = read_report("\ufeff" + message)
    assert (report.birth_family, report.given) == ("D&FILS", "Hélène")
