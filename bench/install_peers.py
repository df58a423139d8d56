"""Install the peers the contention benchmark compares with, where this machine allows.

``make bench`` runs this first. beanstalkd comes from the Debian package of that name: if
it is missing and we are root on a system with apt-get, it is installed (after an
``apt-get update`` if the first attempt fails); otherwise a note says its rows will be
skipped. Never fails: a missing peer is a skipped row, not a broken benchmark.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys


def _apt_get(*args: str) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(["apt-get", *args], env=env, check=False, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"apt-get {' '.join(args)} failed: {exc}")
        return False
    return done.returncode == 0


def ensure_beanstalkd() -> bool:
    if shutil.which("beanstalkd"):
        print(f"beanstalkd: {shutil.which('beanstalkd')}")
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            "beanstalkd is not installed and cannot be installed here (needs root and "
            "apt-get): its rows will read 'skipped: beanstalkd not installed'"
        )
        return False
    print("beanstalkd is missing: apt-get install -y beanstalkd")
    if not _apt_get("install", "-y", "-q", "beanstalkd"):
        _apt_get("update", "-q")
        _apt_get("install", "-y", "-q", "beanstalkd")
    if shutil.which("beanstalkd") is None:
        print("beanstalkd could not be installed: its rows will be skipped")
        return False
    return True


def main() -> int:
    ensure_beanstalkd()
    return 0


if __name__ == "__main__":
    sys.exit(main())
