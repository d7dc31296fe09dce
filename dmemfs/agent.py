"""Agents for demos: processes that live in one cgroup and drive one simulated device.

An :class:`Agent` starts ``dmemfs exec CGROUP -- python -m dmemfs.agent DEVICE``: the child
opens the device file (one DRM client) and runs each request line it reads, answering
``ok REPLY`` or ``err ERRNO-NAME`` on one line. Its charges go to its cgroup, and its buffers
live until it stops, as a real GPU job's would.
"""

from __future__ import annotations

import errno
import subprocess
import sys

from dmemfs.client import XeDevice, parse_reply


class Agent:
    """A process in cgroup directory ``cgroup`` holding a client of ``device``."""

    def __init__(self, device: str, cgroup: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dmemfs", "exec", cgroup, "--", sys.executable, "-m",
             "dmemfs.agent", device],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def request(self, line: str) -> dict[str, str]:
        """Run one request; its reply, or ``{"error": "ENOSPC"}`` when it failed."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        kind, _, rest = answer.partition(" ")
        if kind == "ok":
            return parse_reply(rest)
        if kind == "err":
            return {"error": rest}
        raise RuntimeError(f"the agent exited (status {self.proc.wait()})")

    def stop(self) -> None:
        """Close its input: it closes the device (freeing its buffers) and exits."""
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)
        if self.proc.stdout:
            self.proc.stdout.close()


def main(device: str) -> int:
    with XeDevice(device) as gpu:
        for line in sys.stdin:
            verb, *args = line.split()
            try:
                reply = gpu.ioctl(verb, **dict(a.split("=", 1) for a in args))
                print("ok", " ".join(reply.split()), flush=True)
            except OSError as e:
                print("err", errno.errorcode.get(e.errno or 0, str(e.errno)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
