"""Boot the real guest image under QEMU (TCG) and check every workload.

QEMU runs with user networking; host forwards on 127.0.0.1 reach the guest's
HTTP (80), UDP echo (7) and TCP echo (7). The guest is stopped with SIGTERM
(QEMU exits cleanly, the guest does not: a power cut); the integrity log is then
read from the data disk on the host: every record the guest wrote with O_DSYNC must
be there, without gaps, also after a second boot that had to repair the disk.

The memory dirtier (``wanmig.dirty=``) is checked from outside, as a migration
would see it: QEMU's ``calc-dirty-rate`` over a guest started with it and one
started without it (these boot through ``QemuVm``, which speaks QMP).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from wanmig.integrity import check_log
from wanmig.qemu.image import (
    ERROR_MARKER,
    READY_MARKER,
    GuestImage,
    build_image,
    create_data_disk,
    read_integrity_log,
)
from wanmig.qemu.process import QemuVm, VmConfig
from wanmig.registry import Registry, new_run_id

pytestmark = [
    pytest.mark.qemu,
    pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="QEMU not installed"),
]

BOOT_TIMEOUT_S = 90.0  # TCG on a busy 2-core CI box; it takes about 4 s when idle


@pytest.fixture(scope="module")
def guest_image() -> GuestImage:
    return build_image()  # cached in ./build after the first run


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Guest:
    proc: subprocess.Popen[bytes]
    serial: Path
    http_port: int
    tcp_port: int
    udp_port: int

    def console(self) -> str:
        return self.serial.read_text(errors="replace") if self.serial.exists() else ""

    def wait_for_line(self, marker: str, timeout: float = BOOT_TIMEOUT_S) -> float:
        """Seconds until ``marker`` appeared on the console."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            text = self.console()
            if marker in text:
                return time.monotonic() - start
            if ERROR_MARKER in text and marker != ERROR_MARKER:
                pytest.fail(f"guest failed to boot:\n{text[-2000:]}")
            if self.proc.poll() is not None:
                pytest.fail(f"QEMU exited with {self.proc.returncode}:\n{text[-2000:]}")
            time.sleep(0.05)
        pytest.fail(f"no {marker!r} within {timeout} s:\n{self.console()[-2000:]}")

    def stop(self) -> None:
        """SIGTERM: QEMU shuts down cleanly and flushes its block layer."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@contextlib.contextmanager
def boot(image: GuestImage, disk: Path | None, workdir: Path, *,
         name: str = "vm1") -> Iterator[Guest]:
    serial = workdir / f"serial-{time.monotonic_ns()}.log"
    http, tcp, udp = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM), \
        free_port(socket.SOCK_DGRAM)
    fwd = (f"hostfwd=tcp:127.0.0.1:{http}-:80,hostfwd=tcp:127.0.0.1:{tcp}-:7,"
           f"hostfwd=udp:127.0.0.1:{udp}-:7")
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", "256",
        "-nodefaults", "-nographic", "-monitor", "none", "-serial", f"file:{serial}",
        "-kernel", str(image.kernel), "-initrd", str(image.initrd),
        "-append", image.cmdline(ip_cidr="10.0.2.15/24", gateway="10.0.2.2", name=name),
        "-netdev", f"user,id=n0,{fwd}",
        "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:77:00:10",
    ]
    if disk is not None:
        argv += ["-drive", f"file={disk},format=raw,if=virtio"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    guest = Guest(proc, serial, http, tcp, udp)
    try:
        yield guest
    finally:
        guest.stop()


def check_http(guest: Guest, name: str) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{guest.http_port}/", timeout=10) as resp:
        assert resp.status == 200
        assert f"wanmig guest {name}" in resp.read().decode()
    # the web load's large response (guest/init writes it at boot)
    url = f"http://127.0.0.1:{guest.http_port}/blob.bin"
    with urllib.request.urlopen(url, timeout=20) as resp:
        assert resp.status == 200
        assert len(resp.read()) == 262144


def check_udp_echo(guest: Guest) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        for i in range(50):
            payload = b"probe %d" % i
            s.sendto(payload, ("127.0.0.1", guest.udp_port))
            data, _ = s.recvfrom(2048)
            assert data == payload
            time.sleep(0.001)


def check_tcp_echo(guest: Guest) -> None:
    conns = [socket.create_connection(("127.0.0.1", guest.tcp_port), timeout=10)
             for _ in range(16)]
    try:
        for i, c in enumerate(conns):  # many concurrent clients
            c.sendall(b"client %d\n" % i)
        for i, c in enumerate(conns):
            want = b"client %d\n" % i
            got = b""
            while len(got) < len(want):
                got += c.recv(1024)
            assert got == want
        # one bulk transfer larger than any buffer: back-pressure, no loss
        blob = bytes(range(256)) * 4096
        sender = threading.Thread(target=conns[0].sendall, args=(blob,))
        sender.start()
        echoed = bytearray()
        while len(echoed) < len(blob):
            chunk = conns[0].recv(65536)
            assert chunk, "echo connection closed early"
            echoed += chunk
        sender.join(timeout=10)
        assert bytes(echoed) == blob
    finally:
        for c in conns:
            c.close()


def test_guest_boots_serves_and_logs_without_gaps(guest_image: GuestImage, tmp_path: Path) -> None:
    disk = tmp_path / "data.raw"
    create_data_disk(disk, size_mib=32)

    with boot(guest_image, disk, tmp_path, name="vm1") as guest:
        boot_s = guest.wait_for_line(READY_MARKER)
        print(f"boot to ready: {boot_s:.1f} s")
        check_http(guest, "vm1")
        check_udp_echo(guest)
        check_tcp_echo(guest)
        time.sleep(3.0)
    first = check_log(read_integrity_log(disk))
    print(f"first boot: {first.to_dict()}")
    assert first.ok, first
    assert first.first_seq == 0
    # ~100 records/s of guest time; only a sanity bound, not a performance target
    assert first.records >= 100
    assert first.records >= 0.5 * first.span_ms / 10

    # A second boot on the same disk continues the sequence. The guest was stopped
    # running (a power cut for ext2): its last allocations may be missing from the
    # block bitmaps. Make that certain for every block of the log, as a crash at the
    # worst moment would: the boot must check and repair the disk before it appends.
    blocks = subprocess.run(["debugfs", "-R", "blocks /integrity.log", str(disk)],
                            capture_output=True, text=True, check=True).stdout.split()
    assert blocks, "the log has no blocks"
    for block in blocks:
        subprocess.run(["debugfs", "-w", "-R", f"freeb {block}", str(disk)],
                       capture_output=True, check=True)
    with boot(guest_image, disk, tmp_path, name="vm1") as guest:
        guest.wait_for_line(READY_MARKER)
        time.sleep(1.0)
        assert "e2fsck repaired /dev/vda" in guest.console()
    second = check_log(read_integrity_log(disk))
    print(f"second boot: {second.to_dict()}")
    assert second.ok, second
    assert second.first_seq == 0 and second.records > first.records


def test_guest_reports_missing_disk_instead_of_panicking(guest_image: GuestImage,
                                                          tmp_path: Path) -> None:
    with boot(guest_image, None, tmp_path) as guest:
        guest.wait_for_line(ERROR_MARKER)
        time.sleep(0.5)
        assert "no /dev/vda" in guest.console()
        assert READY_MARKER not in guest.console()
        assert "Kernel panic" not in guest.console()
        assert guest.proc.poll() is None  # init parked, QEMU still running


# ----------------------------------------------------------------------------- dirty workload

# QEMU samples this many pages per GiB of guest RAM and counts those whose hash
# changed. Its default, 512, is 128 pages of a 256 MiB guest: a handful of hits
# at 20 MB/s, too few to tell from noise. 4096 gives 1024 pages.
DIRTY_SAMPLE_PAGES = 4096


@contextlib.asynccontextmanager
async def running_vm(image: GuestImage,
                     dirty: tuple[int, float] | None) -> AsyncIterator[QemuVm]:
    """A 256 MiB TCG guest with an isolated NIC, stopped and cleaned up after."""
    registry = Registry(new_run_id())
    try:
        disk = registry.run_dir / "data.raw"
        create_data_disk(disk, size_mib=8)
        cfg = VmConfig(name="vm1", image=image, disk=disk, ram_mib=256,
                       mac="52:54:00:77:00:10", tap=None, ip_cidr="10.0.2.15/24",
                       accel="tcg", dirty=dirty)
        async with QemuVm(cfg, registry) as vm:
            yield vm
    finally:
        registry.close()


async def wait_console(vm: QemuVm, marker: str, timeout: float = BOOT_TIMEOUT_S) -> str:
    """The console once ``marker`` is on it; fails at once on an unexpected error line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = vm.console_path.read_text(errors="replace") if vm.console_path.exists() else ""
        if marker in text:
            return text
        if ERROR_MARKER in text:
            pytest.fail(f"guest failed to boot:\n{text[-2000:]}")
        assert vm.returncode is None, f"QEMU exited: {vm.stderr_tail()}"
        await asyncio.sleep(0.1)
    pytest.fail(f"no {marker!r} within {timeout} s")


