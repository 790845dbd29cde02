"""The loan platform of seed 001, as a tenantflow example.

Two hundred financial institutions share one loan-approval platform; one Monday morning one of
them submits thousands of applications at once. This package is that platform, on the real
engine:

* :mod:`.workflow` — the loan-approval workflow (verify identity → pull credit →
  compliance check → optional fraud screen → human review when the risk is high → decide), with
  contracts on every boundary and a compensation that releases the credit hold;
* :mod:`.platform` — the institutions and their policies (Regional Bank, Credit
  Union, Fintech Startup, a GDPR-bound European institution, Institution X, ordinary ones), model
  endpoints in two regions, the identity service and the credit bureau as tools;
* :mod:`.reviewers` — simulated reviewers working the review queues;
* :mod:`.demo` — the Monday-morning scenario, run with and without tenant controls,
  and the report computed from what the engine recorded.

Run it with ``tenantflow demo`` or ``python -m tenantflow.examples.loan_platform`` (same options).
"""
