"""The DMP connector (IHE XDS.b with VIHF and XAdES): the box's only way to the national record.

    signer = TokenSigner(token, cfg.hsm.sign_key_label, cfg.dmp.signature_algorithm)
    tls = appliance.keys.tls.client_context(cfg.hsm, cfg.hsm.auth_key_label, auth_cert,
                                            cfg.dmp.ca_file)     # keep one per process
    async with DmpClient(cfg.dmp, signer, tls) as dmp:
        await dmp.publish(submission)                          # KosSubmission from CDA + KOS
        found = await dmp.find_documents(patient, actor, class_codes=(codes.CLASS_IMAGING,))

Failures are DmpRetryableError (try again later) or DmpPermanentError(code, text).
"""

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
from .vihf import Actor, AuthMode, Software, consumer_actor

__all__ = [
    "MEDECIN", "AccessStatus", "Actor", "AuthMode", "Code", "DmpClient", "DmpError",
    "DmpPermanentError", "DmpResponseError", "DmpRetryableError", "DocumentEntry", "KosSubmission",
    "Organization", "PatientId", "PatientInfo", "Person", "PublishResult", "QueryResult",
    "ReferenceId", "ReferenceType", "RegistryError", "Signer", "Software", "SubmissionError",
    "TokenSigner", "consumer_actor", "publication_actor",
]
