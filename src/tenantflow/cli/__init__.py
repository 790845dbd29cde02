"""The ``tenantflow`` command line: thin commands that parse, build Settings and call the engine.

The entry point is :func:`tenantflow.cli.main.main`; each command group (``runs``, ``db``, …) is
its own module with its own typer app, mounted on the root app in :mod:`tenantflow.cli.main`.
This package does not import them itself, so that ``python -m tenantflow.cli.main`` runs cleanly.
"""
