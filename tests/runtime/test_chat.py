"""Chat: templates from the bundle in jinja2's sandbox, sessions reusing the cache across turns,
and air-run chat through a pipe and through a pseudo-terminal."""

import json
import os
import shutil
import subprocess
import sys

import pexpect
import pytest
import transformers

from air.errors import AirError
from air.runtime import Bundle
from air.runtime.chat import Conversation
from air.runtime.chat_template import FALLBACK_TEMPLATE, ChatTemplate
from air.runtime.manifest import file_record, read_manifest, write_manifest
from air.runtime.session import Session
from helpers import own_stderr

MESSAGES = [{"role": "system", "content": "Answer in code."}, {"role": "user", "content": "def fibonacci(n):"}]


def chat_ids(checkpoint, messages) -> list[int]:
    """The prompt transformers makes of a conversation: an independent reference."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(checkpoint)
    return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def air_run_tokens(bundle, ids, *args) -> list[int]:
    result = subprocess.run(["air-run", str(bundle), "--prompt-ids", ",".join(map(str, ids)), "--json", *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["tokens"]


def chat_json(bundle, lines, *args) -> list[dict]:
    result = subprocess.run(["air-run", "chat", str(bundle), "--json", *args], input="".join(f"{l}\n" for l in lines),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def with_template(pair, tmp_path, source):
    """A copy of the pair's bundle whose chat template is `source` (None: without a template)."""
    copy = tmp_path / "bundle"
    shutil.copytree(pair["bundle"], copy)
    manifest = read_manifest(copy)
    if source is None:
        (copy / manifest["tokenizer"].pop("chat_template")).unlink()
        del manifest["files"]["chat_template.jinja"]
    else:
        (copy / "chat_template.jinja").write_text(source)
        manifest["files"]["chat_template.jinja"] = file_record(copy, "chat_template.jinja")
    write_manifest(copy, manifest)
    return copy


def test_the_bundle_carries_the_template_and_renders_it_as_transformers_does(pair):
    manifest = read_manifest(pair["bundle"])
    assert manifest["tokenizer"]["chat_template"] == "chat_template.jinja"
    assert "chat_template.jinja" in manifest["files"]
    inspected = subprocess.run(["air-build", "inspect", str(pair["bundle"])], capture_output=True, text=True, timeout=60)
    assert "chat template: chat_template.jinja" in inspected.stdout
    bundle = Bundle.load(pair["bundle"])
    template = ChatTemplate.from_bundle(bundle.root, bundle.manifest)
    try:
        text = template.render(MESSAGES)
    finally:
        template.close()
    reference = transformers.AutoTokenizer.from_pretrained(pair["target"])
    assert text == reference.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)


