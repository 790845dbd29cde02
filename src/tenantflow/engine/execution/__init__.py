"""The execution core: drive a run's attempts (claim, execute, decide, write, apply).

``driver`` (RunDriver) ties the rooms together: ``executor`` runs one attempt, ``outcomes``
names how it ended, :mod:`tenantflow.domain.progress` decides what follows, and ``leases``,
``saga``, ``waits`` and ``reviews`` each own one kind of follow-up. ``active`` is the in-memory
mirror of an unfinished run; ``scope`` is what the gateway sees of an attempt.
"""
