"""QEMU: the guest image, the accelerator choice, and QEMU processes with QMP."""
