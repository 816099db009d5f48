"""x86-64 architecture only: entry formats, the 1D walker, the 2D walker. No hypervisor policy."""
