"""The chat-template renderer's own process: jinja2's immutable sandbox, as transformers
renders chat templates, behind an address-space limit (the parent bounds its time).

Reads one JSON request per line ({"template", "context"}), answers one JSON line: {"text"} or
{"error", "refused"}. Runs as a plain script (python -I this-file): it imports no project code."""

import datetime
import json
import resource
import sys

MEMORY_LIMIT = 512 * 2**20


def _environment():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def raise_exception(message):
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env


def _render(env, compiled: dict, request: dict) -> dict:
    from jinja2.exceptions import SecurityError, TemplateError

    try:
        source = request["template"]
        if source not in compiled:
            compiled[source] = env.from_string(source)
        return {"text": compiled[source].render(**request["context"])}
    except SecurityError as e:
        return {"error": f"reaches outside jinja2's sandbox ({e})", "refused": True}
    except MemoryError:
        return {"error": f"needs more than {MEMORY_LIMIT >> 20} MiB of memory", "refused": True}
    except RecursionError:
        return {"error": "recurses without end", "refused": True}
    except TemplateError as e:
        return {"error": str(e), "refused": False}
    except Exception as e:  # a template error of any other kind (TypeError in an expression...)
        return {"error": f"{type(e).__name__}: {e}", "refused": False}


def main() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    env, compiled = _environment(), {}
    for line in sys.stdin:
        reply = _render(env, compiled, json.loads(line))
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
