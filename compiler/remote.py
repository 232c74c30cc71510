"""Per-step costs on the device itself, over TVM RPC, or estimated from its profile.

Over RPC the bundle's own library is uploaded to the device's RPC server (or one a tracker
hands out) and its functions are timed there with TVM's time_evaluator. The compiled
functions take only tensors (no shapes or tuples), which is what RPC can carry in TVM 0.27.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from air.errors import AirError
from air.runtime.contract import call_arguments
from air.runtime.manifest import kv_spec
from air.runtime.routing import ModelCosts, StepCosts
from air.runtime.tensor_file import SafetensorsFile

from .routing import MAX_K

_CONTEXT = 64


def connect(address: str):
    """`host:port` of an RPC server, or `key@host:port` of a tracker and the device key."""
    from tvm import rpc

    key, _, where = address.rpartition("@")
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise AirError(f"--rpc '{address}': expected HOST:PORT (a server) or KEY@HOST:PORT (a tracker)")
    try:
        if key:
            return rpc.connect_tracker(host, int(port)).request(key, session_timeout=900)
        return rpc.connect(host, int(port), session_timeout=900)
    except Exception as e:  # TVM raises several types for network failures
        raise AirError(f"cannot reach the TVM RPC {'tracker' if key else 'server'} at {where}: {e}") from None


def _remote_model(session, bundle: Path, entry: dict, role: str):
    from tvm import runtime
    from tvm.runtime.vm import VirtualMachine

    session.upload(str(bundle / entry["library"]), target=f"air-{role}.so")
    device = session.cpu()
    vm = VirtualMachine(session.load_module(f"air-{role}.so"), device)
    weights = SafetensorsFile(bundle / entry["weights"])
    params = [runtime.tensor(np.ascontiguousarray(weights.read(name)), device) for name in entry["params"]]
    kv = kv_spec(entry, role)
    caches = [runtime.tensor(np.zeros(shape, dtype), device) for shape, dtype in kv.shapes(kv.capacities(_CONTEXT + MAX_K + 2))]
    return vm, device, caches, params


def _seconds(vm, device, function, tokens, start, caches, params) -> float:
    from tvm import runtime

    args = call_arguments(runtime.tensor(np.array(tokens, dtype=np.int32), device), caches,
                          runtime.tensor(np.array([start], dtype=np.int64), device), params)
    timer = vm.time_evaluator(function, device, number=3, repeat=5, min_repeat_ms=50)
    return float(np.median(timer(*args).results))


def measure_costs_rpc(bundle: Path, manifest: dict, address: str) -> StepCosts:
    session = connect(address)
    costs, verify = {}, {}
    for role in ("target", "draft"):
        vm, device, caches, params = _remote_model(session, bundle, manifest["models"][role], role)
        prompt = list(range(2, 2 + _CONTEXT))
        costs[role] = ModelCosts(_seconds(vm, device, "prefill", prompt, 0, caches, params) / _CONTEXT,
                                 _seconds(vm, device, "decode", [7], _CONTEXT, caches, params))
        if role == "target":
            verify = {k: _seconds(vm, device, "verify", [7] * (k + 1), _CONTEXT, caches, params)
                      for k in range(1, MAX_K + 1)}
    return StepCosts(costs["target"], costs["draft"], verify)


def estimate_costs(host_costs: StepCosts, manifest: dict, profile: dict) -> StepCosts:
    """Scale the host's costs by the device's decode time from its memory bandwidth
    (a decode step reads every weight once), keeping the host's verify/decode ratios."""
    bandwidth = profile.get("bandwidth_gbs")
    if not bandwidth:
        raise AirError("the device profile has no bandwidth_gbs: cannot estimate its costs (use --rpc)")
    scale = {role: manifest["models"][role]["weight_bytes"] / (bandwidth * 1e9) / host_costs.of(role).decode
             for role in ("target", "draft")}
    return host_costs.scaled(target=scale["target"], draft=scale["draft"])
