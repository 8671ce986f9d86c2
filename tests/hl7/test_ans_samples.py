"""Every ANS referencing message (hl7v2-derived) parses with the right action and fields, its CDA
extracts correctly, and it is acknowledged AA over a real MLLP connection."""

from __future__ import annotations

import pytest

from appliance.hl7.ack import parse_ack
from appliance.hl7.cda import InstanceId
from appliance.hl7.messages import Action, inconsistencies, parse_message, read_report
from appliance.hl7.mllp import MllpClient
from tests.hl7.helpers import fill

# Facts from referencement-drimbox/hl7v2-derived/README.md, per message.
EXPECTED = {
    "CR_C-ORU.hl7": dict(action=Action.PUBLISH, effective=Action.PUBLISH, orc="NW", status="F",
                         doc="1.2.250.1.213.4.5.4.403", study="1.2.250.1.213.4.5.2.1.103",
                         order=("1.2.250.1.213.4.5.2.6", "OPN103"),
                         acc=("1.2.250.1.925.994044785528.27", "ACN103"), modality="CT",
                         ccam="ACQH004", org="101235555", prt_org="750803447", version="1",
                         replaces=None, hidden=("INVISIBLE_PATIENT", "DESTDMP")),
    "CR_C-MDM.hl7": dict(action=Action.PUBLISH, effective=Action.PUBLISH, orc="NW", status="F",
                         doc="1.2.250.1.213.4.5.4.403", study="1.2.250.1.213.4.5.2.1.103",
                         order=("1.2.250.1.213.4.5.2.6", "OPN103"),
                         acc=("1.2.250.1.925.994044785528.27", "ACN103"), modality="CT",
                         ccam="ACQH004", org="101235555", prt_org="750803447", version="1",
                         replaces=None, hidden=("INVISIBLE_PATIENT", "DESTDMP")),
    "CR_I-ORU.hl7": dict(action=Action.PUBLISH, effective=Action.PUBLISH, orc="NW", status="F",
                         doc="1.2.250.1.213.4.5.4.410", study="1.2.250.1.213.4.5.2.1.110",
                         order=("1.2.250.1.213.4.5.2.6", "OPN110"),
                         acc=("1.2.250.1.213.4.5.2.5", "ACN110"), modality="NM", ccam="KCQL003",
                         org="101235555", prt_org="300017985", version="1", replaces=None,
                         hidden=("INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "DESTDMP")),
    "CR_I_Depublication-ORU.hl7": dict(
        action=Action.WITHDRAW, effective=Action.WITHDRAW, orc="CA", status="D",
        doc="1.2.250.1.213.4.5.4.410", study="1.2.250.1.213.4.5.2.1.110",
        order=("1.2.250.1.213.4.5.2.6", "OPN110"), acc=("1.2.250.1.213.4.5.2.5", "ACN110"),
        modality="NM", ccam="KCQL003", org="101235555", prt_org="300017985", version="1",
        replaces=None, hidden=("INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "DESTDMP")),
    "CR_G1-ORU.hl7": dict(action=Action.PUBLISH, effective=Action.PUBLISH, orc="NW", status="F",
                          doc="1.2.250.1.213.4.5.4.407", study="1.2.250.1.213.4.5.2.1.108",
                          order=("1.2.250.1.213.4.5.2.6", "OPN108"),
                          acc=("1.2.250.1.213.4.5.2.5", "ACN108"), modality="XA",
                          ccam="DDQH006", org="101235555", prt_org="750803447", version="1",
                          replaces=None, hidden=("INVISIBLE_PATIENT", "DESTDMP")),
    "CR_G1_MAJ-ORU.hl7": dict(action=Action.PUBLISH, effective=Action.REPLACE, orc="NW",
                              status="F", doc="1.2.250.1.213.4.5.4.4072",
                              study="1.2.250.1.213.4.5.2.1.108",
                              order=("1.2.250.1.748.12345678.12", "OPN108"),
                              acc=("1.2.250.1.925.994044.27", "ACN108"), modality="XA",
                              ccam="DDQH006", org="1750803447", prt_org="300017985",
                              version="2", replaces="1.2.250.1.213.4.5.4.407",
                              hidden=("MODIF_CONF_CODE", "DESTDMP")),
    "CR_U-ORU.hl7": dict(action=Action.PUBLISH, effective=Action.PUBLISH, orc="NW", status="F",
                         doc="1.2.250.1.213.4.5.4.422", study="1.2.250.1.213.4.5.2.1.122",
                         order=("1.2.250.1.213.4.5.2.6", "OPN122"),
                         acc=("1.2.250.1.213.4.5.2.5", "ACN122"), modality="CT", ccam="ACQH004",
                         org="101235555", prt_org="300017985", version="1", replaces=None,
                         hidden=("INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "DESTDMP")),
    "CR_K-ORU.hl7": dict(action=Action.PUBLISH, effective=Action.PUBLISH, orc="NW", status="F",
                         doc="1.2.250.1.213.4.5.4.412", study="1.2.250.1.213.4.5.2.1.112",
                         order=("1.2.250.1.213.4.5.2.6", "OPN112"),
                         acc=("1.2.250.1.213.4.5.2.5", "ACN112"), modality="CT", ccam="ACQH004",
                         org="101235555", prt_org="300017985", version="1", replaces=None,
                         hidden=("INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "DESTDMP")),
    "CR_L-ORU.hl7": dict(action=Action.PUBLISH, effective=Action.PUBLISH, orc="NW", status="F",
                         doc="1.2.250.1.213.4.5.4.413", study="1.2.250.1.213.4.5.2.1.113",
                         order=("1.2.250.1.213.4.5.2.6", "OPN113"),
                         acc=("1.2.250.1.925.994044785528.27", "ACN113"), modality="CT",
                         ccam="ACQH004", org="101235555", prt_org="300017985", version="1",
                         replaces=None,
                         hidden=("INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX", "DESTDMP")),
}


# PID-11 (README: C, C-MDM and G1 51215; the others 63220).
BIRTHPLACE = {name: "51215" if name in ("CR_C-ORU.hl7", "CR_C-MDM.hl7", "CR_G1-ORU.hl7")
              else "63220" for name in EXPECTED}


def test_every_ans_message_is_covered(ans_messages):
    assert set(ans_messages) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_ans_message_fields(ans_messages, name):
    exp = EXPECTED[name]
    report = read_report(fill(ans_messages[name], "CTRL-42"))
    mdm = name.endswith("MDM.hl7")

    assert report.control_id == "CTRL-42"
    assert (report.message_type, report.trigger, report.version) == (
        ("MDM", "T02", "2.6") if mdm else ("ORU", "R01", "2.5"))
    assert report.action is exp["action"]
    assert report.effective_action is exp["effective"]
    assert report.order_control == exp["orc"]
    assert report.result_status == exp["status"]
    assert (report.ins, report.ins_oid, report.ins_environment) == (
        "279035121518989", "1.2.250.1.213.1.4.10", "test")
    assert (report.ipp, report.ipp_authority, report.ipp_oid) == (
        "IPP101", "AUT-AFFECTATION", "1.2.250.1.213.4.5.2.4")
    assert (report.birth_family, report.given, report.used_family) == (
        "PAT-TROIS", "DOMINIQUE", "PAT-TROIS")
    assert (report.birth_date, report.sex, report.identity_status) == ("19790328", "F", "VALI")
    assert report.birthplace == BIRTHPLACE[name]
    if mdm:
        assert (report.placer_order, report.filler_order, report.accession) == ("", "", "")
        assert report.document_number == exp["doc"]
    else:
        assert report.placer_order == "984375862"
        assert report.filler_order == "09011600123"
        assert report.accession == "09011600123"  # OBR-18 of the ANS samples
    sending = {"CR_K-ORU.hl7": "ANS_HL7v2_Application_A",
               "CR_L-ORU.hl7": "ANS_HL7v2_Application_B"}.get(name, "RIS_TEST")
    assert (report.sending_application, report.receiving_application) == (sending, "DRIMBOX")

    assert set(report.flags) == {"MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX",
                                 "CONNEXION_SECRETE", "MODIF_CONF_CODE", "DESTDMP",
                                 "DESTMSSANTEPS", "DESTMSSANTEPAT", "ACK_RECEPTION",
                                 "ACK_LECTURE_MSS"}
    assert {k for k, v in report.flags.items() if v} == set(exp["hidden"])

    sender = report.sender
    assert sender is not None
    assert (sender.rpps, sender.rpps_oid) == ("801234564895", "1.2.250.1.71.4.2.1")
    assert (sender.organisation_id, sender.organisation_oid, sender.organisation_type) == (
        exp["prt_org"], "1.2.250.1.71.4.2.2", "FINEG")

    assert report.cda is not None and report.cda.startswith(b"<?xml")
    cda = report.cda_report
    assert cda is not None
    assert cda.document_id == InstanceId(exp["doc"])
    assert cda.set_id == InstanceId("D52DE737-001D-4031-B571-0A0ED7C42300")
    assert cda.version == exp["version"]
    assert (cda.replaces.root if cda.replaces else None) == exp["replaces"]
    assert cda.code is not None and cda.code.code == "18748-4"
    assert cda.effective_time == "20210108111700+0100"
    assert cda.title.startswith("CR d")
    assert (cda.ins, cda.ins_oid, cda.ipp, cda.ipp_oid) == (
        "279035121518989", "1.2.250.1.213.1.4.10", "IPP101", "1.2.250.1.213.4.5.2.4")
    assert (cda.birth_family, cda.given[0], cda.birth_time, cda.sex) == (
        "PAT-TROIS", "DOMINIQUE", "19790328", "F")
    for who in (cda.author, cda.legal_authenticator):
        assert who is not None
        assert who.id == InstanceId("1.2.250.1.71.4.2.1", "801234560801")
        assert who.organisation_id == InstanceId("1.2.250.1.71.4.2.2", exp["org"])
    assert cda.legal_authenticator is not None and cda.legal_authenticator.family == "BIDEAULT"
    assert cda.order_id == InstanceId(*exp["order"])
    assert cda.accession == InstanceId(*exp["acc"])
    assert cda.study_uid == exp["study"]
    assert cda.modality is not None and cda.modality.code == exp["modality"]
    assert cda.modality.system == "1.2.840.10008.2.16.4"
    assert (cda.ccam.code if cda.ccam else None) == exp["ccam"]
    assert cda.act is not None and cda.act.system == "2.16.840.1.113883.6.1"
    assert cda.modality in cda.translations
    assert cda.service_start == "20210108102500+0100"
    assert cda.service_stop == "20210108111700+0100"
    assert cda.practice_setting is not None
    assert (cda.practice_setting.code, cda.practice_setting.system) == (
        "AMBULATOIRE", "1.2.250.1.213.1.1.4.9")
    assert cda.facility_type is not None and cda.facility_type.system == "1.2.250.1.71.4.2.4"


def test_region_is_read_when_present(ans_messages):
    cda = read_report(fill(ans_messages["CR_G1-ORU.hl7"])).cda_report
    assert cda is not None and cda.region is not None
    assert (cda.region.code, cda.region.system) == ("113257007", "2.16.840.1.113883.6.96")


def test_ans_obr18_is_not_the_cda_accession(ans_messages):
    """The samples' OBR-18 is the filler order number, not the CDA accession: the strict check
    reports it (that is why the server leaves it off by default)."""
    report = parse_message(fill(ans_messages["CR_C-ORU.hl7"]))
    cda = read_report(fill(ans_messages["CR_C-ORU.hl7"])).cda_report
    assert cda is not None
    assert inconsistencies(report, cda, check_accession=False) == []
    reasons = inconsistencies(report, cda, check_accession=True)
    assert len(reasons) == 1 and "accession" in reasons[0] and "OBR-18" in reasons[0]


async def test_ans_messages_over_mllp(ans_messages, start_server, recorder):
    """All the messages on one connection, in the referencing order: each gets AA after the
    handler saw it, with the right action."""
    server = await start_server(recorder)
    order = ["CR_C-ORU.hl7", "CR_C-MDM.hl7", "CR_I-ORU.hl7", "CR_I_Depublication-ORU.hl7",
             "CR_G1-ORU.hl7", "CR_G1_MAJ-ORU.hl7", "CR_U-ORU.hl7", "CR_K-ORU.hl7",
             "CR_L-ORU.hl7"]
    async with await MllpClient.connect("127.0.0.1", server.port) as client:
        for i, name in enumerate(order):
            ack = await client.send(fill(ans_messages[name], f"ANS-{i}"))
            code, control, errors = parse_ack(ack)
            assert (code, control, errors) == ("AA", f"ANS-{i}", []), (name, ack)
            assert len(recorder.reports) == i + 1
    assert [r.effective_action for r in recorder.reports] == [EXPECTED[n]["effective"]
                                                              for n in order]
    assert [r.cda_report.study_uid for r in recorder.reports if r.cda_report] == [
        EXPECTED[n]["study"] for n in order]
    assert server.health().details["accepted"] == len(order)
