"""Free TCP ports on loopback for the services and agents a test starts.

A port the kernel hands out for port 0 comes from the ephemeral range, the same range every
outgoing connection on the machine draws its local port from: between the moment a test
picks it and the moment its agent listens on it, any client socket (an agent's link to the
broker, a driver's connection to PostgreSQL) may take it.  Ports are therefore picked below
the ephemeral range, where only listeners live, and never twice in one process.
"""

import random
import socket
import sys

_given = set()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _candidates():
    lo, hi = _ephemeral_range()
    if lo - 10000 >= 2000:
        return range(10000, lo)
    return range(hi + 1, 65536)


def _bindable(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    """A loopback TCP port nothing listens on and this process has not handed out."""
    cands = _candidates()
    for _ in range(1000):
        port = random.choice(cands)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    raise RuntimeError("no free port in %d-%d" % (cands[0], cands[-1]))


def free_block(n):
    """The first of @n consecutive free ports, for a service that picks its own port in a
    range when it needs one (libvirt's migration ports): above the ephemeral range when
    there is room, so that neither a client socket nor a port of free_port() is in it."""
    lo, hi = _ephemeral_range()
    first, last = (hi + 1, 65536 - n) if 65536 - (hi + 1) >= 4 * n else (10000, lo - n)
    for _ in range(1000):
        base = random.randrange(first, last + 1)
        block = range(base, base + n)
        if not _given.intersection(block) and all(_bindable(p) for p in block):
            _given.update(block)
            return base
    raise RuntimeError("no %d free ports in a row in %d-%d" % (n, first, last + n - 1))


if __name__ == "__main__":
    if sys.argv[1] == "--block":
        print(free_block(int(sys.argv[2])))
    else:
        print("\n".join(str(free_port()) for _ in range(int(sys.argv[1]))))
