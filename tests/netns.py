"""A private network (and mount) namespace for tests that need interfaces,
sysctls or an /etc/hosts of their own: `unshare --net --mount` as root (or
with CAP_SYS_ADMIN), held open by a process inside it; commands run in it
through `nsenter`. Nothing done inside reaches the machine's own network.
"""

from __future__ import annotations

import os
import shutil
import subprocess

# How long the setup and each command may take, in seconds.
TIMEOUT = 60


class Netns:
    """Run ``setup`` (shell commands, after `ip link set lo up`) in a new
    namespace; ``why_not`` says why there is none (then skip, saying so)."""

    def __init__(self, setup: str = "true") -> None:
        self.holder: subprocess.Popen | None = None
        self.why_not = ""
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            self.why_not = "unshare/nsenter (util-linux) are not installed"
            return
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
        script = f"set -e; ip link set lo up; {setup}; echo up; exec cat"
        holder = subprocess.Popen(
            ["unshare", "--net", "--mount", "--", "sh", "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        if holder.stdout.readline() == b"up\n":  # type: ignore[union-attr]
            self.holder = holder
            return
        holder.kill()
        _, err = holder.communicate(timeout=TIMEOUT)
        self.why_not = f"no network namespace: {err.decode(errors='replace').strip()}"

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        """argv run inside the namespace, to its end (bounded by TIMEOUT)."""
        assert self.holder is not None, self.why_not
        ns = f"/proc/{self.holder.pid}/ns"
        return subprocess.run(
            ["nsenter", f"--net={ns}/net", f"--mount={ns}/mnt", "--", *argv],
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )

    def close(self) -> None:
        if self.holder is not None:
            self.holder.stdin.close()  # type: ignore[union-attr]
            self.holder.wait(TIMEOUT)
            self.holder.stdout.close()  # type: ignore[union-attr]
            self.holder.stderr.close()  # type: ignore[union-attr]
            self.holder = None
