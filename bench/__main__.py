"""``python -m bench [NAME ...]`` (``just bench``): run benchmarks, print a table of ratios.

Names: ``produce`` (librdkafka through gateway and broker vs a raw two-hop trio pipe),
``consume`` (only the consume row of ``produce``, read twice from one produced topic),
``transactions`` (transactional produce vs idempotent produce on the same cluster),
``cluster`` (produce throughput, CPU and ack latency with RF=3 on three brokers vs RF=1 on one),
``storage`` (the log engine vs plain file IO), ``registry`` (Schema Registry register and
lookup latency vs the same server's /health round trip), ``rdma`` (sidecar reads over UCX, the
sidecar API and the HTTP fallback vs local pread), ``mount`` (dd and random 4 KiB reads through
``kelp mount`` vs the sidecar's raw reads and the local file), ``latency`` (ack and end-to-end
p50/p99/p99.9 at fixed rates vs the raw two-hop round trip). No name runs them all. Ratios are
always kelp's speed over the baseline's: 1.0 means as fast as the raw path.
"""

from __future__ import annotations

import argparse

from bench import cluster, latency, mount, produce, rdma, registry, storage, transactions

BENCHMARKS = {
    "produce": lambda args: produce.run(records=args.records, record_bytes=args.record_bytes),
    "consume": lambda args: produce.run_consume(records=args.records,
                                                record_bytes=args.record_bytes),
    "transactions": lambda args: transactions.run(records=args.records,
                                                  record_bytes=args.record_bytes),
    "cluster": lambda args: cluster.run(records=args.records, record_bytes=args.record_bytes),
    "storage": lambda args: storage.run(total_mb=args.storage_mb),
    "registry": lambda args: registry.run(count=args.registry_requests),
    "rdma": lambda args: rdma.run(),
    "mount": lambda args: mount.run(),
    "latency": lambda args: latency.run(),
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    parser.add_argument("--records", type=int, default=200_000,
                        help="records per produce run (default: 200000)")
    parser.add_argument("--record-bytes", type=int, default=1024)
    parser.add_argument("--storage-mb", type=int, default=256)
    parser.add_argument("--registry-requests", type=int, default=500,
                        help="requests per registry operation (default: 500)")
    args = parser.parse_args()
    unknown = set(args.names) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    rows = []
    # consume is a shortcut for a row produce prints anyway: not part of the default run.
    for name in args.names or [n for n in BENCHMARKS if n != "consume"]:
        rows += BENCHMARKS[name](args)
    print()
    print(f"{'benchmark':40} {'kelp':>26} {'raw baseline':>14} {'kelp/raw':>9}")
    for name, kelp_figure, raw_figure, ratio in rows:
        print(f"{name:40} {kelp_figure:>26} {raw_figure:>14} {ratio:>8.2f}x")


if __name__ == "__main__":
    main()