async def measured_dirty_rate(vm: QemuVm, timeout: float = 15.0) -> int:
    """QEMU's page-sampling estimate of the guest's dirty rate over 1 s, in MiB/s."""
    await vm.execute("calc-dirty-rate", {"calc-time": 1, "sample-pages": DIRTY_SAMPLE_PAGES})
    deadline = time.monotonic() + timeout
    while True:
        info = await vm.execute("query-dirty-rate")
        if info["status"] == "measured":
            return int(info["dirty-rate"])
        if time.monotonic() > deadline:
            pytest.fail(f"dirty rate not measured within {timeout} s: {info}")
        await asyncio.sleep(0.1)


async def test_dirty_workload_dirties_memory(guest_image: GuestImage) -> None:
    # 20 MB/s of random 4 KiB pages over a 32 MiB working set touches about 45% of
    # it (~14 MiB) in one second; page sampling counts each page once. An idle
    # guest shows 0-2 MiB/s. Two samples each, the higher counts: a vCPU starved
    # for a moment on a busy host must not fail the test, a dirtier that writes
    # nothing must.
    rates: dict[str, list[int]] = {}
    for label, dirty in (("idle", None), ("dirty 32:20", (32, 20))):
        async with running_vm(guest_image, dirty) as vm:
            await wait_console(vm, READY_MARKER)
            rates[label] = [await measured_dirty_rate(vm) for _ in range(2)]
    print(f"dirty rates (MiB/s): {rates}")
    idle, dirty = max(rates["idle"]), max(rates["dirty 32:20"])
    assert dirty >= 5, rates
    assert dirty >= idle + 4, rates


