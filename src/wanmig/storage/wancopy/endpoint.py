"""What both ends of wancopy share: a local ``qemu-nbd`` on the image, TLS, events.

Each end opens its image through ``qemu-nbd`` on a Unix socket (QEMU's own
qcow2 and backing-chain code, ``locking=off``: the site's QEMU has the image
open too, and wancopy's callers order who writes when), and speaks to it
with ``NbdClient``.  Events go to stdout as JSON lines (``JsonLinesChild``
reads them); commands come on stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hashlib
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from ...errors import StorageError

QEMU_NBD_START_S = 15.0
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL when this process (its parent) goes, however it
    goes -- a killed wancopy must not leave a qemu-nbd behind."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _opts(path: Path) -> str:
    name = str(path.absolute()).replace(",", ",,")
    return f"driver=qcow2,file.driver=file,file.filename={name},file.locking=off"


@contextlib.asynccontextmanager
async def local_nbd(image: Path, *, writable: bool, clients: int) -> AsyncIterator[Path]:
    """``qemu-nbd`` serving the qcow2 ``image`` on a Unix socket for up to ``clients``
    connections at once; yields the socket, stops the server after."""
    with tempfile.TemporaryDirectory(prefix="wancopy-", dir=image.absolute().parent) as tmp:
        sock = Path(tmp) / "nbd.sock"
        proc = await asyncio.create_subprocess_exec(
            "qemu-nbd", "-k", str(sock), "--image-opts", _opts(image), "-t",
            "-e", str(clients), *([] if writable else ["-r"]),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, preexec_fn=_die_with_parent)
        try:
            await _accepting(proc, sock, image)
            yield sock
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _accepting(proc: asyncio.subprocess.Process, sock: Path, image: Path) -> None:
    """Until ``qemu-nbd`` accepts on ``sock``: the socket's file appears at bind(), a
    moment before listen(), and a connect in between is refused (seen once in CI on a
    loaded machine), so readiness is a connection that succeeds."""
    deadline = time.monotonic() + QEMU_NBD_START_S
    while True:
        if proc.returncode is not None:
            err = (await proc.stderr.read()).decode(errors="replace").strip() \
                if proc.stderr else ""
            raise StorageError(f"qemu-nbd on {image} exited ({proc.returncode}) before "
                               f"serving: {err[-300:]}")
        try:
            _, writer = await asyncio.open_unix_connection(str(sock))
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise StorageError(f"qemu-nbd on {image} did not accept on {sock} within "
                                   f"{QEMU_NBD_START_S:.0f} s") from None
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return


def server_context(tls_dir: Path) -> ssl.SSLContext:
    """B's side: its server certificate; a client certificate of the deployment CA is
    required (which one: ``peer_fingerprint``, checked by the receiver)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(tls_dir / "server-cert.pem", tls_dir / "server-key.pem")
    ctx.load_verify_locations(tls_dir / "ca-cert.pem")
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(tls_dir: Path) -> ssl.SSLContext:
    """A's side: its client certificate; B's must be the deployment CA's and name the
    address A connects to."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(tls_dir / "client-cert.pem", tls_dir / "client-key.pem")
    ctx.load_verify_locations(tls_dir / "ca-cert.pem")
    return ctx


def fingerprint(der: bytes) -> str:
    """A certificate's SHA-256 fingerprint, hex."""
    return hashlib.sha256(der).hexdigest()


def cert_fingerprint(pem_file: Path) -> str:
    """The fingerprint of the certificate in ``pem_file``."""
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem_file.read_text()))


def peer_fingerprint(writer: asyncio.StreamWriter) -> str | None:
    """The TLS peer certificate's fingerprint (None: no TLS, or no certificate)."""
    sslobj = writer.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    return fingerprint(der) if der else None


async def stdin_lines() -> AsyncIterator[str]:
    """Command lines from stdin until EOF."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async for raw in reader:
        yield raw.decode(errors="replace").strip()
