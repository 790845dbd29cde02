"""One router per resource: admin (tenants and their keys), the caller's tenant, runs, run
events (SSE), reviews, and health."""
