"""Pure functions from stats objects to rich renderables (the simulator never imports rich)."""
