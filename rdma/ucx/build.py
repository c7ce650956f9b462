"""``python -m rdma.ucx.build``: compile the libucp binding now, and say what will be loaded.

Run it after ``pip install -e .`` (or in CI before the tests) so the first import does not pay for
the compile. It prints the chosen library, the mode the loader ends up in and the build path.

Options::

    --force          recompile even if a module for this key exists
    --check          skip the explicit compile; load (which compiles a missing module) and
                     report; exit 1 if no mode can load
    --print-layout   print the struct layout table for rdma/ucx/_layout.py (maintainers)
"""

from __future__ import annotations

import argparse
import json
import sys

from rdma.ucx import _binding, _build


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rdma.ucx.build", description=__doc__)
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--print-layout", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    try:
        install = _build.find_install()
    except _build.UcxNotFound as exc:
        print(f"UCX not found: {exc}", file=sys.stderr)
        return 1
    if not args.check:
        try:
            path = _build.build(install, force=args.force, verbose=args.verbose)
            print(f"module  {path}")
        except Exception as exc:  # report and let the loader decide (ABI fallback)
            print(f"build failed: {type(exc).__name__}: {exc}", file=sys.stderr)
    try:
        binding = _binding.load()
    except _binding.UcxUnavailable as exc:
        print(f"UCX unavailable: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "mode": binding.mode,
                "origin": binding.install.origin,
                "libucp": str(binding.install.libucp),
                "headers": binding.install.header_version,
                "library_version": binding.version_string,
                "module": str(binding.module_file) if binding.module_file else None,
            }
        )
    )
    if args.print_layout:
        print("LAYOUT = " + json.dumps(_binding.layout_of(binding.ffi), indent=4, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
