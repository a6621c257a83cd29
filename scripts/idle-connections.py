#!/usr/bin/env python3
"""Memory a proxy keeps for each idle keep-alive client connection.

Usage: scripts/idle-connections.py PORT PID [CONNECTIONS] [COOKIE]

Opens CONNECTIONS (default 4000) connections to 127.0.0.1:PORT, sends one
GET on each (with `Cookie: COOKIE` if given), reads its response head and
keeps the connection open. Prints the resident memory of process PID
(VmRSS) before and after, and the difference per connection. Needs a file
limit above CONNECTIONS (`ulimit -n`) for this process and the proxy.
"""

import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise SystemExit(f"no VmRSS for process {pid}")


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    port, pid = int(sys.argv[1]), int(sys.argv[2])
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 4000
    cookie = f"Cookie: {sys.argv[4]}\r\n" if len(sys.argv) > 4 else ""
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{cookie}\r\n".encode()
    before = rss_kib(pid)
    connections = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port))
        connection.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = connection.recv(4096)
            if not chunk:
                raise SystemExit("the proxy closed a connection")
            head += chunk
        connections.append(connection)
    # Let the proxy finish with the last responses.
    time.sleep(1)
    after = rss_kib(pid)
    print(
        f"{count} idle connections: VmRSS {before} -> {after} KiB, "
        f"{(after - before) * 1024 / count:.0f} bytes each"
    )


if __name__ == "__main__":
    main()
