"""Loaded only into the ``vicc`` virtual-card process by the reader-event test.

Debian 12's python3-virtualsmartcard imports PyCrypto's ``Crypto`` package, which bookworm no longer
ships; python3-pycryptodome provides the same API as ``Cryptodome``. Alias it so vicc starts.
"""

import importlib
import sys

import Cryptodome

sys.modules["Crypto"] = Cryptodome
for _sub in ("Cipher", "Hash", "Cipher.DES3", "Cipher.DES", "Cipher.AES", "Cipher.ARC4",
             "Hash.HMAC", "Hash.SHA", "Hash.SHA1"):
    try:
        sys.modules["Crypto." + _sub] = importlib.import_module("Cryptodome." + _sub)
    except ImportError:
        pass
