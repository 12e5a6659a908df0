"""Channel gating (CGNet): the gated convolution and its gate (:mod:`.gated_conv`), turning a
model's convs into gated ones under a gating rule (:mod:`.convert`), and wall-clock timing of a
gated model against its own dense copy (:mod:`.timing`)."""
from dyngate.gating.gated_conv import (GatedConv2d, gate_loss, gated_layers, gates_closed, gates_open,
                                       set_backend)

__all__ = ["GatedConv2d", "gate_loss", "gated_layers", "gates_closed", "gates_open", "set_backend"]
