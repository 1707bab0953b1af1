"""PyTorch definitions of the MeLoDy networks and their configs (needs the ``torch`` extra)."""
