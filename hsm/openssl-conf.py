"""Print the OpenSSL provider configuration for the configured token and write the URI-PEM key file
of one key, for tools outside the daemon (openssl, stunnel, curl):

    python hsm/openssl-conf.py -c box.toml --label auth --dir /run/drimbox-tools
    OPENSSL_CONF=/run/drimbox-tools/openssl-pkcs11.cnf openssl s_client -key <printed key file> …
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from appliance import config  # noqa: E402
from appliance.keys import provider  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-c", "--config", required=True, type=Path)
    ap.add_argument("--label", required=True, help="private key label on the token")
    ap.add_argument("--dir", required=True, type=Path, help="private directory (created 0700)")
    a = ap.parse_args()
    h = config.load(a.config).hsm
    a.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf = provider.write_conf(h.module, h.rsa_pss, a.dir)
    key = provider.write_key_file(h.token_label, a.label, h.pin_file, a.dir)
    print(f"OPENSSL_CONF={conf}")
    print(f"key file: {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
