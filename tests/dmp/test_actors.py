"""Who the VIHF says acts: the consumer professional from Pro Santé Connect, or the report's
legal authenticator for a publication; and a consumer read through the simulator with it."""

from __future__ import annotations

import pytest

from appliance.dmp import AuthMode, consumer_actor, publication_actor
from tests.dmp.conftest import PATIENT

USERINFO = {
    "SubjectNameID": "810002909371",
    "SubjectRefPro": {"exercices": [{
        "codeProfession": "10", "codeSavoirFaire": "SM44", "prenomDexercice": "Jean",
        "nomDexercice": "RADIOLOGUE",
        "activities": [
            {"raisonSocialeSite": "CENTRE IMAGERIE", "ancienIdentifiantDeLaStructure":
             "10B0000001", "codeSecteurDactivite": "SA01"},
            {"raisonSocialeSite": "CABINET", "ancienIdentifiantDeLaStructure": "10B0000002",
             "codeSecteurDactivite": "SA07"}]}]},
}


def test_consumer_actor_from_psc_userinfo():
    a = consumer_actor(USERINFO, "10B0000002")
    assert (a.identifier, a.name, a.structure_id, a.sector) == (
        "810002909371", "Jean RADIOLOGUE", "10B0000002", "SA07")
    assert a.mode is AuthMode.INDIRECTE_RENFORCEE
    assert (a.profession.code, a.profession.system) == ("10", "1.2.250.1.71.1.2.7")
    assert a.specialty is not None and a.specialty.system == "1.2.250.1.71.4.2.5"


@pytest.mark.parametrize("userinfo, situation, words", [
    (USERINFO, None, "several structures"),
    (USERINFO, "99", "not one of"),
    ({"SubjectNameID": "1"}, None, "lacks"),
    ({}, None, "lacks"),
])
def test_consumer_actor_refuses_incomplete_identity(userinfo, situation, words):
    with pytest.raises(ValueError, match=words):
        consumer_actor(userinfo, situation)


def test_publication_actor_is_the_legal_authenticator(make_submission):
    s = make_submission()
    a = publication_actor(s)
    assert a.identifier == s.legal_authenticator.id and a.mode is AuthMode.INDIRECTE
    assert a.structure_id == s.institution.id and a.sector == s.facility_type.code


async def test_consumer_read_with_psc_identity(client, make_submission):
    s = make_submission()
    await client.publish(s)
    reader = consumer_actor(USERINFO, "10B0000001")
    assert (await client.check_access(PATIENT, reader)).may_read
    found = await client.find_documents(PATIENT, reader)
    kos = next(e for e in found.entries if e.unique_id == s.kos_uid)
    assert await client.retrieve(kos.repository_id, kos.unique_id, PATIENT, reader) == s.kos