HOSTILE = {
    "subclasses": "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "globals": "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "mutation": "{{ messages.append(1) }}",
    "forever": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "memory": "{{ 'x' * 4000000000 }}",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_template_reaching_outside_the_sandbox_is_refused(name, tmp_path):
    marker = tmp_path / "pwned"
    template = ChatTemplate(HOSTILE[name].replace("MARKER", str(marker)))
    try:
        with pytest.raises(AirError, match="chat template refused"):
            template.render(MESSAGES)
        assert ChatTemplate(FALLBACK_TEMPLATE).render(MESSAGES)  # the process rendering goes on
    finally:
        template.close()
    assert not marker.exists()


def test_air_run_chat_refuses_a_hostile_bundle_template_in_one_line(pair, tmp_path):
    marker = tmp_path / "pwned"
    bundle = with_template(pair, tmp_path, HOSTILE["globals"].replace("MARKER", str(marker)))
    result = subprocess.run(["air-run", "chat", str(bundle)], input="hello\n", capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = own_stderr(result.stderr)
    assert len(lines) == 1 and lines[0].startswith("air-run: error: chat template refused"), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not marker.exists()


def test_a_bundle_without_a_template_chats_with_the_plain_fallback(pair, tmp_path):
    bundle = Bundle.load(with_template(pair, tmp_path, None))
    chat = Conversation(bundle, system="Answer in code.")
    try:
        assert chat.template.render(chat.system + [{"role": "user", "content": "hi"}]) == \
            "System: Answer in code.\n\nUser: hi\n\nAssistant:"
        turn = chat.ask("hi", max_tokens=8)
        assert "\nUser:" not in turn.result.text
    finally:
        chat.template.close()


@pytest.mark.parametrize("k", [0, 3])
def test_a_session_prefills_only_what_is_new_and_answers_as_a_fresh_run(pair, k):
    bundle = Bundle.load(pair["bundle"])
    session = Session(bundle)
    first_ids = bundle.encode("def read_config(path):")
    first = session.generate(first_ids, 16, speculate=k)
    second_ids = first_ids + first.tokens + bundle.encode("\nimport os")
    second = session.generate(second_ids, 16, speculate=k)
    reused = second.stats["reused_tokens"]
    assert reused >= len(first_ids) and second.stats["prefilled_tokens"] == len(second_ids) - reused
    fresh = Bundle.load(pair["bundle"]).generate(prompt_ids=second_ids, max_tokens=16, speculate=k)
    assert second.tokens == fresh.tokens and fresh.stats["reused_tokens"] == 0

    Session(bundle).generate(bundle.encode("class Stack:"), 8, speculate=k)  # another session takes the caches
    again = session.generate(second_ids, 16, speculate=k)
    assert again.stats["reused_tokens"] == 0 and again.tokens == fresh.tokens


def test_chat_through_a_pipe_reuses_turns_and_matches_air_run(pair):
    turns = chat_json(pair["bundle"], ["def fibonacci(n):", "/stats", "import os"], "--max-tokens", "10",
                      "--speculate", "0", "--system", "Answer in code.")
    assert [t["turn"] for t in turns] == [1, 2]
    first, second = turns
    history = [{"role": "system", "content": "Answer in code."}, {"role": "user", "content": "def fibonacci(n):"}]
    assert first["tokens"] == air_run_tokens(pair["bundle"], chat_ids(pair["target"], history), "--max-tokens", "10",
                                             "--speculate", "0")
    assert first["stats"]["reused_tokens"] == 0
    history += [{"role": "assistant", "content": first["text"]}, {"role": "user", "content": "import os"}]
    second_ids = chat_ids(pair["target"], history)
    assert second["stats"]["prompt_tokens"] == len(second_ids)
    assert second["stats"]["reused_tokens"] >= first["stats"]["prompt_tokens"] - 1
    assert second["stats"]["prefilled_tokens"] == len(second_ids) - second["stats"]["reused_tokens"]
    assert second["tokens"] == air_run_tokens(pair["bundle"], second_ids, "--max-tokens", "10", "--speculate", "0")

    plain = subprocess.run(["air-run", "chat", str(pair["bundle"]), "--max-tokens", "10", "--speculate", "0",
                            "--system", "Answer in code."], input="def fibonacci(n):\nimport os\n",
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == first["text"] + "\n" + second["text"] + "\n"


def test_a_conversation_outgrowing_a_dense_context_drops_its_oldest_turns(pair):
    turns = chat_json(pair["bundle"], [f"message number {i}" for i in range(8)], "--max-tokens", "24", "--ignore-eos")
    assert len(turns) == 8
    assert any(t["dropped_turns"] for t in turns)
    assert all(t["stats"]["prompt_tokens"] + 24 <= 128 for t in turns)


def test_a_windowed_bundle_chats_past_its_context(windowed_chat):
    turns = chat_json(windowed_chat, ["hello", "more", "and more"], "--max-tokens", "100", "--ignore-eos")
    assert [t["dropped_turns"] for t in turns] == [0, 0, 0]
    assert turns[-1]["stats"]["prompt_tokens"] > 128


def test_a_windowed_session_reuses_its_ring_past_the_context(windowed_chat):
    bundle = Bundle.load(windowed_chat)
    session = Session(bundle)
    first_ids = bundle.encode("def read_config(path):")
    first = session.generate(first_ids, 200, ignore_eos=True)
    second_ids = first_ids + first.tokens + bundle.encode("\nimport os")
    second = session.generate(second_ids, 16)
    assert len(second_ids) > bundle.manifest["models"]["target"]["kv_cache"]["groups"][0]["fixed_capacity"]
    assert second.stats["reused_tokens"] == len(first_ids) + len(first.tokens) - 1
    assert second.tokens == Bundle.load(windowed_chat).generate(prompt_ids=second_ids, max_tokens=16).tokens


def test_chat_on_a_terminal(windowed_chat):
    child = pexpect.spawn(sys.executable, ["-m", "air.runtime", "chat", str(windowed_chat), "--max-tokens", "1000000",
                                           "--ignore-eos", "--speculate", "0"], encoding="utf-8", timeout=120,
                          env=dict(os.environ, TERM="dumb"))
    try:
        child.expect_exact("> ")
        child.sendline("hello there")
        child.expect(r"\S{20}")  # the answer streams in
        child.sendintr()  # Ctrl-C: stops the answer, keeps the chat
        child.expect_exact("[answer stopped]")
        child.expect_exact("> ")
        child.sendline("/stats")
        child.expect(r"turn 1: prompt \d+ tokens \(0 reused")
        child.sendline("/reset")
        child.expect_exact("[conversation reset]")
        child.sendeof()  # Ctrl-D exits
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_a_growing_cache_keeps_what_it_holds():
    import numpy as np
    import tvm

    from air.runtime.model import _grown

    values = np.random.default_rng(0).standard_normal((2, 2, 2, 4, 16)).astype("float32")
    grown = _grown(tvm.runtime.tensor(values), (2, 2, 2, 8, 16), tvm.cpu()).numpy()
    assert grown.shape == (2, 2, 2, 8, 16)
    np.testing.assert_array_equal(grown[:, :, :, :4], values)
    placeholder = tvm.runtime.tensor(np.ones((1, 1, 1, 1, 1), "float16"))
    assert _grown(placeholder, (1, 1, 1, 1, 1), tvm.cpu()) is placeholder
