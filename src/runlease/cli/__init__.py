"""The ``runlease`` command line over the synchronous socket client. ``main`` is the
console-script entry point.

Every command returns an exit code: 0 when it worked, else the code of the error's class
(see :mod:`runlease.errors`): 2 usage, 3 invalid input, 4 not found or nothing to claim,
5 lease or session refusal, 6 server unavailable, 1 anything unexpected.

``task complete|fail|release RUN_ID --next`` finishes the run and claims the session's next
one in a single request. Its exit code is the finish's: 0 once the finish is recorded, even
when nothing could be claimed, because the finish cannot be taken back and a script must
not retry it. The JSON then says what the claim part did: ``{"run": <finished run>, "next":
<same shape as task next> | null, "no_claim": {"code", "message"} | null}``, where
``no_claim.code`` is NO_CLAIMABLE_RUN when the queue had nothing for the session (also after
``--timeout``). A refused finish exits with its own code (5 for AUTONOMY_*) and claims
nothing.

Operator commands (``task publish|approve|reject|update|delete|depend|undepend|pause|
resume|cancel``, the ``run`` and ``scheduler`` groups) act as the operator; ``task steal``
acts for the session of the token and ``task checkpoint`` does when a token is given. The
server stamps every write with origin ``cli``. ``run bulk-force-release|bulk-force-fail``
exit 0 once the request is accepted: ``items`` holds one outcome per run (``ok``, and
``code``/``message`` for a refused one), with ``ok`` and ``failed`` counts.

Layout: :mod:`~runlease.cli.commands` lists the commands and holds their functions,
:mod:`~runlease.cli.context` what they share, :mod:`~runlease.cli.fast` runs plain command
lines without loading cyclopts, :mod:`~runlease.cli.app` is the cyclopts application for
help, usage errors and the rest.
"""

from runlease.cli.launch import main, run

__all__ = ["main", "run"]
