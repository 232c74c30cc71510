"""air-run serve as a client sees it: a subprocess on loopback driven by the official openai
client (plain, streamed, concurrent, a dropped stream, a full queue, bad requests)."""

import concurrent.futures
import contextlib
import json
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
import transformers

WAIT = 180  # seconds a server may take to load a bundle on a loaded machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(bundle, *args):
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "air.runtime", "serve", str(bundle), "--port", str(port), *args],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        while True:
            assert process.poll() is None, process.stderr.read()
            try:
                if httpx.get(f"{base}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def client(base) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)


def health(base) -> dict:
    return httpx.get(f"{base}/health", timeout=10).json()


def air_run(bundle, *args) -> dict:
    result = subprocess.run(["air-run", str(bundle), "--json", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def server(pair):
    with serving(pair["bundle"]) as base:
        yield base


@pytest.fixture(scope="module")
def windowed_server(windowed_chat):
    with serving(windowed_chat, "--queue", "0") as base:
        yield base


def streamed_chat(api, **request) -> tuple[str, list]:
    chunks = list(api.chat.completions.create(stream=True, **request))
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks


def test_models_and_health(server):
    api = client(server)
    assert [m.id for m in api.models.list().data] == ["bundle"]
    assert health(server)["status"] == "ok"


def test_chat_plain_streamed_and_air_run_agree(server, pair):
    api = client(server)
    messages = [{"role": "system", "content": "Answer in code."}, {"role": "user", "content": "def fibonacci(n):"}]
    request = dict(model="bundle", messages=messages, max_tokens=12, temperature=0, extra_body={"air_speculate": 0})
    plain = api.chat.completions.create(**request)
    text, chunks = streamed_chat(api, stream_options={"include_usage": True}, **request)
    assert text == plain.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == plain.choices[0].finish_reason
    ids = transformers.AutoTokenizer.from_pretrained(pair["target"]).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    reference = air_run(pair["bundle"], "--prompt-ids", ",".join(map(str, ids)), "--max-tokens", "12", "--speculate", "0")
    assert plain.choices[0].message.content == reference["text"]
    assert plain.usage.prompt_tokens == len(ids) and plain.usage.completion_tokens == len(reference["tokens"])
    assert plain.model_extra["air"]["route"] == {"path": "forced", "k": 0}


def test_completions_route_speculate_and_stop(server, pair):
    api = client(server)
    request = dict(model="bundle", prompt="def read_config(path):", max_tokens=16, temperature=0)
    routed = api.completions.create(**request)
    assert routed.model_extra["air"]["route"]["key"]  # the routing-table row that served it
    speculative = api.completions.create(**request, extra_body={"air_speculate": 3})
    assert speculative.model_extra["air"]["stats"]["speculate"] == 3
    streamed = "".join(c.choices[0].text for c in api.completions.create(stream=True, **request))
    reference = air_run(pair["bundle"], "--prompt", "def read_config(path):", "--max-tokens", "16")["text"]
    assert routed.choices[0].text == speculative.choices[0].text == streamed == reference
    stop = reference[5:8]
    cut = api.completions.create(**request, stop=[stop])
    assert cut.choices[0].text == reference[:reference.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_a_follow_up_request_reuses_the_prefix(server):
    api = client(server)
    messages = [{"role": "user", "content": "import os"}]
    first = api.chat.completions.create(model="bundle", messages=messages, max_tokens=8, temperature=0)
    messages += [{"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "more"}]
    second = api.chat.completions.create(model="bundle", messages=messages, max_tokens=8, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1


def test_concurrent_clients_get_the_answers_they_would_get_alone(server):
    api = client(server)
    prompts = ["def fibonacci(n):", "class Stack:", "import sys", "for i in range(10):"]
    alone = [api.completions.create(model="bundle", prompt=p, max_tokens=12, temperature=0).choices[0].text for p in prompts]

    def ask(i):
        if i % 2:
            return "".join(c.choices[0].text for c in api.completions.create(
                model="bundle", prompt=prompts[i], max_tokens=12, temperature=0, stream=True))
        return api.completions.create(model="bundle", prompt=prompts[i], max_tokens=12, temperature=0).choices[0].text

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(ask, range(4), timeout=300))
    assert together == alone


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"model": "bundle", "prompt": "hi", "max_tokens": "ten"}).encode(), 400, "'max_tokens'"),
    (json.dumps({"model": "bundle", "prompt": "hi", "temperature": True}).encode(), 400, "'temperature'"),
    (json.dumps({"model": "bundle", "prompt": "hi", "n": 2}).encode(), 400, "'n' is 2"),
    (json.dumps({"model": "other", "prompt": "hi"}).encode(), 400, "model 'other'"),
    (json.dumps({"model": "bundle", "prompt": [[1], [2]]}).encode(), 400, "'prompt'"),
    (json.dumps({"model": "bundle", "prompt": [5] * 300}).encode(), 400, "prompt has 300 tokens; the bundle's context is 128"),
    (json.dumps({"model": "bundle", "prompt": [99999]}).encode(), 400, "outside the vocabulary"),
])
def test_bad_requests_get_openai_error_bodies(server, body, status, needle):
    response = httpx.post(f"{server}/v1/completions", content=body, timeout=30)
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"] and error["type"] == "invalid_request_error"
    assert health(server)["status"] == "ok"


def test_an_oversized_body_is_refused_unread(server):
    response = httpx.post(f"{server}/v1/completions", content=b"x" * (17 * 2**20), timeout=60)
    assert response.status_code == 413 and "more than" in response.json()["error"]["message"]


def test_bad_chat_fields_and_unknown_paths(server):
    api = client(server)
    with pytest.raises(openai.BadRequestError, match="messages"):
        api.chat.completions.create(model="bundle", messages=[{"role": "robot", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="model 'gpt-4o'"):
        api.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="'n' is 3"):
        api.chat.completions.create(model="bundle", messages=[{"role": "user", "content": "hi"}], n=3)
    response = httpx.get(f"{server}/v2/nothing", timeout=10)
    assert response.status_code == 404 and "error" in response.json()


def wait_for(base, condition, what):
    deadline = time.monotonic() + 60
    while not condition(health(base)):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def long_stream(api):
    return api.completions.create(model="bundle", prompt="def fibonacci(n):", max_tokens=10**6, temperature=0,
                                  stream=True, extra_body={"ignore_eos": True})


def test_a_dropped_stream_frees_the_engine_and_a_full_queue_answers_429(windowed_server):
    api = client(windowed_server)
    stream = long_stream(api)
    received = [next(iter(stream)) for _ in range(3)]
    assert len(received) == 3 and health(windowed_server)["generating"]
    with pytest.raises(openai.RateLimitError) as refused:  # --queue 0: nobody may wait
        api.completions.create(model="bundle", prompt="hi", max_tokens=4)
    assert refused.value.body["code"] == "queue_full"
    stream.close()  # the client goes away mid-stream
    wait_for(windowed_server, lambda h: not h["generating"] and h["cancelled"] == 1, "the generation was not cancelled")
    after = api.completions.create(model="bundle", prompt="hi", max_tokens=4, extra_body={"ignore_eos": True})
    assert after.usage.completion_tokens == 4
    assert health(windowed_server)["rejected"] == 1


def test_a_dropped_plain_request_is_cancelled_at_once(windowed_server):
    """A plain request whose client goes away stops at its next round (the windowed cache would
    let it run for ever) and the next request is served at once (--queue 0: none may wait)."""
    before = health(windowed_server)
    body = json.dumps({"model": "bundle", "prompt": "def fibonacci(n):", "max_tokens": 10**6, "temperature": 0,
                       "ignore_eos": True}).encode()
    host, port = windowed_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(body), body))
        wait_for(windowed_server, lambda h: h["generating"], "the plain request did not start")
    wait_for(windowed_server, lambda h: not h["generating"] and h["cancelled"] == before["cancelled"] + 1,
             "the dropped plain request was not cancelled")
    after = client(windowed_server).completions.create(model="bundle", prompt="hi", max_tokens=4,
                                                       extra_body={"ignore_eos": True})
    assert after.usage.completion_tokens == 4
    assert health(windowed_server)["served"] == before["served"] + 1
