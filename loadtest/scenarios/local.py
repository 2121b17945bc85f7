"""What the Python scenarios (and benches/callgrind.py) share: a free
loopback port, waiting for a condition with a bound instead of sleeping, and
a process's CPU time by the scheduler's clock."""
import glob
import socket
import time


def free_port():
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, condition, timeout=20):
    """Polls `condition` every 50 ms (an OSError counts as not yet) until it
    holds; exits naming `what` after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if condition():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def cpu_ns(pid):
    """Time the process's threads have run, by the scheduler's clock."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended between the listing and the read
    return total
