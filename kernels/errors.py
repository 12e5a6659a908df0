"""The kernels' one error class (kernels sit below dyngate and do not import it)."""


class KernelArgError(ValueError):
    """A kernel argument or setting (shape, dtype, device, partitions, backend, strategy,
    ``DYNGATE_ISA``) is invalid; a ValueError, as the kernels raised before."""
