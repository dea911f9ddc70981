#!/usr/bin/env python3
"""Time to first token of a short request while long prompts are evaluated (issue 17's target:
<= 2 s with 3 long prompts). Starts build/bin/gemma-server with --parallel 4, sends 3 prompts of
a few hundred tokens at once, then after 3 s a short one; prints each request's time to first
token. Standard library only.

    bench/server_ttft.py CHECKPOINT [--port 8095] [--extra "--prompt-chunk 32"]
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request


def request(port, prompt, tokens, out):
    body = json.dumps({"prompt": prompt, "max_tokens": tokens, "ignore_eos": True,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}}).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", body,
                                 {"Content-Type": "application/json"})
    start = time.monotonic()
    with urllib.request.urlopen(req, timeout=3600) as r:
        for line in r:
            if not line.startswith(b"data: {"):
                continue
            out.setdefault("ttft", time.monotonic() - start)
            usage = json.loads(line[6:]).get("usage")
            if usage:
                out["prompt_tokens"] = usage["prompt_tokens"]
    out["total"] = time.monotonic() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--port", type=int, default=8095)
    ap.add_argument("--server", default=os.path.join(os.path.dirname(__file__), "..", "build",
                                                      "bin", "gemma-server"))
    ap.add_argument("--extra", default="", help="more gemma-server flags")
    a = ap.parse_args()
    server = subprocess.Popen([a.server, a.model, "--port", str(a.port), "--parallel", "4",
                               "--ctx-size", "2048", "-q"] + a.extra.split(),
                              stderr=subprocess.PIPE, text=True)
    try:
        for line in server.stderr:
            sys.stderr.write(line)
            if "listening on" in line:
                break
        threading.Thread(target=lambda: [None for _ in server.stderr], daemon=True).start()
        request(a.port, "Warm up", 2, {})
        longs = [{} for _ in range(3)]
        text = "the quick brown fox jumps over the lazy dog " * 12
        threads = [threading.Thread(target=request, args=(a.port, f"Chapter {i}. {text}", 4,
                                                          longs[i])) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(3)
        short = {}
        request(a.port, "Hello there", 4, short)
        for t in threads:
            t.join()
        print(f"short request ({short['prompt_tokens']} prompt tokens) beside 3 long prompts: "
              f"time to first token {short['ttft']:.2f} s")
        for o in longs:
            print(f"long prompt ({o['prompt_tokens']} tokens): time to first token "
                  f"{o['ttft']:.2f} s")
        with open("/proc/loadavg") as f:
            print("load average:", f.read().strip())
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
