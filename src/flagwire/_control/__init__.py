"""The control layer: publish a validated flag set to the shared store (compare-and-set,
history, rollback, kill). It imports the engine and the sources, never a web adapter."""
