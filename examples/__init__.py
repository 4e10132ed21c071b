"""Runnable examples of the samedge library (see examples/README.md); a package so that
``samedge run examples.own_task:make_task`` can import the task factory from the repository root."""
