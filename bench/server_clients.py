#!/usr/bin/env python3
"""Many clients at once against gemma-server (issue 17's "8 clients x 20 requests, 0 errors").

Starts build/bin/gemma-server on a checkpoint, then --clients threads each send --requests chat
completions one after the other (every other one streamed; --tokens tokens at temperature 0.7,
seeds 1..requests), and checks that each came back 200 with a complete answer (a finish_reason,
and a stream's final [DONE]). Prints the errors, the wall time and the server's /metrics counters
afterwards; exits 1 when any request failed. Standard library only.

    bench/server_clients.py CHECKPOINT [--clients 8] [--requests 20] [--tokens 8] [--port 8097]
"""
import argparse
import json
import sys
import threading
import time
import urllib.request

from server_streams import add_server_arguments, cpu_name, load_average, start_server


def chat(port, client, i, tokens, streamed):
    """One chat request; returns None when it completed, else what went wrong."""
    body = json.dumps({"messages": [{"role": "user", "content": f"Client {client}, question {i}: "
                                     "tell me about the sea."}],
                       "max_tokens": tokens, "temperature": 0.7, "seed": i + 1,
                       "stream": streamed}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", body,
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            if r.status != 200:
                return f"status {r.status}"
            if not streamed:
                reply = json.loads(r.read())
                return None if reply["choices"][0].get("finish_reason") else "no finish_reason"
            finish, done = None, False
            for line in r:
                line = line.strip()
                if line == b"data: [DONE]":
                    done = True
                elif line.startswith(b"data: "):
                    for choice in json.loads(line[6:]).get("choices", []):
                        finish = choice.get("finish_reason") or finish
            return None if finish and done else f"stream ended: finish_reason {finish}, [DONE] {done}"
    except Exception as e:  # noqa: BLE001 (every failure is counted and printed)
        return repr(e)


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=60) as r:
        return [line for line in r.read().decode().splitlines()
                if line.startswith("gemma_") and not line.startswith("gemma_busy")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--port", type=int, default=8097)
    add_server_arguments(ap)
    a = ap.parse_args()
    server = start_server(a.server, a.model, a.port, ["--max-queue", "16"] + a.extra.split())
    try:
        errors = []
        lock = threading.Lock()

        def client(c):
            for i in range(a.requests):
                err = chat(a.port, c, i, a.tokens, streamed=i % 2 == 1)
                if err:
                    with lock:
                        errors.append(f"client {c} request {i}: {err}")

        print(f"CPU: {cpu_name()}; {a.clients} clients x {a.requests} requests, "
              f"{a.tokens} tokens each; load average (1 min) before {load_average():.1f}")
        threads = [threading.Thread(target=client, args=(c,)) for c in range(a.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - start
        total = a.clients * a.requests
        for e in errors:
            print(e)
        print(f"{total - len(errors)} of {total} complete, {len(errors)} errors, {wall:.1f} s; "
              f"load average after {load_average():.1f}")
        print("/metrics afterwards:")
        for line in metrics(a.port):
            print("  " + line)
        return 1 if errors else 0
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
