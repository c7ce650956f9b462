"""Load libucp through cffi: the compiled API-mode module first, ABI mode as the fallback.

``KELP_UCX_MODE`` chooses: ``auto`` (default: API, else ABI), ``api`` or ``abi`` (no fallback).

* API mode imports the module that `rdma.ucx._build` compiled against the headers (compiling it
  on first use if it is missing — a one-off of a few seconds that needs gcc). cffi has already
  checked every struct field against the headers; here we also compare each constant.
* ABI mode ``dlopen``-s the library with declarations written by hand. Before trusting them
  it compares cffi's layout of every struct with `rdma.ucx._layout.LAYOUT`, recorded from a
  compiled build; a mismatch (another ABI, an edited declaration) refuses to load rather
  than guess.

Both modes then check the library version against `_cdef.MIN_VERSION`. The result is one
process-wide `Binding`; everything else in the package goes through it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import struct
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cffi

from rdma.ucx import _build, _cdef, _layout

log = logging.getLogger("kelp.ucx")

UINTPTR_MAX = (1 << (8 * struct.calcsize("P"))) - 1


class UcxUnavailable(RuntimeError):
    """libucp cannot be loaded here; the message says what each mode tried."""


@dataclass
class Binding:
    """The loaded library, its declarations and how it was obtained."""

    ffi: Any
    lib: Any
    mode: str  # "api" or "abi"
    install: _build.UcxInstall
    version: tuple[int, int, int]
    module_file: Path | None = None
    c: types.SimpleNamespace = field(
        default_factory=lambda: types.SimpleNamespace(**_cdef.CONSTANTS)
    )
    _keepalive: dict[str, Any] = field(default_factory=dict)

    @property
    def version_string(self) -> str:
        return ".".join(map(str, self.version))

    def callback(self, name: str, fn: Callable[..., Any]) -> Any:
        """A C function pointer for callback ``name`` (see `_cdef.CALLBACKS`) that runs ``fn``.

        UCX calls these from inside ``ucp_worker_progress``, i.e. from whichever trio task is
        progressing. An exception cannot propagate through C, so it is logged and the C caller
        gets a zero return (``UCS_OK``).
        """
        if self.mode == "api":
            self.ffi.def_extern(name=name, onerror=_log_callback_error)(fn)
            return getattr(self.lib, name)
        ptr = self.ffi.callback(_cdef.CALLBACKS[name], fn, onerror=_log_callback_error)
        self._keepalive[name] = ptr  # a freed callback would be a dangling pointer in UCX
        return ptr

    def capture(self, fn: Callable[[Any], None]) -> str:
        """Run ``fn(FILE *)`` against an in-memory stream and return what it printed."""
        ffi, lib = self.ffi, self.lib
        buf = ffi.new("char **")
        size = ffi.new("size_t *")
        stream = lib.open_memstream(buf, size)
        if stream == ffi.NULL:
            raise OSError("open_memstream failed")
        try:
            fn(stream)
        finally:
            lib.fclose(stream)
        try:
            return bytes(ffi.buffer(buf[0], size[0])).decode(errors="replace")
        finally:
            lib.free(buf[0])


def _log_callback_error(exc_type: type, exc: BaseException, tb: Any) -> None:
    log.error("exception in a UCX callback", exc_info=(exc_type, exc, tb))


def layout_of(ffi: Any) -> dict[str, dict[str, Any]]:
    """``{type: {size, align, fields: {name: offset}}}`` for the structs in `CHECKED_STRUCTS`."""
    table: dict[str, dict[str, Any]] = {}
    for name in _cdef.CHECKED_STRUCTS:
        ctype = ffi.typeof(name)
        fields = {}
        if ctype.kind in ("struct", "union") and ctype.fields:
            fields = {fname: f.offset for fname, f in ctype.fields}
        table[name] = {"size": ffi.sizeof(ctype), "align": ffi.alignof(ctype), "fields": fields}
    return table


def _check_layout(ffi: Any) -> None:
    if sys.platform != "linux" or struct.calcsize("P") != 8:
        raise UcxUnavailable("ABI mode knows only the Linux LP64 layout; compile API mode")
    actual = layout_of(ffi)
    for name, want in _layout.LAYOUT.items():
        have = actual[name]
        problems = [k for k in ("size", "align") if have[k] != want[k]]
        problems += [
            f"{fname}@{off}!={have['fields'].get(fname)}"
            for fname, off in want["fields"].items()
            if have["fields"].get(fname) != off
        ]
        if problems:
            raise UcxUnavailable(f"ABI layout of {name} differs from the headers: {problems}")


def _library_version(lib: Any, ffi: Any) -> tuple[int, int, int]:
    parts = ffi.new("unsigned[3]")
    lib.ucp_get_version(parts + 0, parts + 1, parts + 2)
    version = (parts[0], parts[1], parts[2])
    if version[0] != _cdef.MIN_VERSION[0] or version[:2] < _cdef.MIN_VERSION:
        raise UcxUnavailable(
            f"libucp {'.'.join(map(str, version))} is older than the supported "
            f"{'.'.join(map(str, _cdef.MIN_VERSION))}"
        )
    return version


def _load_api(install: _build.UcxInstall) -> Binding:
    path = _build.build(install)  # reuses the cached module; compiles only the first time
    name = path.name.split(".", 1)[0]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ffi, lib = module.ffi, module.lib
    wrong = {k: getattr(lib, k) for k, v in _cdef.CONSTANTS.items() if getattr(lib, k) != v}
    if wrong:
        raise UcxUnavailable(f"constants differ from the headers: {wrong}")
    return Binding(ffi, lib, "api", install, _library_version(lib, ffi), module_file=path)


def _load_abi(install: _build.UcxInstall) -> Binding:
    ffi = cffi.FFI()
    ffi.cdef(_cdef.abi_cdef())
    _check_layout(ffi)
    lib = ffi.dlopen(str(install.libucp))
    return Binding(ffi, lib, "abi", install, _library_version(lib, ffi))


_lock = threading.Lock()
_loaded: Binding | None = None


def load() -> Binding:
    """The process-wide binding, loading it on first call (see module docstring)."""
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        mode = os.environ.get("KELP_UCX_MODE", "auto").strip() or "auto"
        if mode not in ("auto", "api", "abi"):
            raise UcxUnavailable(f"KELP_UCX_MODE={mode!r}: expected auto, api or abi")
        try:
            install = _build.find_install()
        except _build.UcxNotFound as exc:
            raise UcxUnavailable(str(exc)) from exc
        failures: list[str] = []
        loaders = {"api": _load_api, "abi": _load_abi}
        for candidate in ("api", "abi") if mode == "auto" else (mode,):
            try:
                _loaded = loaders[candidate](install)
            except Exception as exc:
                failures.append(f"{candidate}: {type(exc).__name__}: {exc}")
                if mode == "auto" and candidate == "api":
                    log.warning("UCX API mode unavailable, trying ABI mode: %s", exc)
                continue
            log.debug("libucp %s loaded in %s mode", _loaded.version_string, candidate)
            return _loaded
        raise UcxUnavailable(f"cannot load libucp from {install.libucp}: " + "; ".join(failures))
