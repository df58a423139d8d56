"""The actors: the scheduler, the task actors and the lease clock, and what they share.

Each actor drives the one pure :class:`~runlease.core.machine.Machine`; what the actors add
is who handles which message, in what order, and when replies are released.

- ``scheduler``: claims and session commands, drained from one mailbox in batches, and the
  queue of claimers waiting for work.
- ``task_turn``: the virtual task actors, which apply run-scoped commands.
- ``lease_clock``: sleeps until the earliest lease or session deadline and sends the expiry.
- ``apply``: the step every actor takes for a command (apply it, hand the outcome on).
- ``system``: builds the three and routes each request to the actor that owns it.
- ``requests``, ``commit``, ``clock``: a request in flight, where applied commands go before
  their replies are released, and the runtime's clock.

trio is allowed here; the rules themselves stay in ``core/``, which has no trio and no IO.
"""
