"""``runlease completion SHELL``: the shell completion script, printed for the user to load.

The script is cyclopts' own, generated from the same application that parses command lines,
so it offers every command and flag without a second list to keep in step. (``runlease
--install-completion`` writes it where the shell looks and hooks it into the shell's startup
file.)
"""

from __future__ import annotations

import sys
from typing import Annotated, Literal

from runlease.cli.params import Param


def completion(
    shell: Annotated[Literal["bash", "zsh", "fish"], Param(help="The shell to complete for.")],
    /,
) -> int:
    """Print the completion script for bash, zsh or fish.

    Load it for this shell with eval "$(runlease completion bash)", or save it where your
    shell reads completions (runlease --install-completion does that for you).
    """
    # Generating the script needs the cyclopts application, which only this command loads.
    from runlease.cli.app import app

    sys.stdout.write(app.generate_completion(prog_name="runlease", shell=shell))
    return 0
