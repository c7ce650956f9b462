"""A partition's storage, in Kafka's layers (``broker.log.PartitionLog`` is the front).

- ``segment`` (Kafka's ``LogSegment``): one file of record batches with its offset and time
  indexes (``index``); appends, finds (offset or time -> position), reads, and recovers itself
  (re-checks every batch, cuts a torn tail, rebuilds its indexes). Only it writes its fields.
- ``loader`` (``LogLoader``): opens a partition directory after a clean stop or a crash, with
  its checkpoints (recovery point, log start offset).
- ``cleaner`` (``LogCleaner``): compaction, in a worker thread; only the swap of a cleaned
  segment into the log happens on the event loop.
- ``producer_state`` (``ProducerStateManager``): the idempotent producers' table
  (``broker.producers``) with its snapshot, rebuilt from the log on open.
- ``search``: records by timestamp (ListOffsets), from the time indexes and batch headers.
- ``config``: a partition's settings and the limits shared by these modules.
"""
