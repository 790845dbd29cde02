"""``python -m tenantflow.examples.loan_platform [options]``: ``tenantflow demo [options]``."""

from tenantflow.cli.demo import main

main()
