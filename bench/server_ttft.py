#!/usr/bin/env python3
"""Time to first token of a short request while long prompts are evaluated (issue 17's target:
<= 2 s with 3 long prompts). Starts build/bin/gemma-server with --parallel 4, sends 3 prompts of
a few hundred tokens at once, then after 3 s a short one; prints each request's time to first
token. Standard library only.

    bench/server_ttft.py CHECKPOINT [--port 8095] [--extra "--prompt-chunk 32"]
"""
import argparse
import threading
import time

from server_streams import add_server_arguments, load_average, start_server, stream


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--port", type=int, default=8095)
    add_server_arguments(ap)
    a = ap.parse_args()
    server = start_server(a.server, a.model, a.port,
                          ["--parallel", "4", "--ctx-size", "2048"] + a.extra.split())
    try:
        stream(a.port, "Warm up", 2, {})
        longs = [{} for _ in range(3)]
        text = "the quick brown fox jumps over the lazy dog " * 12
        threads = [threading.Thread(target=stream, args=(a.port, f"Chapter {i}. {text}", 4,
                                                          longs[i])) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(3)
        short = {}
        stream(a.port, "Hello there", 4, short)
        for t in threads:
            t.join()
        print(f"short request ({short['usage']['prompt_tokens']} prompt tokens) beside 3 long "
              f"prompts: time to first token {short['ttft']:.2f} s")
        for o in longs:
            print(f"long prompt ({o['usage']['prompt_tokens']} tokens): time to first token "
                  f"{o['ttft']:.2f} s")
        print(f"load average (1 min): {load_average():.1f}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
