"""Independent plain-Python reference models, read directly from the Intel SDM (see STYLE.md)."""
