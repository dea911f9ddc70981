#!/usr/bin/env python3
"""Aggregate generation speed of gemma-server with 1, 2, 4, 8 concurrent streams (issue 17).

Starts build/bin/gemma-server on a checkpoint with --parallel = the largest count, warms it up,
then for each count sends that many streamed /v1/completions requests of --tokens tokens at once
(ignore_eos, distinct prompts) and reports generated tokens over the wall time from the first
request to the last [DONE], with the mean time to first token. Standard library only.

    bench/server_streams.py CHECKPOINT [--streams 1,2,4,8] [--tokens 128] [--port 8093]
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request


def stream(port, prompt, tokens, out):
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "ignore_eos": True,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                 {"Content-Type": "application/json"})
    start = time.monotonic()
    first = None
    with urllib.request.urlopen(req, timeout=3600) as r:
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            if first is None:
                first = time.monotonic() - start
            event = json.loads(line[6:])
            if event.get("usage"):
                out["usage"] = event["usage"]
    out["ttft"] = first
    out["end"] = time.monotonic()


def start_server(binary, model, port, flags):
    """gemma-server on 127.0.0.1:port, returned once it listens (its log goes on to stderr)."""
    server = subprocess.Popen([binary, model, "--port", str(port), "-q"] + flags,
                              stderr=subprocess.PIPE, text=True)
    for line in server.stderr:
        sys.stderr.write(line)
        if "listening on" in line:
            break
    threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
    return server


def load_average():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_name():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "?"


def add_server_arguments(ap):
    ap.add_argument("--server", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                      "bin", "gemma-server"))
    ap.add_argument("--extra", default="", help="more gemma-server flags")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--streams", default="1,2,4,8")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--port", type=int, default=8093)
    add_server_arguments(ap)
    a = ap.parse_args()
    counts = [int(x) for x in a.streams.split(",")]
    server = start_server(a.server, a.model, a.port,
                          ["--parallel", str(max(counts)), "--ctx-size", "1024"] + a.extra.split())
    try:
        stream(a.port, "Warm up", 8, {})
        print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; {a.tokens} tokens per stream")
        print("| streams | generated tokens | wall s | aggregate tokens/s | per stream tokens/s "
              "| mean TTFT s | load avg (1 min) before / after |")
        print("|---|---|---|---|---|---|---|")
        for n in counts:
            before = load_average()
            outs = [{} for _ in range(n)]
            threads = [threading.Thread(target=stream, args=(a.port, f"Story number {i}: once",
                                                              a.tokens, outs[i]))
                       for i in range(n)]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = max(o["end"] for o in outs) - start
            gen = sum(o["usage"]["completion_tokens"] if "usage" in o else a.tokens for o in outs)
            ttft = sum(o["ttft"] for o in outs) / n
            print(f"| {n} | {gen} | {wall:.1f} | {gen / wall:.2f} | {gen / wall / n:.2f} "
                  f"| {ttft:.2f} | {before:.1f} / {load_average():.1f} |", flush=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
