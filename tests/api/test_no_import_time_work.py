"""Importing the app hashes no password: the dummy hash that makes a wrong
username as slow as a wrong password is made on the first login attempt."""

from __future__ import annotations

import subprocess
import sys


def test_importing_the_app_runs_no_scrypt():
    probe = (
        "import hashlib\n"
        "calls = []\n"
        "real = hashlib.scrypt\n"
        "hashlib.scrypt = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
        "import api.app, api.users.service as s\n"
        "assert not calls, 'scrypt ran at import'\n"
        "s._dummy_hash()\n"
        "s._dummy_hash()\n"
        "print(len(calls))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"  # made once, on first use
