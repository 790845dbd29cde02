"""The mesh placement's REST API as a process of its own, for the comparison's mesh runner.

``tenantflow mesh up`` runs the API in the process that also owns the NATS server and the
agents, so killing it would take them down with it. The comparison starts the NATS server and
the agents itself (each a component that can fail on its own) and this API beside them::

    python -m tenantflow.topology.mesh_api --db URL --nats URL --creds FILE \
        --regions us-east-1,eu-west-1 --default-region us-east-1 --port P --app M:F

It is the API ``tenantflow mesh up`` serves: :class:`~tenantflow.placement.mesh.control.
MeshControl` over the front's store, with the admin NATS user.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tenantflow.topology.mesh_api")
    parser.add_argument("--db", required=True)
    parser.add_argument("--nats", required=True)
    parser.add_argument("--creds", required=True)
    parser.add_argument("--regions", required=True)
    parser.add_argument("--default-region", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--app", action="append", default=[])
    args = parser.parse_args(argv)

    from tenantflow.adapters.nats.fabric import load_credentials
    from tenantflow.api.app import create_app
    from tenantflow.api.server import run
    from tenantflow.cli.serve import load_app
    from tenantflow.placement.centralized import open_front
    from tenantflow.placement.mesh.control import MeshControl

    regions = [r for r in args.regions.split(",") if r]
    control = MeshControl(
        open_front(args.db),
        nats_url=args.nats,
        creds=load_credentials(args.creds),
        regions=regions,
        default_region=args.default_region,
    )
    application = create_app(
        control,  # a ControlPlane by delegation
        setup=[load_app(ref) for ref in args.app],
    )
    logging.basicConfig(level=logging.WARNING)
    return 0 if run(application, host="127.0.0.1", port=args.port, log_level="warning") else 1


if __name__ == "__main__":
    sys.exit(main())
