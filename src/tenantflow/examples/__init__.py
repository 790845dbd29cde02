"""Examples that ship with tenantflow: :mod:`tenantflow.examples.loan_platform` (``tenantflow
demo``, ``tenantflow serve --app tenantflow.examples.loan_platform.service:setup``)."""
