"""What PSC's answers mean to the box: introspection results and the professional behind a
token. Names and identifiers are kept out of ``repr`` so a logged object leaks nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Introspection:
    """An RFC 7662 answer. ``expires_at`` is epoch seconds (0 when inactive)."""

    active: bool
    subject: str = field(default="", repr=False)
    rpps: str = field(default="", repr=False)      # preferred_username, else SubjectNameID
    audiences: tuple[str, ...] = ()
    expires_at: float = 0.0
    client_id: str = ""
    acr: str = ""
    claims: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def parse(cls, doc: Any) -> "Introspection":
        """Raises ``ValueError`` for an answer that is not an introspection response."""
        if not isinstance(doc, dict) or not isinstance(doc.get("active"), bool):
            raise ValueError("not an introspection response (no boolean 'active')")
        if not doc["active"]:
            return cls(False, claims=doc)
        aud = doc.get("aud", ())
        audiences = (aud,) if isinstance(aud, str) else tuple(str(a) for a in aud or ())
        exp = doc.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise ValueError("active token without a numeric 'exp'")
        rpps = doc.get("preferred_username") or doc.get("SubjectNameID") or ""
        return cls(True, str(doc.get("sub", "")), str(rpps), audiences, float(exp),
                   str(doc.get("client_id", "") or doc.get("azp", "")), str(doc.get("acr", "")),
                   doc)


@dataclass(frozen=True)
class Activity:
    """One ``activities[]`` entry of an exercice: where the professional works."""

    structure_name: str = field(default="", repr=False)      # raisonSocialeSite
    structure_id: str = ""                                   # ancienIdentifiantDeLaStructure
    technical_id: str = ""                                   # identifiantTechniqueDeLaStructure
    sector: str = ""                                         # codeSecteurDactivite
    mode: str = ""                                           # codeModeExercice


@dataclass(frozen=True)
class Exercice:
    profession: str = ""                                     # codeProfession
    savoir_faire: str = ""                                   # codeSavoirFaire
    given_name: str = field(default="", repr=False)          # prenomDexercice
    family_name: str = field(default="", repr=False)         # nomDexercice
    activities: tuple[Activity, ...] = ()


@dataclass(frozen=True)
class Professional:
    """The health professional a token or a login stands for. ``exercices`` come from userinfo
    (empty when only the access token was checked)."""

    rpps: str = field(repr=False)
    subject: str = field(default="", repr=False)
    client_id: str = ""
    acr: str = ""
    expires_at: float = 0.0
    audiences: tuple[str, ...] = ()
    exercices: tuple[Exercice, ...] = ()

    @classmethod
    def from_userinfo(cls, doc: Any) -> "Professional":
        """PSC's userinfo (``SubjectNameID``, ``SubjectRefPro.exercices[].activities[]``)."""
        if not isinstance(doc, dict):
            raise ValueError("userinfo is not a JSON object")
        ref = doc.get("SubjectRefPro") or {}
        exercices = []
        for ex in (ref.get("exercices") or []) if isinstance(ref, dict) else []:
            if not isinstance(ex, dict):
                continue
            acts = tuple(Activity(str(a.get("raisonSocialeSite", "")),
                                  str(a.get("ancienIdentifiantDeLaStructure", "")),
                                  str(a.get("identifiantTechniqueDeLaStructure", "")),
                                  str(a.get("codeSecteurDactivite", "")),
                                  str(a.get("codeModeExercice", "")))
                         for a in ex.get("activities") or [] if isinstance(a, dict))
            exercices.append(Exercice(str(ex.get("codeProfession", "")),
                                      str(ex.get("codeSavoirFaire", "")),
                                      str(ex.get("prenomDexercice", "")),
                                      str(ex.get("nomDexercice", "")), acts))
        rpps = doc.get("SubjectNameID") or doc.get("preferred_username") or ""
        if not rpps:
            raise ValueError("userinfo without SubjectNameID")
        return cls(str(rpps), str(doc.get("sub", "")), exercices=tuple(exercices))
