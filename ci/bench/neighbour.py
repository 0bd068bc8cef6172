"""Load for ci/bench/noisy_neighbour.sh (standard library only).

  neighbour.py quiet PORT TENANT SECONDS RATE   a quiet tenant: GET /api/notes at RATE
      requests/s for SECONDS on one keep-alive connection; prints "p50_ms p99_ms
      non_2xx requests". Latency counts from when each request was due, so a request
      held up also delays the next ones' count (no coordinated omission).
  neighbour.py trickle PORT TENANT SOCKETS SECONDS   SOCKETS clients that each announce a
      100 kB note for TENANT and send one byte a second, for SECONDS; prints how many were
      answered, and with which statuses.
"""

import http.client
import socket
import sys
import threading
import time


def quiet(port, tenant, seconds, rate):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies, bad = [], 0
    start = time.monotonic()
    n = int(seconds * rate)
    for i in range(n):
        due = start + i / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        try:
            conn.request("GET", "/api/notes?limit=20", headers={"X-Tenant-ID": tenant})
            response = conn.getresponse()
            response.read()
            if not 200 <= response.status < 300:
                bad += 1
        except (OSError, http.client.HTTPException):
            bad += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        latencies.append((time.monotonic() - due) * 1000)
    latencies.sort()
    p50 = latencies[len(latencies) // 2]
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"{p50:.1f} {p99:.1f} {bad} {n}")


def trickle(port, tenant, sockets, seconds):
    answers = []
    lock = threading.Lock()

    def client():
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=seconds + 30)
            s.sendall(
                (
                    "POST /api/notes HTTP/1.1\r\nHost: localhost\r\n"
                    f"X-Tenant-ID: {tenant}\r\nContent-Type: application/json\r\n"
                    "Content-Length: 100000\r\n\r\n" + '{"title": "'
                ).encode()
            )
            s.settimeout(1)
            end = time.monotonic() + seconds
            answer = b""
            while time.monotonic() < end:
                try:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                    break
                except socket.timeout:
                    s.sendall(b"a")
            s.close()
            with lock:
                answers.append(answer.split(b"\r\n", 1)[0].decode() or "none")
        except OSError as error:
            with lock:
                answers.append(f"error {error.__class__.__name__}")

    threads = [threading.Thread(target=client) for _ in range(sockets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = {}
    for a in answers:
        statuses[a] = statuses.get(a, 0) + 1
    print("; ".join(f"{k}: {v}" for k, v in sorted(statuses.items())))


if __name__ == "__main__":
    kind, port = sys.argv[1], int(sys.argv[2])
    if kind == "quiet":
        quiet(port, sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
    else:
        trickle(port, sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
