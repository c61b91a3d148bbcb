"""A machine: the builder (config to a ready VM), the device manager (buses and
devices at the platform's address map) and the vCPU manager (threads, kicks,
pause, supervision), wired by Machine."""

from .builder import InputFileError, read_file, read_kernel
from .machine import Machine, MachineStateError
from .snapshot import Snapshot, SnapshotError
from .snapshot import read as read_snapshot

__all__ = ["InputFileError", "Machine", "MachineStateError", "Snapshot", "SnapshotError", "read_file",
           "read_kernel", "read_snapshot"]
