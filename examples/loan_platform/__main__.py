"""``python -m loan_platform [options]``: the same as ``tenantflow demo [options]``."""

from tenantflow.cli.demo import main

main()
