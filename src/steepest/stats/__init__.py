"""steepest.stats (see the issue tracker)."""
