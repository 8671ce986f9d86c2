"""Keys in the token: PKCS#11 sessions, signatures, certificates, TLS contexts (ARCHITECTURE §6).

Public API:
- :class:`Token` — ``Token(module, token_label, pin_file)`` or ``Token.from_config(Config.hsm)``;
  ``open()``, ``close()``, ``sign(key_label, data, algorithm="rsa-sha256")``,
  ``certificate(label)``, ``health()``.
- :class:`KeysComponent` — the daemon component (name "keys").
- :mod:`appliance.keys.tls` — ``client_context`` / ``server_context`` with a token key;
  ``box_server_context(config)`` for the box's HTTPS server.
- :mod:`appliance.keys.certs` — chain, usage and expiry checks.
- :mod:`appliance.keys.testpki` — ``make_test_pki`` for tests and the demo.
"""

from .component import KeysComponent
from .errors import (
                     CertificateRefused,
                     KeyNotFound,
                     KeysError,
                     ModuleError,
                     PinError,
                     PinFileError,
                     TokenAbsent,
)
from .token import ALGORITHMS, Token

__all__ = ["ALGORITHMS", "CertificateRefused", "KeyNotFound", "KeysComponent", "KeysError",
           "ModuleError", "PinError", "PinFileError", "Token", "TokenAbsent"]
