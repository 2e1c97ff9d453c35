"""wanmig: live migration of running QEMU VMs between sites across a WAN.

The package is laid out by concern (see DESIGN.md): ``qemu`` launches guests
and speaks QMP, ``testbed`` builds the two-site network, ``memory`` runs QEMU's
migration, ``probe`` measures what a client saw, ``orchestrator`` drives the
phases and ``report`` turns result records into text.
"""

__version__ = "0.1.0"
