"""Find a libucp and compile kelp's cffi API-mode module against its headers.

Where UCX comes from (``KELP_UCX_LIB``):

* unset or ``wheel`` — the ``libucx-cu12`` wheel (libucp 1.22 with tcp, sysv/posix shared memory
  and cma; no verbs). Headers and libraries live inside the installed ``libucx`` package.
* ``system`` — whatever ``libucp.so.0`` the dynamic loader finds (e.g. Debian's ``libucx0``, which
  is built with verbs). Headers are used if ``ucp/api/ucp.h`` is installed (``libucx-dev``).
* a path — a ``libucp.so*`` file or the directory holding it; headers are looked up in
  ``KELP_UCX_INCLUDE`` or ``<dir>/../include``.

The compiled module goes into a cache directory (``KELP_UCX_BUILD_DIR``, default
``$XDG_CACHE_HOME/kelp/ucx-build`` or ``~/.cache/kelp/ucx-build``), under a key that hashes
everything the result depends on: the declarations, the headers' version file, the library
location, Python and cffi. A build is therefore done once per (machine, UCX, Python) and is safe
to run from several processes at once: a file lock serialises builders and the module is renamed
into place only when complete. Nothing here touches the network.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cffi

from rdma.ucx import _cdef

MODULE_PREFIX = "_kelp_ucp_"


class UcxNotFound(RuntimeError):
    """No usable libucp (or, for a build, no headers) could be located."""


@dataclass(frozen=True)
class UcxInstall:
    """One UCX installation: the library to load and, when present, its headers."""

    origin: str  # "wheel", "system" or "path"
    libucp: Path  # the file handed to the dynamic loader
    include: Path | None  # directory containing ucp/api/ucp.h, if any

    @property
    def libdir(self) -> Path:
        return self.libucp.parent

    @property
    def header_version(self) -> str | None:
        """The ``UCP_API_MAJOR.MINOR`` of the headers, or None without headers."""
        if self.include is None:
            return None
        text = (self.include / "ucp/api/ucp_version.h").read_text()
        found = {}
        for line in text.splitlines():
            parts = line.split()
            if (
                len(parts) == 3
                and parts[0] == "#define"
                and parts[1]
                in (
                    "UCP_API_MAJOR",
                    "UCP_API_MINOR",
                )
            ):
                found[parts[1]] = parts[2]
        return f"{found.get('UCP_API_MAJOR', '?')}.{found.get('UCP_API_MINOR', '?')}"


def _wheel_install() -> UcxInstall:
    spec = importlib.util.find_spec("libucx")
    if spec is None or not spec.submodule_search_locations:
        raise UcxNotFound("the libucx-cu12 wheel is not installed (pip install libucx-cu12)")
    root = Path(next(iter(spec.submodule_search_locations)))
    lib = root / "lib" / "libucp.so.0"
    if not lib.exists():
        raise UcxNotFound(f"{lib} is missing from the libucx wheel")
    include = root / "include"
    return UcxInstall("wheel", lib, include if (include / "ucp/api/ucp.h").exists() else None)


def _system_install() -> UcxInstall:
    name = ctypes.util.find_library("ucp")
    candidates = [Path(name)] if name and os.path.isabs(name) else []
    # find_library returns a bare soname on glibc; resolve it against the usual directories.
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    for d in (f"/usr/lib/{multiarch}", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
        candidates.append(Path(d) / (name or "libucp.so.0"))
    for path in candidates:
        if path.exists():
            include = Path("/usr/include")
            has_headers = (include / "ucp/api/ucp.h").exists()
            return UcxInstall("system", path, include if has_headers else None)
    raise UcxNotFound("KELP_UCX_LIB=system but no libucp.so.0 was found (apt install libucx0)")


def _path_install(value: str) -> UcxInstall:
    path = Path(value)
    if path.is_dir():
        path = path / "libucp.so.0"
    if not path.exists():
        raise UcxNotFound(f"KELP_UCX_LIB={value}: {path} does not exist")
    include = Path(os.environ.get("KELP_UCX_INCLUDE") or path.parent.parent / "include")
    return UcxInstall("path", path, include if (include / "ucp/api/ucp.h").exists() else None)


def find_install() -> UcxInstall:
    """The UCX installation selected by ``KELP_UCX_LIB`` (default: the wheel)."""
    choice = os.environ.get("KELP_UCX_LIB", "wheel").strip() or "wheel"
    if choice == "wheel":
        return _wheel_install()
    if choice == "system":
        return _system_install()
    return _path_install(choice)


def cache_root() -> Path:
    explicit = os.environ.get("KELP_UCX_BUILD_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "kelp" / "ucx-build"


# -Wno-sign-compare: UCX's own headers trip it (UCS_MASK); keep an import-time build quiet.
_COMPILE_ARGS = ["-O2", "-Wno-unused-variable", "-Wno-sign-compare"]

_SOURCE = """
#include <stdio.h>
#include <stdlib.h>
#include <ucp/api/ucp.h>
"""


def build_key(install: UcxInstall) -> str:
    """A short hash of every input that the compiled module depends on."""
    h = hashlib.sha256()
    for part in (
        _cdef.api_cdef(),
        _SOURCE,
        " ".join(_COMPILE_ARGS),
        str(install.libucp.resolve()),
        str(install.include),
        (install.include / "ucp/api/ucp_version.h").read_text() if install.include else "",
        sys.version,
        cffi.__version__,
        platform.machine(),
        sysconfig.get_config_var("EXT_SUFFIX") or "",
    ):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def module_path(install: UcxInstall) -> Path:
    key = build_key(install)
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return cache_root() / key / f"{MODULE_PREFIX}{key}{suffix}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _make_ffi(install: UcxInstall, module_name: str) -> cffi.FFI:
    assert install.include is not None
    ffibuilder = cffi.FFI()
    ffibuilder.cdef(_cdef.api_cdef())
    libdir = str(install.libdir)
    ffibuilder.set_source(
        module_name,
        _SOURCE,
        include_dirs=[str(install.include)],
        # Link against the exact files (a runtime-only install has no libucp.so dev symlink),
        # and record their directory as rpath so the module loads without LD_LIBRARY_PATH.
        extra_link_args=[
            f"-L{libdir}",
            f"-l:{install.libucp.name}",
            "-l:libucs.so.0",
            f"-Wl,-rpath,{libdir}",
        ],
        extra_compile_args=_COMPILE_ARGS,
    )
    return ffibuilder


def build(install: UcxInstall | None = None, *, force: bool = False, verbose: bool = False) -> Path:
    """Compile the API-mode module for ``install`` (default: `find_install()`); return its path.

    Idempotent: an existing module for the same key is reused unless ``force``.
    Raises `UcxNotFound` without headers, and cffi's `VerificationError` (compiler missing,
    declarations that do not match the headers) on a failed compile.
    """
    install = install or find_install()
    if install.include is None:
        raise UcxNotFound(f"no UCX headers for {install.libucp} (needed to compile API mode)")
    target = module_path(install)
    with _locked(target.parent.with_suffix(".lock")):
        if target.exists() and not force:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        module_name = target.name.split(".", 1)[0]
        ffibuilder = _make_ffi(install, module_name)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(ffibuilder.compile(tmpdir=tmp, verbose=verbose))
            staged = target.with_name(target.name + ".tmp")
            shutil.copy2(built, staged)
            os.replace(staged, target)  # atomic: readers see no half-written module
    return target
