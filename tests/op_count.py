"""Counting the aten ops a piece of code issues, with torch.profiler on the CPU.

Every top-level aten op is a kernel launch (or a view) on an accelerator, and the sync ops below are the
ones that make the host wait for the device: a step that issues none of them can run ahead of the GPU.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import torch

SYNC_OPS = frozenset({"aten::item", "aten::nonzero", "aten::_local_scalar_dense", "aten::masked_select",
                      "aten::is_nonzero", "aten::equal"})
VIEW_OPS = frozenset({"aten::unsqueeze", "aten::squeeze", "aten::slice", "aten::select", "aten::view",
                      "aten::unbind", "aten::permute", "aten::expand", "aten::broadcast_tensors", "aten::reshape",
                      "aten::as_strided", "aten::t", "aten::transpose", "aten::alias", "aten::detach",
                      "aten::_unsafe_view", "aten::split", "aten::narrow", "aten::lift_fresh", "aten::numpy_T",
                      "aten::expand_as", "aten::view_as", "aten::flatten", "aten::chunk"})


def top_level_aten_ops(fn: Callable[[], object]) -> Counter:
    """name -> count of the aten ops fn calls itself (not those nested inside another aten op)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    ops = Counter()
    for e in prof.events():
        parent = e.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        if e.name.startswith("aten::") and parent is None:
            ops[e.name] += 1
    return ops


def all_aten_ops(fn: Callable[[], object]) -> set[str]:
    """Every aten op fn issues, nested ones included (for the sync check)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.name for e in prof.events() if e.name.startswith("aten::")}


def compute_ops(ops: Counter) -> int:
    """The number of ops that are not views: about one kernel launch each on a GPU."""
    return sum(c for name, c in ops.items() if name not in VIEW_OPS)
