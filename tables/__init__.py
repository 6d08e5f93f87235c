"""Table definitions and the pure state logic: (state, event, now) -> (state, derived events)."""
