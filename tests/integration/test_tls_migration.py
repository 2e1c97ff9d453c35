"""The migration stream over tls-creds-x509, both ends authenticated, on real QEMU.

Two bare QEMUs (no kernel, no disk: 64 MiB of RAM is stream enough) migrate
over tcp on 127.0.0.1 with the certificates ``wanmig.memory.tls`` makes.  One
migration must complete; every wrong certificate must be refused, by the side
whose check it fails, while the source keeps running.

QEMU 7.2's own words for each refusal are the constants below (as observed
with GnuTLS 3.7.9); the tests assert them, so a QEMU that words them
differently shows up here first.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from qemu.qmp import QMPClient, QMPError
from qemu.qmp.qmp_client import ExecuteError

from wanmig.children import reap, sigkill
from wanmig.errors import QemuError, QmpTimeout
from wanmig.memory.plan import TLS_AUTHZ_ID
from wanmig.memory.tls import (
    DeploymentCa,
    MigrationTls,
    add_tls_creds,
    endpoint_identity,
    issue_endpoint,
)

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed"),
]

# -- QEMU's error texts --------------------------------------------------------
# The source refuses the destination: in the source's query-migrate error-desc
# (and its stderr).  The destination then exits with status 1 after
# "Cannot read from TLS channel: Input/output error" (x3), "Not a migration
# stream", "load of migration failed: Invalid argument".
UNKNOWN_ISSUER = "The certificate hasn't got a known issuer"
WRONG_HOST = "Certificate does not match the hostname 127.0.0.1"
DEST_GAVE_UP = "load of migration failed"
# The destination refuses the source: only on the destination's stderr; it
# stays in "inmigrate" and keeps listening.  No client certificate, or one
# from a CA of another name (GnuTLS does not even send that one):
NO_CLIENT_CERT = "Verify failed: No certificate was found."
# ... a client certificate from an impostor CA carrying the deployment CA's name:
#     UNKNOWN_ISSUER, as above.
# ... a client certificate the deployment CA signed for another identity than
#     the one tls-authz names (the name as gnutls_x509_crt_get_dn prints it):
AUTHZ_DENIED = "TLS x509 authz check for {} is denied"
# What the source sees then (error-desc): QEMU 10 names the socket the destination
# closed, reset or shut depending on which of its writes met the close first.
SOURCE_SEES_REFUSAL = ("Unable to write to socket: Connection reset by peer",
                       "Unable to write to socket: Broken pipe")

LOOPBACK = "127.0.0.1"
MIGRATION_TIMEOUT_S = 60.0  # 64 MiB of mostly zero pages: under a second when idle
TERMINAL = frozenset({"completed", "failed", "cancelled"})


class BareQemu:
    """A QEMU without a guest, spoken to over QMP; ``stop()`` always reaps it.

    Its ``execute`` has ``QemuVm.execute``'s signature and error types, so the
    ``wanmig.memory.tls`` helpers take it as they take a ``QemuVm``.
    """

    def __init__(self, name: str, sock_dir: Path, *, incoming: bool) -> None:
        self.name = name
        self.incoming = incoming
        self.sock = sock_dir / f"{name}.qmp"
        self.stderr_path = sock_dir / f"{name}.stderr"
        self.qmp = QMPClient(name)
        self.proc: asyncio.subprocess.Process | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        code = self.proc.returncode if self.proc else None
        return f"BareQemu({self.name!r}, pid={pid}, returncode={code}, qmp={self.qmp.runstate})"

    def argv(self) -> list[str]:
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", "pc", "-m", "64",
                "-nodefaults", "-no-user-config", "-display", "none",
                "-qmp", f"unix:{self.sock},server=on,wait=off"]
        return argv + (["-incoming", "defer"] if self.incoming else [])

    async def start(self, timeout: float = 30.0) -> None:
        with self.stderr_path.open("wb") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv(), stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.returncode is not None:
                raise QemuError(f"exited with {self.proc.returncode}: {self.stderr()}",
                                vm=self.name)
            try:
                if self.sock.exists():
                    await asyncio.wait_for(self.qmp.connect(str(self.sock)), timeout=5.0)
                    return
            except (QMPError, OSError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise QmpTimeout(f"no QMP after {timeout:g} s", vm=self.name)
            await asyncio.sleep(0.05)

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        try:
            return await asyncio.wait_for(self.qmp.execute(cmd, args), timeout=timeout)
        except TimeoutError as exc:
            raise QmpTimeout(f"{cmd} did not answer", vm=self.name, cause=exc) from exc
        except ExecuteError as exc:
            raise QemuError(f"{cmd} failed: {exc}", vm=self.name, cause=exc) from exc
        except QMPError as exc:
            raise QemuError(f"{cmd}: QMP lost ({exc})", vm=self.name, cause=exc) from exc

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    async def wait_stderr(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.stderr():
            if time.monotonic() > deadline:
                pytest.fail(f"{self.name} never wrote {text!r}; stderr:\n{self.stderr()}")
            await asyncio.sleep(0.05)
        return self.stderr()

    async def wait_exit(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout=timeout)

    async def stop(self) -> None:
        """quit, else SIGKILL; reaped in every case.  Idempotent."""
        if self.proc is None:
            return
        try:
            if self.proc.returncode is None and self.qmp.runstate.name == "RUNNING":
                await asyncio.wait_for(self.qmp.execute("quit"), timeout=5.0)
        except (QMPError, OSError, EOFError, TimeoutError):
            pass  # exiting, or already gone: the reap below decides
        finally:
            try:
                await reap(self.proc, 5.0)
            except BaseException:
                sigkill(self.proc)
                raise
            try:
                await asyncio.wait_for(self.qmp.disconnect(), timeout=2.0)
            except (QMPError, OSError, EOFError, TimeoutError):
                pass  # QEMU went away first; qemu.qmp re-raises that here


StartQemu = Callable[[str, bool], Awaitable[BareQemu]]


@pytest.fixture
async def start_qemu() -> AsyncIterator[StartQemu]:
    """Starts bare QEMUs; every one is stopped and reaped at teardown, pass or fail."""
    # unix socket paths are limited to 108 bytes: not under pytest's long tmp_path
    sock_dir = Path(tempfile.mkdtemp(prefix="wmtls-"))
    started: list[BareQemu] = []

    async def start(name: str, incoming: bool) -> BareQemu:
        vm = BareQemu(name, sock_dir, incoming=incoming)
        started.append(vm)  # before start(): a half-started QEMU is stopped too
        await vm.start()
        return vm

    try:
        yield start
    finally:
        try:
            await asyncio.gather(*(vm.stop() for vm in started))
        finally:
            for vm in started:  # belt and braces: nothing outlives the test
                if vm.proc is not None and vm.proc.returncode is None:
                    sigkill(vm.proc)
                    await vm.proc.wait()
            shutil.rmtree(sock_dir, ignore_errors=True)
        assert all(vm.proc is None or vm.proc.returncode is not None for vm in started)


@pytest.fixture
def ca(tmp_path: Path) -> DeploymentCa:
    return DeploymentCa.load_or_create(tmp_path / "pki")


# -- the QMP sequence ------------------------------------------------------------


async def listen(dst: BareQemu, creds: Path, client_identity: str) -> int:
    """Destination: credentials, tls-creds, tls-authz letting in ``client_identity``,
    migrate-incoming on a free port; the port."""
    await add_tls_creds(dst, creds, "server", client_identity=client_identity)
    await dst.execute("migrate-set-parameters",
                      {"tls-creds": "wanmig-tls", "tls-authz": TLS_AUTHZ_ID})
    await dst.execute("migrate-incoming", {"uri": f"tcp:{LOOPBACK}:0"})
    info = await dst.execute("query-migrate")
    return int(info["socket-address"][0]["port"])


async def migrate(src: BareQemu, creds: Path, port: int, hostname: str) -> dict[str, Any]:
    """Source: credentials, tls-creds + tls-hostname, migrate; query-migrate at the end."""
    await add_tls_creds(src, creds, "client")
    await src.execute("migrate-set-parameters",
                      {"tls-creds": "wanmig-tls", "tls-hostname": hostname})
    params = await src.execute("query-migrate-parameters")
    assert params["tls-creds"] == "wanmig-tls" and params["tls-hostname"] == hostname
    await src.execute("migrate", {"uri": f"tcp:{LOOPBACK}:{port}"})
    deadline = time.monotonic() + MIGRATION_TIMEOUT_S
    while True:
        info: dict[str, Any] = await src.execute("query-migrate")
        if info.get("status") in TERMINAL:
            return info
        if time.monotonic() > deadline:
            pytest.fail(f"migration not finished after {MIGRATION_TIMEOUT_S:g} s: {info}")
        await asyncio.sleep(0.05)


async def pair(start_qemu: StartQemu) -> tuple[BareQemu, BareQemu]:
    src, dst = await asyncio.gather(start_qemu("src", False), start_qemu("dst", True))
    assert (await src.execute("query-status"))["status"] == "running"
    assert (await dst.execute("query-status"))["status"] == "inmigrate"
    return src, dst


# -- (a) the good case -------------------------------------------------------------


async def test_migration_with_mutual_tls_completes(start_qemu: StartQemu, ca: DeploymentCa,
                                                   tmp_path: Path) -> None:
    tls = MigrationTls.create(tmp_path / "run", ca, LOOPBACK)
    src, dst = await pair(start_qemu)
    port = await listen(dst, tls.dest_dir, tls.source_identity)
    assert (await dst.execute("query-migrate-parameters"))["tls-authz"] == TLS_AUTHZ_ID
    info = await migrate(src, tls.source_dir, port, tls.hostname)
    assert info["status"] == "completed", info
    assert info["ram"]["transferred"] > 0
    assert (await src.execute("query-status"))["status"] == "postmigrate"
    assert (await dst.execute("query-status"))["status"] == "running"
    assert (await dst.execute("query-migrate"))["status"] == "completed"
    assert src.stderr() == "" and dst.stderr() == ""


# -- (b) the source refuses a wrong destination --------------------------------------


async def test_source_refuses_a_destination_from_another_ca(
        start_qemu: StartQemu, ca: DeploymentCa, tmp_path: Path) -> None:
    tls = MigrationTls.create(tmp_path / "run", ca, LOOPBACK, rogue=True)
    src, dst = await pair(start_qemu)
    port = await listen(dst, tls.dest_dir, tls.source_identity)  # the impostor's credentials
    info = await migrate(src, tls.source_dir, port, tls.hostname)
    assert info["status"] == "failed", info
    assert info["error-desc"] == UNKNOWN_ISSUER
    assert (await src.execute("query-status"))["status"] == "running"
    # the impostor received no usable stream and gave up
    assert await dst.wait_exit() == 1
    assert DEST_GAVE_UP in dst.stderr()


async def test_source_checks_the_destination_address(
        start_qemu: StartQemu, ca: DeploymentCa, tmp_path: Path) -> None:
    tls = MigrationTls.create(tmp_path / "run", ca, LOOPBACK)
    # genuinely signed, but for another address than the one the source dials
    elsewhere = issue_endpoint(ca, tmp_path / "elsewhere", "server", ips=["127.0.0.2"])
    src, dst = await pair(start_qemu)
    port = await listen(dst, elsewhere, tls.source_identity)
    info = await migrate(src, tls.source_dir, port, LOOPBACK)
    assert info["status"] == "failed", info
    assert info["error-desc"] == WRONG_HOST
    assert (await src.execute("query-status"))["status"] == "running"
    assert await dst.wait_exit() == 1


# -- (c) the destination refuses a wrong source ----------------------------------------


def source_without_certificate(ca: DeploymentCa, out: Path) -> Path:
    out.mkdir(parents=True)
    (out / "ca-cert.pem").write_bytes(ca.cert_pem)  # trusts the destination, proves nothing
    return out


def source_from_other_ca(ca: DeploymentCa, out: Path) -> Path:
    other = DeploymentCa.ephemeral("somebody else's CA")
    return issue_endpoint(other, out, "client", name="intruder", trust=[ca, other])


def source_from_impostor_ca(ca: DeploymentCa, out: Path) -> Path:
    impostor = DeploymentCa.ephemeral(impersonate=ca)
    return issue_endpoint(impostor, out, "client", name="wanmig-source", trust=[ca, impostor])


@pytest.mark.parametrize(("make_source", "dest_says"), [
    (source_without_certificate, NO_CLIENT_CERT),
    (source_from_other_ca, NO_CLIENT_CERT),  # GnuTLS withholds a cert the server did not ask for
    (source_from_impostor_ca, UNKNOWN_ISSUER),
], ids=["no-client-cert", "other-ca", "impostor-ca"])
async def test_destination_refuses_a_source_it_cannot_verify(
        start_qemu: StartQemu, ca: DeploymentCa, tmp_path: Path,
        make_source: Callable[[DeploymentCa, Path], Path], dest_says: str) -> None:
    tls = MigrationTls.create(tmp_path / "run", ca, LOOPBACK)
    bad_source = make_source(ca, tmp_path / "bad-source")
    src, dst = await pair(start_qemu)
    port = await listen(dst, tls.dest_dir, tls.source_identity)
    listening = await dst.execute("query-migrate")  # QEMU 10: "setup", with its address
    await _refused(src, dst, bad_source, port, tls.hostname, dest_says)
    # the destination noticed nothing the QMP client could see
    assert await dst.execute("query-migrate") == listening

    # so the same source, given its real credentials (object replaced), gets through
    await _admitted(src, dst, tls, port)


async def _refused(src: BareQemu, dst: BareQemu, creds: Path, port: int, hostname: str,
                   dest_says: str) -> None:
    """A migration from ``creds`` fails as the source sees a refusal; the source keeps
    running, the destination says ``dest_says`` (only that) and still listens."""
    info = await migrate(src, creds, port, hostname)
    assert info["status"] == "failed", info
    assert info["error-desc"] in SOURCE_SEES_REFUSAL
    assert (await src.execute("query-status"))["status"] == "running"
    stderr = await dst.wait_stderr(dest_says)
    assert stderr.strip().splitlines() == [f"qemu-system-x86_64: {dest_says}"]
    assert (await dst.execute("query-status"))["status"] == "inmigrate"


async def _admitted(src: BareQemu, dst: BareQemu, tls: MigrationTls, port: int) -> None:
    """The source the destination was told about gets through."""
    info = await migrate(src, tls.source_dir, port, tls.hostname)
    assert info["status"] == "completed", info
    assert (await dst.execute("query-status"))["status"] == "running"


async def test_destination_refuses_another_identity_the_ca_signed(
        start_qemu: StartQemu, ca: DeploymentCa, tmp_path: Path) -> None:
    """tls-authz: a genuine client certificate of the deployment, but not this source's."""
    tls = MigrationTls.create(tmp_path / "run", ca, LOOPBACK)
    assert tls.source_identity == "O=wanmig,CN=wanmig-source"
    other = issue_endpoint(ca, tmp_path / "other-source", "client", name="wanmig-other")
    other_identity = endpoint_identity(other, "client")
    assert other_identity == "O=wanmig,CN=wanmig-other"
    src, dst = await pair(start_qemu)
    port = await listen(dst, tls.dest_dir, tls.source_identity)
    # QEMU prints the refused peer's DN: the very format certificate_identity produces
    await _refused(src, dst, other, port, tls.hostname, AUTHZ_DENIED.format(other_identity))
    await _admitted(src, dst, tls, port)
