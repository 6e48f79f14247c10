"""steepest.distributed (see the issue tracker)."""
