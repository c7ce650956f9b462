"""``python -m bench`` (``just bench``): run the benchmarks and print a summary of ratios."""

from __future__ import annotations

import argparse

from bench import produce


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--records", type=int, default=200_000,
                        help="records per produce run (default: 200000)")
    parser.add_argument("--record-bytes", type=int, default=1024)
    args = parser.parse_args()
    rows = produce.run(records=args.records, record_bytes=args.record_bytes)
    print()
    print(f"{'benchmark':40} {'kelp':>22} {'raw baseline':>22} {'ratio':>7}")
    for name, kelp_figure, raw_figure, ratio in rows:
        print(f"{name:40} {kelp_figure:>22} {raw_figure:>22} {ratio:>6.2f}x")


if __name__ == "__main__":
    main()
