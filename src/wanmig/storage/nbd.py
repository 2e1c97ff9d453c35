"""QEMU's own NBD: the destination serves its disk, the source writes to it.

This is libvirt's ``--copy-storage-all`` plumbing, over mutually
authenticated TLS unless the run is ``--insecure``::

    destination:  nbd-server-start {addr: <site B>:<nbd_port>, tls-creds, tls-authz}
                  block-export-add {type: nbd, node-name: <disk>, name: disk0,
                                    writable: true}
                  (exporting a node of an incoming QEMU activates it for writing)
    source:       blockdev-add {driver: nbd, node-name: wanmig-nbd-target,
                                server: <site B>:<nbd_port>, export: disk0,
                                tls-creds, tls-hostname}

and, once the disk is across, the reverse: ``blockdev-del`` at the source,
``block-export-del`` and ``nbd-server-stop`` at the destination.  ``postcopy``
turns the channel round (A serves, B reads): ``serve_node`` and ``attach_node``
take any node and either site.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import QemuError, StorageError
from ..qemu.process import DISK_NODE

if TYPE_CHECKING:
    from ..memory.plan import TlsSettings
    from ..qemu.process import QemuVm
    from ..testbed import Testbed

EXPORT_NAME = "disk0"
EXPORT_ID = "wanmig-disk-export"
TARGET_NODE = "wanmig-nbd-target"
#: A broken connection is reopened by QEMU's NBD client; requests wait this long for it.
#: TCP itself rides out an outage that breaks nothing (the copy just stalls); this is for
#: a connection that does break.  Short, because a rollback after the destination died
#: waits for it too (the job's requests drain first).
RECONNECT_DELAY_S = 10
#: Storage channel TLS objects, beside the memory stream's: one pair per direction
#: (``hybrid`` has both channels open at once), by the site that serves.
TLS_OBJECT_ID = "wanmig-nbd-tls"
TLS_AUTHZ_ID = "wanmig-nbd-tls-authz"


def tls_ids(server_site: str) -> tuple[str, str]:
    """The TLS object and authz ids of the storage channel that ``server_site`` serves."""
    suffix = "" if server_site == "b" else f"-{server_site}"
    return TLS_OBJECT_ID + suffix, TLS_AUTHZ_ID + suffix


async def serve_node(vm: QemuVm, ip: str, port: int, tls: TlsSettings | None, *,
                     node: str, name: str, writable: bool) -> None:
    """Start ``vm``'s NBD server on ``ip:port`` and export ``node`` as ``name``."""
    args: dict[str, object] = {"addr": {"type": "inet",
                                        "data": {"host": ip, "port": str(port)}}}
    if tls is not None:
        args |= {"tls-creds": tls.object_id, "tls-authz": tls.authz_id}
    await vm.execute("nbd-server-start", args)
    await vm.execute("block-export-add", {"type": "nbd", "id": EXPORT_ID, "node-name": node,
                                          "name": name, "writable": writable})


async def serve_disk(dst: QemuVm, ip: str, port: int, tls: TlsSettings | None) -> None:
    """B serves its disk, writable (exporting a node of an incoming QEMU activates it)."""
    await serve_node(dst, ip, port, tls, node=DISK_NODE, name=EXPORT_NAME, writable=True)


async def stop_serving(vm: QemuVm) -> None:
    """Remove the export and stop the NBD server.  The client has detached by now, but
    its disconnect may still be crossing the WAN: ``hard`` drops what is left of it."""
    await vm.execute("block-export-del", {"id": EXPORT_ID, "mode": "hard"})
    await vm.execute("nbd-server-stop")


async def attach_node(vm: QemuVm, ip: str, port: int, tls: TlsSettings | None, *,
                      node: str, export: str, read_only: bool = False) -> None:
    """An NBD client node ``node`` in ``vm`` for the export at ``ip:port``; connects
    now, so a refused certificate fails here, before any job starts.  A connection
    that breaks later is reopened (``reconnect-delay``) and a job resumes where it was."""
    args: dict[str, object] = {"driver": "nbd", "node-name": node,
                               "server": {"type": "inet", "host": ip, "port": str(port),
                                          "keep-alive": True},
                               "export": export, "reconnect-delay": RECONNECT_DELAY_S,
                               "read-only": read_only}
    if tls is not None:
        args |= {"tls-creds": tls.object_id, "tls-hostname": tls.hostname}
    try:
        await vm.execute("blockdev-add", args)
    except QemuError as exc:
        raise StorageError(f"{vm.name} could not open the other site's disk over NBD "
                           f"({ip}:{port}): {exc}", cause=exc) from exc


async def attach_target(src: QemuVm, ip: str, port: int, tls: TlsSettings | None) -> None:
    """A opens B's exported disk as ``TARGET_NODE``."""
    await attach_node(src, ip, port, tls, node=TARGET_NODE, export=EXPORT_NAME)


async def detach_target(src: QemuVm) -> None:
    await src.execute("blockdev-del", {"node-name": TARGET_NODE})


async def ss_counter(testbed: Testbed, selector: tuple[str, ...], field: str = "bytes_sent",
                     site: str = "a") -> int:
    """The sum of ``ss -ti``'s ``field`` over ``site``'s open connections that ``ss``
    selects (``dst IP dport = PORT``, ``sport = PORT``)."""
    ns = testbed.site_a if site == "a" else testbed.site_b
    out = await ns.run("ss", "-tinH", *selector)
    return sum(int(m.group(1)) for m in re.finditer(rf"\b{field}:(\d+)", out))


async def bytes_sent(testbed: Testbed, selector: tuple[str, ...], site: str = "a") -> int:
    """TCP payload bytes ``site`` has sent on the connections ``ss`` selects, TLS
    records and retransmissions included: what a storage channel put on the WAN so far."""
    return await ss_counter(testbed, selector, "bytes_sent", site)
