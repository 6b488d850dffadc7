"""Error handling and recovery: classification, retries, checkpoints, events, resume."""

from dagflow.recovery.checkpoint import RECORD_SCHEMA, Checkpoint, load_done, write_records
from dagflow.recovery.events import EventLog, read_events
from dagflow.recovery.policy import ERROR_CLASSES, RetryPolicy, call_with_policy, classify
from dagflow.recovery.records import Record

__all__ = [
    "ERROR_CLASSES",
    "RECORD_SCHEMA",
    "Checkpoint",
    "EventLog",
    "Record",
    "RetryPolicy",
    "call_with_policy",
    "classify",
    "load_done",
    "read_events",
    "write_records",
]
