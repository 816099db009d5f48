"""The guest kernel's writes to guest memory that a virtualization mode may need to see.

The guest OS model (:mod:`mmu.guest.os`) performs every store to its page tables through
:func:`mmu.guest.os.guest_store` and clears every frame it hands out through
:func:`mmu.guest.os.os_alloc_table` or a data-frame fault; each of those calls the hook here
*before* the memory changes, so the mode's policy lives in ``modes/`` and the guest OS knows
no mode by name. Under shadow paging a store to a write-protected guest table traps to the
VMM (:func:`mmu.modes.shadow.sh_guest_store`); natively and under nested paging nothing
traps. A new mode that sees page-table writes (a paravirtual guest's hypercalls, a binary
translator's traces) plugs in here.
"""

from __future__ import annotations

import numpy as np

from mmu._jit import inner
from mmu.memory import mem_zero_frame
from mmu.modes.shadow import sh_guest_store, sh_zero_frame
from mmu.modes.vmm import EV_PT_STORE, EV_ZERO_FRAME, MODE_SHADOW, V_MODE, log_event


@inner
def on_pt_store(gm, gpa, value):
    """The guest kernel is about to store ``value`` at guest-physical ``gpa`` (a PTE edit);
    ``gm`` (:class:`mmu.state.GuestMemory`). The caller then performs the store. Logged as an
    ``EV_PT_STORE`` event (:mod:`mmu.modes.vmm`) in every mode."""
    log_event(gm.vm, EV_PT_STORE, gpa, np.int64(value), 0)
    if gm.vm.vmeta[V_MODE] == MODE_SHADOW:
        sh_guest_store(gm.mem, gm.vm, gm.sh, gm.stats, gpa, value)


@inner
def zero_guest_frame(gm, gfn, hpa):
    """The guest kernel clears guest frame ``gfn`` (512 stores), backed at host address ``hpa``:
    under shadow paging a frame that still holds a shadowed (recycled) table traps like any
    store; otherwise the frame is simply zeroed. Logged as an ``EV_ZERO_FRAME`` event."""
    log_event(gm.vm, EV_ZERO_FRAME, gfn, 0, 0)
    if gm.vm.vmeta[V_MODE] == MODE_SHADOW:
        sh_zero_frame(gm.mem, gm.vm, gm.sh, gm.stats, gfn)
    else:
        mem_zero_frame(gm.mem, hpa >> 12)
