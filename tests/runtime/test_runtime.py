"""air-run as a user and a device see it: CLI, python -m, JSON, streaming, sampling, isolation."""

import json
import subprocess
import sys

import numpy as np

from helpers import RUNTIME_ONLY, cli_env

from air.cpu_features import usable_cores
from air.runtime import Bundle
from air.runtime.sampling import probabilities



def run_json(command, bundle, *args):
    result = subprocess.run([*command, str(bundle), *args, "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_runtime_works_without_the_compiler(pair):
    """Blocks air.compiler and tvm.relax and checks the compiler library never loads."""
    out, err = run_json([sys.executable, str(RUNTIME_ONLY)], pair["bundle"],
                        "--prompt", "def fibonacci(n):", "--max-tokens", "12")
    assert "tvm compiler library loaded: False" in err
    direct = Bundle.load(pair["bundle"]).generate(prompt="def fibonacci(n):", max_tokens=12)
    assert out["tokens"] == direct.tokens


def test_console_script_and_python_m_agree(pair):
    args = ("--prompt-ids", "5,6,7,8", "--max-tokens", "10", "--temperature", "0.8", "--seed", "3")
    via_script, _ = run_json(["air-run"], pair["bundle"], *args)
    via_module, _ = run_json([sys.executable, "-m", "air.runtime"], pair["bundle"], *args)
    assert via_script["tokens"] == via_module["tokens"]
    assert len(via_script["tokens"]) <= 10
    stats = via_script["stats"]
    for key in ("prefill_tokens_per_second", "decode_tokens_per_second", "time_to_first_token_seconds"):
        assert stats[key] is None or stats[key] > 0
    assert stats["prompt_tokens"] == 4


def test_streaming_prints_the_same_text(pair):
    result = subprocess.run(["air-run", str(pair["bundle"]), "--prompt", "import os", "--max-tokens", "16"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    expected = Bundle.load(pair["bundle"]).generate(prompt="import os", max_tokens=16)
    assert result.stdout.rstrip("\n") == expected.text
    assert "decode" in result.stderr and "tok/s" in result.stderr


def test_sampling_is_seeded_and_varies(pair):
    bundle = Bundle.load(pair["bundle"])
    runs = [bundle.generate(prompt_ids=[5, 6, 7], max_tokens=16, temperature=1.5, seed=s).tokens for s in (1, 1, 2)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_generation_stops_at_the_context(pair):
    bundle = Bundle.load(pair["bundle"])
    bundle.eos_token_ids = set()  # never stop early: run into the context limit
    result = bundle.generate(prompt_ids=[5] * 100, max_tokens=100)
    assert result.finish_reason == "context"
    assert 100 + len(result.tokens) == bundle.max_context + 1  # the last token needs no cache slot


def test_top_p_keeps_the_smallest_nucleus():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    kept = probabilities(logits, 1.0, 0.75)
    np.testing.assert_allclose(kept, [0.5 / 0.8, 0.3 / 0.8, 0, 0])
    np.testing.assert_allclose(probabilities(logits, 1.0, 1.0), [0.5, 0.3, 0.15, 0.05])


def test_draft_is_shipped_and_runs(pair):
    bundle = Bundle.load(pair["bundle"])
    logits = bundle.draft.prefill([5, 6, 7])
    assert logits.shape == (bundle.draft.vocab_size,)


THREAD_PROBE = """
import sys, tvm
from air.runtime import Bundle
Bundle.load(sys.argv[1], threads=int(sys.argv[2]))
print(tvm.get_global_func("runtime.NumThreads")())
"""


def test_the_thread_pool_has_the_requested_threads(pair):
    """TVM sizes its pool once (unset TVM_NUM_THREADS: half the CPUs on x86) and caps later
    requests at that size; the runtime must size it as asked, and threads=0 to one thread per
    physical core. (An earlier runtime ran on one thread whatever it was asked.)"""
    def pool_size(threads):
        result = subprocess.run([sys.executable, "-c", THREAD_PROBE, str(pair["bundle"]), str(threads)],
                                capture_output=True, text=True, timeout=300, env=cli_env(TVM_NUM_THREADS=""))
        assert result.returncode == 0, result.stderr
        return int(result.stdout)

    assert pool_size(3) == 3
    assert pool_size(0) == usable_cores()
