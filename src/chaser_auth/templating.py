"""One compiled copy of each template per process, whichever Jinja2 environment loads it.

The mail and the pages keep one environment per language (each with its own translations),
and a process may build many apps — a test suite builds hundreds. Jinja2 compiles a template
once per environment; its bytecode cache lets every environment after the first reuse that
work. A cache holds the templates of one set of environment options (the mail's, or the
pages'): its entries are keyed by the template's name and file and checked against the file's
source, so an operator's override is compiled on its own and an edited file again."""

from __future__ import annotations

from jinja2 import BytecodeCache
from jinja2.bccache import Bucket


class CompiledTemplates(BytecodeCache):
    """Jinja2's bytecode cache, in this process's memory."""

    def __init__(self) -> None:
        self._code: dict[str, bytes] = {}

    def load_bytecode(self, bucket: Bucket) -> None:
        code = self._code.get(bucket.key)
        if code is not None:
            bucket.bytecode_from_string(code)  # dropped by Jinja2 if the source changed

    def dump_bytecode(self, bucket: Bucket) -> None:
        self._code[bucket.key] = bucket.bytecode_to_string()
