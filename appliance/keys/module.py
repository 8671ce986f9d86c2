"""Load a PKCS#11 module once per process, initialised for multi-threaded use.

python-pkcs11 calls ``C_Initialize(NULL)``. By the PKCS#11 spec that tells the module that the
application will never call it from several threads at once, and SoftHSM then turns its mutexes
off. The box breaks that promise on purpose: pkcs11-provider calls the same module from OpenSSL
while the daemon signs with python-pkcs11. Measured: concurrent handshakes and signatures give
``CKR_GENERAL_ERROR`` and crashes. So this module calls ``C_Initialize`` itself first, with
``CKF_OS_LOCKING_OK``, and then builds the python-pkcs11 library object without its own
initialisation. python-pkcs11 offers no way to pass initialisation arguments, hence these few
ctypes lines. pkcs11-provider accepts an already initialised module.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

from pkcs11 import _pkcs11
from pkcs11.exceptions import PKCS11Error

from .errors import ModuleError

CKF_OS_LOCKING_OK = 0x00000002
CKR_OK = 0
CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191


class _InitArgs(ctypes.Structure):
    _fields_ = [("CreateMutex", ctypes.c_void_p), ("DestroyMutex", ctypes.c_void_p),
                ("LockMutex", ctypes.c_void_p), ("UnlockMutex", ctypes.c_void_p),
                ("flags", ctypes.c_ulong), ("pReserved", ctypes.c_void_p)]


_lock = threading.Lock()
_libs: dict[str, Any] = {}
_dl: dict[str, ctypes.CDLL] = {}


def _initialize(dl: ctypes.CDLL, path: str) -> None:
    args = _InitArgs(None, None, None, None, CKF_OS_LOCKING_OK, None)
    dl.C_Initialize.argtypes = [ctypes.c_void_p]
    dl.C_Initialize.restype = ctypes.c_ulong
    rv = dl.C_Initialize(ctypes.byref(args))
    if rv not in (CKR_OK, CKR_CRYPTOKI_ALREADY_INITIALIZED):
        raise ModuleError(f"C_Initialize of {path} failed (CKR 0x{rv:x})")


def load(path: str) -> Any:
    """The python-pkcs11 ``lib`` for ``path``, initialised with OS locking (once per process)."""
    with _lock:
        lib = _libs.get(path)
        if lib is not None:
            return lib
        try:
            dl = ctypes.CDLL(path)  # same handle as python-pkcs11's dlopen of the same path
        except OSError as e:
            raise ModuleError(f"cannot load PKCS#11 module {path}: {e}") from None
        if not hasattr(dl, "C_Initialize"):
            raise ModuleError(f"{path} is not a PKCS#11 module (no C_Initialize)")
        _initialize(dl, path)
        try:
            # __new__ runs python-pkcs11's loader (dlopen + C_GetFunctionList) but not its
            # __init__, which would call C_Initialize(NULL) again and fail.
            lib = _pkcs11.lib.__new__(_pkcs11.lib, path)  # type: ignore[call-arg]
        except PKCS11Error as e:
            raise ModuleError(f"cannot load PKCS#11 module {path}: {e}") from None
        _libs[path], _dl[path] = lib, dl
        return lib


def reinitialize(path: str) -> None:
    """``C_Finalize`` + ``C_Initialize`` (with locking): a fresh slot list, all sessions gone."""
    with _lock:
        dl = _dl[path]
        dl.C_Finalize.argtypes = [ctypes.c_void_p]
        dl.C_Finalize.restype = ctypes.c_ulong
        dl.C_Finalize(None)
        _initialize(dl, path)


def describe(path: str) -> str:
    """Manufacturer and description from ``C_GetInfo`` (for ``drimbox hsm status``)."""

    class _Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_ubyte), ("minor", ctypes.c_ubyte)]

    class _Info(ctypes.Structure):
        _fields_ = [("cryptokiVersion", _Version), ("manufacturerID", ctypes.c_char * 32),
                    ("flags", ctypes.c_ulong), ("libraryDescription", ctypes.c_char * 32),
                    ("libraryVersion", _Version)]

    dl = _dl.get(path)
    if dl is None:
        return path
    info = _Info()
    dl.C_GetInfo.argtypes = [ctypes.c_void_p]
    dl.C_GetInfo.restype = ctypes.c_ulong
    if dl.C_GetInfo(ctypes.byref(info)) != CKR_OK:
        return path
    return (f"{info.manufacturerID.decode(errors='replace').strip()} / "
            f"{info.libraryDescription.decode(errors='replace').strip()} "
            f"{info.libraryVersion.major}.{info.libraryVersion.minor}")
