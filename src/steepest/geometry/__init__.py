"""steepest.geometry (see the issue tracker)."""
