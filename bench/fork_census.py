"""Imported first by ``bench/memory.py --objects`` in the processor it starts: just before its
first fork, write where the supervisor's objects lie (address, size, what they are) to the file
named by ``TP_FORK_CENSUS``. A forked worker's objects sit at the same addresses, so the pages
it copies can be matched to the objects on them. Nothing else imports this module.
"""

from __future__ import annotations

import gc
import os
import sys
import types


def _label(obj: object) -> str:
    """What an object is, with the module its code comes from where there is one."""
    if isinstance(obj, types.FunctionType):
        return f"function {obj.__module__}"
    if isinstance(obj, types.CodeType):
        return f"code {os.path.basename(obj.co_filename)}"
    if isinstance(obj, type):
        return f"class {obj.__module__}"
    if isinstance(obj, types.ModuleType):
        return "module"
    return type(obj).__name__


def _census() -> None:
    if os.path.exists(os.environ["TP_FORK_CENSUS"]):
        return  # once, before the first fork: a census touches every object, and one taken
        # between forks would leave the workers forked before and after on different pages
    gc.unfreeze()  # the supervisor froze its heap just before: frozen objects are not listed
    objects = gc.get_objects()
    gc.freeze()
    seen: dict[int, object] = {}
    for obj in objects:
        seen[id(obj)] = obj
        for referent in gc.get_referents(obj):
            seen.setdefault(id(referent), referent)
    with open(os.environ["TP_FORK_CENSUS"], "w") as out:
        for address, obj in seen.items():
            out.write(f"{address} {sys.getsizeof(obj)} {_label(obj)}\n")


os.register_at_fork(before=_census)
