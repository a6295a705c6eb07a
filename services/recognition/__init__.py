"""Recognition engine: decisions at order time (not written yet; see the issue tracker)."""
