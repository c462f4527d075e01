"""The control layer: publish a validated flag set to the shared store (compare-and-set,
history, rollback, kill), and guard rollouts from Prometheus (``flagwire guard``: the
step changes in ``plan``, the judgement in ``judge``, the controller in ``guard``, where
it reads and writes in ``targets``, Alertmanager's webhook in ``alerts``). It imports the
engine, the sources and the analysis, never a web adapter."""
