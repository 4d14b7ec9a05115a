"""Triton kernels for one recurrent layer and direction (see docs/triton_kernels.md).

Two families share the per-step stages in stages.py: step kernels (one launch
per time step, parallel over hidden columns) and persistent kernels (one launch
per layer, a program per batch tile loops over time). plan.choose_family picks
one per shape.

    gates.py               elementwise gate math and its derivatives (@triton.jit)
    matmul.py              gathered rows x weight tile, the only matmul shape
    stages.py              the four stages of a step, shared by both families
    step_kernels.py        one launch per step and stage
    persistent_kernels.py  one launch per layer and direction
    plan.py                family choice, tiling, row maps (host side)
    launch.py              forward / backward drivers (host side)
    aot_check.py           compiles every variant for sm_90 and reports ptxas spills
"""
from .launch import backward, forward
from .plan import FAMILIES, choose_family, persistent_fits

__all__ = ["FAMILIES", "backward", "choose_family", "forward", "persistent_fits"]
