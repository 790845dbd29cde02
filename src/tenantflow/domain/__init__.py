"""Pure domain logic: specs, run state machine, state versions, policy, budgets, scheduling.

Nothing here does I/O, uses asyncio or reads a clock: time always comes in as an argument
(``now_s``, seconds since the epoch as a float). Imports point only at :mod:`tenantflow.errors`.
"""
