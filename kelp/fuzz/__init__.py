"""``kelp.fuzz``: a structure-aware fuzzer of kelp's Kafka port.

``python -m kelp.fuzz`` (``just fuzz``) captures a seed corpus of real request frames (every
API and version kelp serves: real clients through a recording proxy, kio's encoder for the
rest), mutates them where decoders are most trusting (counts, lengths, varints, tagged fields,
record batches with the CRC re-signed), sends them to a live stack over many connections, and
then checks that kelp survived intact (``verdict``). Modules, in the order a run uses them:

- ``stack``: a private broker + gateway on free ports, always stopped;
- ``proxy``, ``capture``, ``synth``, ``corpus``: the seed corpus;
- ``layout``, ``batches``, ``mutate``: where the lengths sit, and how to break them;
- ``runner``: many connections, pipelined, bounded in frames and time;
- ``verdict``: processes, a real client round trip, RSS, logs, every stored batch;
- ``triage``: which saved frame killed a process or caused a Traceback.
"""
