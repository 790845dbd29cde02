"""``tenantflow topology``: one seeded workload through each placement, measured side by side.

* :mod:`.workload`: the workload file (a scenario with a ``topology:`` section);
* :mod:`.app`: the workflow, tools and endpoints every placement's processes load;
* :mod:`.runner`: the protocol a placement implements to join the comparison;
* :mod:`.placements`: the runners (embedded, centralized; the others say why they are absent);
* :mod:`.driver`: tenants, load, faults and policy changes over the REST API;
* :mod:`.measure`: the figures, from the API's records, the executions log and ``/proc``;
* :mod:`.compare`: the phases, one placement at a time; :mod:`.report`: table, JSON, HTML;
* :mod:`.advise`: a recommended placement for a platform's profile, with its reasons.
"""
