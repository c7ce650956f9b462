"""``kelp topic|produce|consume|group|registry|cluster``: daily work on any kelp or Kafka
cluster, over the Kafka protocol (confluent-kafka) and the Schema Registry's REST API.

Built on click (commands, ``--help`` everywhere, shell completion: ``kelp completion bash``)
and rich (tables, progress bars). Every command takes ``--bootstrap-server`` and
``--command-config`` (librdkafka settings, one ``key=value`` per line: ``kelp up --secure``
writes ``<run dir>/secure/admin.properties``), and ``-o table|json``: tables for people, JSON
for scripts. Exit codes: 0 done, 1 the cluster (or registry) refused or failed, 2 a usage
mistake.
"""

from __future__ import annotations

from kelp.ops.app import cli, main

__all__ = ["cli", "main"]
