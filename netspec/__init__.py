"""Torch-free network descriptions shared by ``models`` (torch modules) and ``accel_sim``
(layer lists), so an architecture and the gating rule are written once."""
