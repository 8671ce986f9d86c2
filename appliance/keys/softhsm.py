"""SoftHSM2 development tokens: where the module is, a private token store, token creation.

Only for development, CI and the demo; a real box uses an HSM or a card initialised by its owner.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from .errors import KeysError

MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so",
                     "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                     "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so")


def module_path() -> Path | None:
    for c in MODULE_CANDIDATES:
        if Path(c).is_file():
            return Path(c)
    return None


def is_softhsm(module: str | Path) -> bool:
    return "softhsm" in Path(module).name.lower()


def write_conf(token_dir: Path, conf: Path) -> Path:
    """A SoftHSM config using ``token_dir`` only (so tests never touch the system store)."""
    token_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf.write_text(f"directories.tokendir = {token_dir}\nobjectstore.backend = file\n"
                    "log.level = ERROR\nslots.removable = false\n")
    return conf


def write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def new_pin(digits: int = 8) -> str:
    return "".join(secrets.choice("0123456789") for _ in range(digits))


def init_token(label: str, pin: str, so_pin: str, env: dict[str, str] | None = None) -> None:
    """``softhsm2-util --init-token --free`` (PINs passed on the command line: fine for a
    throwaway development token, never for a real one)."""
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise KeysError("softhsm2-util not found (Debian package softhsm2)")
    r = subprocess.run([tool, "--init-token", "--free", "--label", label, "--pin", pin,
                        "--so-pin", so_pin], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=60)
    if r.returncode != 0:
        raise KeysError(f"softhsm2-util could not create token {label!r}: "
                        f"{(r.stderr or r.stdout).strip()}")


def token_exists(label: str, env: dict[str, str] | None = None) -> bool:
    tool = shutil.which("softhsm2-util")
    if tool is None:
        return False
    r = subprocess.run([tool, "--show-slots"], capture_output=True, text=True,
                       env={**os.environ, **(env or {})}, timeout=60)
    return any(line.strip().startswith("Label:") and line.split(":", 1)[1].strip() == label
               for line in r.stdout.splitlines())
