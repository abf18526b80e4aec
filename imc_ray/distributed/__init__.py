"""The only package that imports Ray: thin actors (``actors``) and the one orchestrator (``pipeline``)."""
