"""The migration PKI: the deployment CA, the endpoint certificates, the QMP helpers.

Certificates are checked with cryptography's own verifier (chain, SAN, EKU)
and, when it is installed, with ``openssl verify`` as an independent second
opinion. The QMP helpers run against a fake executor that records commands;
that they satisfy a real QEMU is tests/integration/test_tls_migration.py.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import multiprocessing
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from wanmig.errors import ConfigError, MigrationError, QemuError
from wanmig.memory import tls
from wanmig.memory.tls import (
    DeploymentCa,
    MigrationTls,
    add_tls_creds,
    endpoint_files,
    issue_endpoint,
    remove_tls_creds,
)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_all(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


@pytest.fixture
def ca(tmp_path: Path) -> DeploymentCa:
    return DeploymentCa.load_or_create(tmp_path / "pki")


def server_verifier(ca: DeploymentCa, ip: str) -> verification.ServerVerifier:
    return (verification.PolicyBuilder().store(verification.Store([ca.cert]))
            .build_server_verifier(verification.IPAddress(ipaddress.ip_address(ip))))


def client_verifier(ca: DeploymentCa) -> verification.ClientVerifier:
    return verification.PolicyBuilder().store(verification.Store([ca.cert])) \
        .build_client_verifier()


# --------------------------------------------------------------------------- CA


def test_ca_is_a_ten_year_ca_with_a_private_key(ca: DeploymentCa, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    assert ca.path == pki.absolute()
    assert mode(pki / "ca-key.pem") == 0o600
    assert mode(pki) == 0o700
    cert = load(pki / "ca-cert.pem")
    assert cert == ca.cert
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < life < dt.timedelta(days=3651)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    cert.verify_directly_issued_by(cert)  # self-signed
    assert not list(pki.glob("*.tmp")) and not list(pki.glob(".*.tmp"))
    assert "fingerprint=" in repr(ca) and str(pki) in repr(ca)


def test_load_or_create_reuses_the_same_ca(ca: DeploymentCa, tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    before = {p.name: p.read_bytes() for p in pki.iterdir()}
    again = DeploymentCa.load_or_create(pki)
    assert again.fingerprint == ca.fingerprint
    assert again.key.private_numbers() == ca.key.private_numbers()
    assert {p.name: p.read_bytes() for p in pki.iterdir()} == before


def _create_in_child(path: str) -> str:
    return DeploymentCa.load_or_create(Path(path)).fingerprint


def test_concurrent_creators_agree_on_one_ca(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    with multiprocessing.get_context("fork").Pool(4) as pool:
        fingerprints = pool.map(_create_in_child, [str(pki)] * 8)
    assert len(set(fingerprints)) == 1
    assert DeploymentCa.load_or_create(pki).fingerprint == fingerprints[0]


def test_default_pki_dir_is_next_to_the_image(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.setenv("WANMIG_BUILD_DIR", str(tmp_path / "build"))
    assert tls.default_pki_dir() == tmp_path / "build" / "pki"
    ca = DeploymentCa.load_or_create()
    assert ca.path == (tmp_path / "build" / "pki").absolute()


def test_a_key_without_its_certificate_is_replaced(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    first = DeploymentCa.load_or_create(pki)
    (pki / "ca-cert.pem").unlink()  # what a crash between the two renames leaves
    second = DeploymentCa.load_or_create(pki)
    assert second.fingerprint != first.fingerprint
    assert second.key.public_key() == load(pki / "ca-cert.pem").public_key()


def test_a_foreign_key_is_refused(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    DeploymentCa.load_or_create(pki)
    other = DeploymentCa.load_or_create(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "ca-key.pem", pki / "ca-key.pem")
    with pytest.raises(MigrationError, match="does not belong"):
        DeploymentCa.load_or_create(pki)
    assert DeploymentCa.load_or_create(tmp_path / "other").fingerprint == other.fingerprint


def test_garbage_ca_maps_to_migration_error_with_cause(tmp_path: Path) -> None:
    pki = tmp_path / "pki"
    DeploymentCa.load_or_create(pki)
    (pki / "ca-cert.pem").write_text("not a certificate\n")
    with pytest.raises(MigrationError, match="unreadable deployment CA") as info:
        DeploymentCa.load_or_create(pki)
    assert isinstance(info.value.cause, ValueError)
    assert info.value.__cause__ is info.value.cause


def test_unwritable_pki_dir_maps_to_migration_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(MigrationError, match="cannot create TLS directory") as info:
        DeploymentCa.load_or_create(blocker / "pki")
    assert isinstance(info.value.cause, OSError)


def test_an_expiring_ca_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = tmp_path / "pki"
    long_ago = dt.datetime.now(dt.timezone.utc) - tls.CA_VALIDITY + dt.timedelta(days=1)
    monkeypatch.setattr(tls, "_now", lambda: long_ago)
    old = DeploymentCa.load_or_create(pki)
    monkeypatch.undo()
    new = DeploymentCa.load_or_create(pki)  # expires in a day: less than a leaf's life
    assert new.fingerprint != old.fingerprint
    assert new.cert.not_valid_after_utc > dt.datetime.now(dt.timezone.utc) + tls.CA_VALIDITY \
        - dt.timedelta(days=1)


# --------------------------------------------------------------------------- leaves


def test_server_certificate_for_an_ip(ca: DeploymentCa, tmp_path: Path) -> None:
    out = issue_endpoint(ca, tmp_path / "dest", "server", hostnames=["dest.example"],
                         ips=["10.1.0.2", "fd00::2"])
    assert sorted(p.name for p in out.iterdir()) == ["ca-cert.pem", "server-cert.pem",
                                                     "server-key.pem"]
    assert mode(out) == 0o700 and mode(out / "server-key.pem") == 0o600
    assert load(out / "ca-cert.pem") == ca.cert
    cert = load(out / "server-cert.pem")
    assert ca.signed(cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.0.2"),
                                                       ipaddress.ip_address("fd00::2")]
    assert san.get_values_for_type(x509.DNSName) == ["dest.example"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    # what QEMU's tlscredsx509.c insists on when keyUsage is critical
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert life <= tls.LEAF_VALIDITY + tls.CLOCK_SKEW
    assert cert.not_valid_before_utc < dt.datetime.now(dt.timezone.utc)
    # the full chain, as a TLS client checks it, for each name it carries
    chain = server_verifier(ca, "10.1.0.2").verify(cert, [])
    assert chain[-1] == ca.cert
    server_verifier(ca, "fd00::2").verify(cert, [])
    with pytest.raises(verification.VerificationError):
        server_verifier(ca, "10.1.0.3").verify(cert, [])


def test_client_certificate(ca: DeploymentCa, tmp_path: Path) -> None:
    out = issue_endpoint(ca, tmp_path / "src", "client", name="wanmig-source")
    assert sorted(p.name for p in out.iterdir()) == ["ca-cert.pem", "client-cert.pem",
                                                     "client-key.pem"]
    assert mode(out / "client-key.pem") == 0o600
    cert = load(out / "client-cert.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == \
        "wanmig-source"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    verified = client_verifier(ca).verify(cert, [])
    assert verified.chain[-1] == ca.cert
    # a client certificate is no server certificate
    with pytest.raises(verification.VerificationError):
        (verification.PolicyBuilder().store(verification.Store([ca.cert]))
         .build_server_verifier(verification.DNSName("wanmig-source")).verify(cert, []))


def test_each_issue_makes_a_new_key(ca: DeploymentCa, tmp_path: Path) -> None:
    a = issue_endpoint(ca, tmp_path / "a", "client")
    b = issue_endpoint(ca, tmp_path / "b", "client")
    assert (a / "client-key.pem").read_bytes() != (b / "client-key.pem").read_bytes()
    assert load(a / "client-cert.pem").serial_number != load(b / "client-cert.pem").serial_number


@pytest.mark.parametrize(("role", "kwargs", "match"), [
    ("server", {}, "needs a hostname or an IP"),
    ("server", {"ips": ["10.0.0.300"]}, "not an IP address"),
    ("server", {"hostnames": ["10.0.0.2"]}, "pass it in ips"),
    ("server", {"hostnames": ["bad name"]}, "not a DNS name"),
    ("peer", {"ips": ["10.0.0.2"]}, "must be 'server' or 'client'"),
])
def test_bad_requests_are_config_errors(ca: DeploymentCa, tmp_path: Path, role: str,
                                        kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        issue_endpoint(ca, tmp_path / "x", role, **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()  # nothing written for a refused request


def test_endpoint_files() -> None:
    assert endpoint_files("server") == ("ca-cert.pem", "server-cert.pem", "server-key.pem")
    assert endpoint_files("client") == ("ca-cert.pem", "client-cert.pem", "client-key.pem")


# --------------------------------------------------------------------------- one migration


def test_migration_pair(ca: DeploymentCa, tmp_path: Path) -> None:
    pair = MigrationTls.create(tmp_path / "run", ca, "10.2.0.7")
    assert pair.hostname == "10.2.0.7" and not pair.rogue
    assert pair.source_dir == (tmp_path / "run" / "tls-source").absolute()
    assert pair.dest_dir == (tmp_path / "run" / "tls-dest").absolute()
    assert (pair.source_dir / "client-key.pem").exists()
    assert not (pair.source_dir / "server-cert.pem").exists()
    assert (pair.dest_dir / "server-key.pem").exists()
    assert not (pair.dest_dir / "client-cert.pem").exists()
    for d in (pair.source_dir, pair.dest_dir):
        assert load_all(d / "ca-cert.pem") == [ca.cert]
    server_verifier(ca, pair.hostname).verify(load(pair.dest_dir / "server-cert.pem"), [])
    client_verifier(ca).verify(load(pair.source_dir / "client-cert.pem"), [])


def test_rogue_destination_is_not_signed_by_the_deployment_ca(ca: DeploymentCa,
                                                              tmp_path: Path) -> None:
    pair = MigrationTls.create(tmp_path / "run", ca, "10.2.0.7", rogue=True)
    assert pair.rogue
    cert = load(pair.dest_dir / "server-cert.pem")
    # an impostor: same issuer name and the right IP, but another key signed it
    assert cert.issuer == ca.cert.subject
    assert not ca.signed(cert)
    with pytest.raises(verification.VerificationError):
        server_verifier(ca, "10.2.0.7").verify(cert, [])
    # it trusts the deployment CA too (so QEMU loads it and it would accept us)
    trusted = load_all(pair.dest_dir / "ca-cert.pem")
    assert trusted[0] == ca.cert and len(trusted) == 2
    cert.verify_directly_issued_by(trusted[1])
    # the source side is the genuine one
    client_verifier(ca).verify(load(pair.source_dir / "client-cert.pem"), [])


def test_impostor_ca_copies_the_name_only(ca: DeploymentCa) -> None:
    impostor = DeploymentCa.ephemeral(impersonate=ca)
    assert impostor.cert.subject == ca.cert.subject and impostor.path is None
    assert impostor.fingerprint != ca.fingerprint
    other = DeploymentCa.ephemeral("someone else")
    assert other.cert.subject != ca.cert.subject


# --------------------------------------------------------------------------- openssl


def openssl_verify(ca_file: Path, cert: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca_file), *args, str(cert)],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_openssl_agrees(ca: DeploymentCa, tmp_path: Path) -> None:
    pair = MigrationTls.create(tmp_path / "run", ca, "127.0.0.1")
    ca_file = ca.path / "ca-cert.pem"  # type: ignore[operator]
    server, client = pair.dest_dir / "server-cert.pem", pair.source_dir / "client-cert.pem"
    ok = openssl_verify(ca_file, server, "-purpose", "sslserver", "-verify_ip", "127.0.0.1")
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
    wrong_ip = openssl_verify(ca_file, server, "-purpose", "sslserver", "-verify_ip",
                              "127.0.0.2")
    assert wrong_ip.returncode != 0
    ok = openssl_verify(ca_file, client, "-purpose", "sslclient")
    assert ok.returncode == 0 and ": OK" in ok.stdout, ok.stdout + ok.stderr
    assert openssl_verify(ca_file, client, "-purpose", "sslserver").returncode != 0

    rogue = MigrationTls.create(tmp_path / "rogue", ca, "127.0.0.1", rogue=True)
    bad = openssl_verify(ca_file, rogue.dest_dir / "server-cert.pem", "-purpose", "sslserver")
    # openssl looks the issuer up by key identifier, so it finds none
    assert bad.returncode != 0 and "unable to get local issuer" in bad.stdout + bad.stderr


# --------------------------------------------------------------------------- QMP helpers


class FakeVm:
    """Records QMP commands; answers qom-list from ``objects``; can be made to fail."""

    def __init__(self, objects: list[str] | None = None,
                 fail: BaseException | None = None) -> None:
        self.objects = list(objects or [])
        self.fail = fail
        self.calls: list[tuple[str, dict[str, Any] | None, float]] = []

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = 30.0) -> Any:
        self.calls.append((cmd, args, timeout))
        if self.fail is not None and cmd == "object-add":
            raise self.fail
        if cmd == "qom-list":
            return [{"name": n, "type": "child<tls-creds-x509>"} for n in self.objects]
        if cmd == "object-del":
            self.objects.remove(args["id"])  # type: ignore[index]
        if cmd == "object-add":
            self.objects.append(args["id"])  # type: ignore[index]
        return {}


async def test_add_tls_creds_sends_object_add(tmp_path: Path) -> None:
    vm = FakeVm(objects=["other"])
    obj = await add_tls_creds(vm, tmp_path / "dest", "server", timeout=7.0,
                              client_identity="O=wanmig,CN=wanmig-source")
    assert obj == "wanmig-tls"
    assert [c[0] for c in vm.calls] == ["qom-list", "object-add", "qom-list", "object-add"]
    assert all(c[2] == 7.0 for c in vm.calls)
    _, args, timeout = vm.calls[1]
    assert args == {"qom-type": "tls-creds-x509", "id": "wanmig-tls",
                    "dir": str((tmp_path / "dest").absolute()), "endpoint": "server",
                    "verify-peer": True}
    assert timeout == 7.0


async def test_add_tls_creds_replaces_an_earlier_object(tmp_path: Path) -> None:
    vm = FakeVm(objects=["wanmig-tls"])
    await add_tls_creds(vm, tmp_path / "src", "client")
    assert [(c[0], c[1]) for c in vm.calls[1:]] == [
        ("object-del", {"id": "wanmig-tls"}),
        ("object-add", {"qom-type": "tls-creds-x509", "id": "wanmig-tls",
                        "dir": str((tmp_path / "src").absolute()), "endpoint": "client",
                        "verify-peer": True})]
    vm = FakeVm(objects=["wanmig-tls"])
    await add_tls_creds(vm, tmp_path / "src", "client", obj_id="t2", replace=False)
    assert [c[0] for c in vm.calls] == ["object-add"]


async def test_remove_tls_creds_only_when_present() -> None:
    vm = FakeVm()
    assert await remove_tls_creds(vm) is False
    assert [c[0] for c in vm.calls] == ["qom-list"]
    vm = FakeVm(objects=["wanmig-tls"])
    assert await remove_tls_creds(vm) is True and vm.objects == []


async def test_qmp_failures_map_to_wanmig_errors(tmp_path: Path) -> None:
    low = RuntimeError("Unable to access credentials /x/ca-cert.pem")
    with pytest.raises(MigrationError, match="object-add failed: Unable to access") as info:
        await add_tls_creds(FakeVm(fail=low), tmp_path, "server", client_identity="O=x")
    assert info.value.cause is low
    own = QemuError("object-add failed: nope", vm="dst")
    with pytest.raises(QemuError) as raised:  # already one of ours: passed on unchanged
        await add_tls_creds(FakeVm(fail=own), tmp_path, "server", client_identity="O=x")
    assert raised.value is own
    with pytest.raises(ConfigError):
        await add_tls_creds(FakeVm(), tmp_path, "both")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- tls-authz


def test_source_identity_is_the_dn_as_qemu_prints_it(ca: DeploymentCa, tmp_path: Path) -> None:
    # gnutls_x509_crt_get_dn keeps the certificate's order (not RFC 4514's reverse);
    # tests/integration/test_tls_migration.py checks it against QEMU's own message
    pair = MigrationTls.create(tmp_path / "run", ca, "127.0.0.1")
    assert pair.source_identity == "O=wanmig,CN=wanmig-source"
    assert tls.endpoint_identity(pair.source_dir, "client") == pair.source_identity
    assert tls.endpoint_identity(pair.dest_dir, "server") == "O=wanmig,CN=127.0.0.1"
    assert load(pair.source_dir / "client-cert.pem").subject.rfc4514_string() == \
        "CN=wanmig-source,O=wanmig"


def _cert_named(ca: DeploymentCa, *attrs: x509.NameAttribute) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(x509.Name(list(attrs)))
            .issuer_name(ca.cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(ca.key, tls.hashes.SHA256()))


def test_identity_refuses_names_it_cannot_give_exactly(ca: DeploymentCa) -> None:
    plain = _cert_named(ca, x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site a"),
                        x509.NameAttribute(NameOID.COMMON_NAME, "src-1.a"))
    assert tls.certificate_identity(plain) == "C=DE,OU=site a,CN=src-1.a"
    for attr in (x509.NameAttribute(NameOID.COMMON_NAME, "a,b"),
                 x509.NameAttribute(NameOID.COMMON_NAME, " lead"),
                 x509.NameAttribute(NameOID.COMMON_NAME, "x=y"),
                 x509.NameAttribute(NameOID.EMAIL_ADDRESS, "a@b.c")):
        with pytest.raises(ConfigError, match="tls-authz"):
            tls.certificate_identity(_cert_named(ca, attr))


def test_endpoint_identity_of_a_missing_or_broken_certificate(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="cannot read"):
        tls.endpoint_identity(tmp_path, "client")
    (tmp_path / "client-cert.pem").write_text("not a certificate")
    with pytest.raises(MigrationError, match="unreadable certificate"):
        tls.endpoint_identity(tmp_path, "client")


async def test_server_gets_an_authz_object_for_its_client(tmp_path: Path) -> None:
    vm = FakeVm(objects=["wanmig-tls", "wanmig-tls-authz"])
    await add_tls_creds(vm, tmp_path / "dest", "server",
                        client_identity="O=wanmig,CN=wanmig-source")
    assert [(c[0], c[1]) for c in vm.calls if c[0] != "qom-list"] == [
        ("object-del", {"id": "wanmig-tls"}),
        ("object-add", {"qom-type": "tls-creds-x509", "id": "wanmig-tls",
                        "dir": str((tmp_path / "dest").absolute()), "endpoint": "server",
                        "verify-peer": True}),
        ("object-del", {"id": "wanmig-tls-authz"}),
        ("object-add", {"qom-type": "authz-simple", "id": "wanmig-tls-authz",
                        "identity": "O=wanmig,CN=wanmig-source"})]
    # a client has no client to check; a server without one would take any certificate
    with pytest.raises(ConfigError, match="only a server"):
        await add_tls_creds(FakeVm(), tmp_path, "client", client_identity="O=x")
    vm = FakeVm()
    with pytest.raises(ConfigError, match="client_identity"):
        await add_tls_creds(vm, tmp_path, "server")
    assert vm.calls == []
