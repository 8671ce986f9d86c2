"""The DMP connector (IHE XDS.b with VIHF and XAdES): the box's only way to the national record."""

from .client import MEDECIN, DmpClient, PublishResult, QueryResult, publication_actor
from .codes import Code
from .errors import (
                     DmpError,
                     DmpPermanentError,
                     DmpResponseError,
                     DmpRetryableError,
                     RegistryError,
                     SubmissionError,
)
from .metadata import (
                     KosSubmission,
                     Organization,
                     PatientId,
                     PatientInfo,
                     Person,
                     ReferenceId,
                     ReferenceType,
)
from .signer import Signer, TokenSigner
from .transactions import AccessStatus, DocumentEntry
from .vihf import Actor, AuthMode, Software

__all__ = [
    "MEDECIN", "AccessStatus", "Actor", "AuthMode", "Code", "DmpClient", "DmpError",
    "DmpPermanentError", "DmpResponseError", "DmpRetryableError", "DocumentEntry", "KosSubmission",
    "Organization", "PatientId", "PatientInfo", "Person", "PublishResult", "QueryResult",
    "ReferenceId", "ReferenceType", "RegistryError", "Signer", "Software", "SubmissionError",
    "TokenSigner", "publication_actor",
]
