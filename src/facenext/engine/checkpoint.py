"""Old import path of the checkpoint and atomic-write helpers, kept for modules not yet moved to the new ones.

New code imports ``facenext.checkpoint`` (save_checkpoint, load_checkpoint) and ``facenext.io`` (atomic_write,
write_json); this module goes once nothing imports it (verify.py is the last user).
"""

from ..checkpoint import load_checkpoint, save_checkpoint
from ..io import atomic_write, previous_path, write_json

__all__ = ["atomic_write", "load_checkpoint", "previous_path", "save_checkpoint", "write_json"]