async def test_dirty_working_set_too_large_fails_clearly(guest_image: GuestImage) -> None:
    async with running_vm(guest_image, (300, 20)) as vm:  # 300 MiB in a 256 MiB guest
        text = await wait_console(vm, f"{ERROR_MARKER} dirty workload", timeout=60.0)
    assert "does not fit" in text
    assert READY_MARKER not in text and "Kernel panic" not in text


async def test_the_guest_agent_refuses_hostile_requests_and_keeps_answering(
        guest_image: GuestImage) -> None:
    """Garbage on the agent's port -- unknown words, binary, bad addresses, lines longer
    than its buffer -- each gets one "error" line; ``ping`` is answered after all of it.
    Generated requests (hypothesis) go through ``QemuVm.agent``, which refuses what is not
    one printable line itself; raw bytes are written to the port's socket."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from wanmig.errors import QemuError
    from wanmig.qemu.process import agent_socket

    async with running_vm(guest_image, dirty=None) as vm:
        await wait_console(vm, READY_MARKER)
        answers: list[str] = []

        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.text(max_size=300))
        def one(request: str) -> None:
            try:
                answers.append(asyncio.run_coroutine_threadsafe(
                    vm.agent(request, timeout=10), loop).result(15))
            except QemuError as exc:
                assert "not a request" in str(exc) or "error" in str(exc), exc
                answers.append(f"refused {exc}")

        loop = asyncio.get_running_loop()
        await asyncio.to_thread(one)
        assert answers
        # raw: a binary line, and one far longer than the agent's 256-byte buffer
        reader, writer = await asyncio.open_unix_connection(str(agent_socket(vm.run_dir,
                                                                             vm.name)))
        try:
            writer.write(b"\x00\xff\x01 addr 999.1.1.1/40\n" + b"A" * 5000 + b"\nping\n")
            await writer.drain()
            got = [(await asyncio.wait_for(reader.readline(), 10)).decode().strip()
                   for _ in range(3)]
        finally:
            writer.close()
        assert got == ["error unknown request", "error request too long", "ok pong"], got
        assert await vm.agent("ping") == "pong"
        assert vm.returncode is None
