"""air-run serve under client load: time to first token and decode tokens/s per request for 1
and 4 concurrent streaming clients, the same request through air-run's Python API, and the
second turn's time to first token with and without the first turn's cache reused.

    python benchmarks/serve.py BUNDLE [--tokens 64] [--requests 4] [--history 1000] [--speculate K]
                               [--llama-cpp LLAMA_DIR --gguf MODEL.gguf [--llama-slots 1]]

Starts `air-run serve` on a free loopback port and drives it with the openai client; with
--llama-cpp, llama.cpp's llama-server (benchmarks/build_llama_cpp.sh) on the GGUF gets the same
client load and second turn, side by side (its prompt cache on, --llama-slots slots). Requests
generate exactly --tokens tokens (ignore_eos). Medians; concurrency shows the queue (one
generation at a time per bundle): a waiting request's time to first token includes its wait.
"Without reuse" sends an unrelated request between the turns, so the second turn prefills the
whole conversation. The bundle needs a context of at least --history + 2 * --tokens.
"""

import argparse
import concurrent.futures
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai

from air.runtime import Bundle

TEXT = ("def read_config(path):\n    with open(path) as f:\n        return f.read()\n"
        "class Stack:\n    def __init__(self):\n        self.items = []\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def air_server(args, port: int) -> list[str]:
    command = [sys.executable, "-m", "air.runtime", "serve", args.bundle, "--port", str(port), "--queue", "16"]
    return command + (["--threads", str(args.threads)] if args.threads is not None else [])


def llama_server(args, port: int) -> list[str]:
    context = Bundle.load(args.bundle, adaptive_threads=False).max_context
    return [str(Path(args.llama_cpp) / "build/bin/llama-server"), "-m", args.gguf, "--port", str(port),
            "-t", str(args.threads or 2), "-c", str(context), "-np", str(args.llama_slots), "--no-webui"]


def start_server(command: list[str], port: int):
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return process, base
        except httpx.TransportError:
            time.sleep(0.2)
    process.terminate()
    raise SystemExit("the server did not come up")


def streamed(api, model, tokens, speculate, prompt=None, messages=None) -> dict:
    """One streamed request: time to first token, decode tokens/s after it, server stats."""
    extra = {"ignore_eos": True} | ({"air_speculate": speculate} if speculate is not None else {})
    common = dict(model=model, max_tokens=tokens, temperature=0, stream=True, extra_body=extra)
    started = time.perf_counter()
    if messages is not None:
        stream = api.chat.completions.create(messages=messages, **common)
    else:
        stream = api.completions.create(prompt=prompt, **common)
    first = None
    air = {}
    text = []
    for chunk in stream:
        content = (chunk.choices[0].delta.content if messages is not None else chunk.choices[0].text) if chunk.choices else None
        if content and first is None:
            first = time.perf_counter()
        text.append(content or "")
        air = (chunk.model_extra or {}).get("air", air)
    ended = time.perf_counter()
    # llama-server streams one token per chunk and reports no air stats (ignore_eos: all tokens come)
    generated = air["stats"]["generated_tokens"] if air else tokens
    decode = (generated - 1) / (ended - first) if generated > 1 else None
    return {"ttft": first - started, "decode": decode,
            "server_decode": air["stats"]["decode_tokens_per_second"] if air else decode, "text": "".join(text)}


def load(api, model, clients, requests, tokens, speculate):
    prompts = [f"{TEXT}# request {i}\n" for i in range(clients * requests)]
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        runs = list(pool.map(lambda p: streamed(api, model, tokens, speculate, prompt=p), prompts))
        elapsed = time.perf_counter() - started
    return runs, clients * requests * tokens / elapsed


def report(label, runs, total=None):
    ttft = statistics.median(r["ttft"] for r in runs)
    decode = statistics.median(r["decode"] for r in runs)
    server = statistics.median(r["server_decode"] for r in runs)
    extra = f", all clients {total:.1f} tok/s" if total else ""
    print(f"{label:<28} first token {ttft * 1000:8.1f} ms   decode {decode:9.1f} tok/s "
          f"(server-side {server:9.1f}){extra}")
    return decode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=4, help="requests per client")
    parser.add_argument("--history", type=int, default=1000, help="tokens of conversation before the second turn")
    parser.add_argument("--speculate", type=int, default=None, help="forced k (default: routed)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--llama-cpp", help="llama.cpp build folder (benchmarks/build_llama_cpp.sh)")
    parser.add_argument("--gguf", help="the same model as a GGUF file, for llama-server")
    parser.add_argument("--llama-slots", type=int, default=1, help="llama-server's parallel slots")
    args = parser.parse_args()
    if bool(args.llama_cpp) != bool(args.gguf):
        parser.error("--llama-cpp and --gguf go together")

    served = drive("air-run serve", air_server, args)
    direct_decode = direct(args)
    print(f"speculative speed behind the server: {served / direct_decode:.2f}x air-run's (1 client, decode tok/s)")
    if args.llama_cpp:
        peer = drive("llama-server", llama_server, args)
        print(f"air-run serve / llama-server decode, 1 client: {served / peer:.2f}x")


def drive(name: str, server_command, args) -> float:
    """The client loads and the second turn against one server; its 1-client decode tok/s."""
    port = free_port()
    process, base = start_server(server_command(args, port), port)
    try:
        api = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=600)
        model = api.models.list().data[0].id
        streamed(api, model, 8, args.speculate, prompt=TEXT)  # warm up both models
        decodes = {}
        for clients in (1, 4):
            runs, total = load(api, model, clients, args.requests, args.tokens, args.speculate)
            decodes[clients] = report(f"{name}, {clients} client(s)", runs, total)
        second_turn(api, model, args)
        return decodes[1]
    finally:
        process.terminate()
        process.wait()


def direct(args):
    """The same requests through air-run's Python API, in this process (the server is idle)."""
    bundle = Bundle.load(args.bundle, threads=args.threads)
    bundle.eos_token_ids = set()
    runs = []
    for i in range(args.requests):
        stats = bundle.generate(prompt=f"{TEXT}# request {i}\n", max_tokens=args.tokens, speculate=args.speculate).stats
        runs.append({"ttft": stats["time_to_first_token_seconds"], "decode": stats["decode_tokens_per_second"],
                     "server_decode": stats["decode_tokens_per_second"]})
    return report("air-run (Python API)", runs)


def second_turn(api, model, args):
    repeats = 1
    messages = [{"role": "user", "content": TEXT}]
    while True:  # grow the first message to about --history tokens
        probe = api.chat.completions.create(model=model, messages=messages, max_tokens=1, temperature=0)
        if probe.usage.prompt_tokens >= args.history:
            break
        repeats = max(repeats + 1, int(repeats * args.history / probe.usage.prompt_tokens) + 1)
        messages = [{"role": "user", "content": TEXT * repeats}]
    reuse, fresh = [], []
    for _ in range(3):
        first = streamed(api, model, args.tokens, args.speculate, messages=messages)
        follow = messages + [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": "Explain."}]
        reuse.append(streamed(api, model, args.tokens, args.speculate, messages=follow)["ttft"])
        streamed(api, model, 2, args.speculate, prompt="unrelated")  # overwrites the cached conversation
        fresh.append(streamed(api, model, args.tokens, args.speculate, messages=follow)["ttft"])
    r, f = statistics.median(reuse), statistics.median(fresh)
    print(f"second turn at {probe.usage.prompt_tokens} tokens of history: first token {r * 1000:.1f} ms with reuse, "
          f"{f * 1000:.1f} ms re-prefilling ({r / f:.2f}x)")


if __name__ == "__main__":
    main()
