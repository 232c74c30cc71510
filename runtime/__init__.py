"""air-run: the on-device half. Imports the TVM runtime only, never the compiler."""

from air.errors import AirError


def __getattr__(name):
    # Bundle pulls in the TVM runtime; keep `import air.runtime` light for the error type.
    if name in ("Bundle", "GenerationResult"):
        from . import bundle

        return getattr(bundle, name)
    raise AttributeError(name)


__all__ = ["AirError", "Bundle", "GenerationResult"]
