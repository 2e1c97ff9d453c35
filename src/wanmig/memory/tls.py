"""Certificates for a TLS-protected migration stream, and the QMP to load them.

One CA per deployment signs short-lived certificates for each migration; both
QEMUs get a ``tls-creds-x509`` object with ``verify-peer=true``, so the
authentication is mutual:

* the destination (TLS server, ``endpoint=server``) presents ``server-cert.pem``
  and refuses a source whose client certificate is missing or not signed by
  the deployment CA, and (``tls-authz``) one the CA signed for anybody but
  this migration's source: a signature alone would let any holder of any
  certificate of the deployment (another migration's source, a server's
  certificate used as a client one) feed it a guest;
* the source (TLS client, ``endpoint=client``) presents ``client-cert.pem`` and
  refuses a destination whose server certificate is not signed by the
  deployment CA or does not name ``tls-hostname`` (the destination's IP here).

Files and what they hold::

    <pki dir>/                        DeploymentCa.load_or_create(path)
        ca-cert.pem                   EC P-256 CA, 10 years, CA:true, keyCertSign+cRLSign
        ca-key.pem       0600
        .lock                         flock: concurrent creators take turns
    <run dir>/tls-source/             MigrationTls.source_dir (endpoint=client)
        ca-cert.pem  client-cert.pem  client-key.pem (0600)
    <run dir>/tls-dest/               MigrationTls.dest_dir (endpoint=server)
        ca-cert.pem  server-cert.pem  server-key.pem (0600)

Every file is written to a temporary name and renamed into place, so a reader
never sees half a key; the CA's key is written before its certificate, so a
certificate on disk always has its key (a key without a certificate is what a
crash between the two leaves, and is replaced).

What QEMU 7.2 checks (crypto/tlscredsx509.c when the object is added,
crypto/tlssession.c after the handshake) and how these certificates meet it:

* CA: basicConstraints CA:true, keyUsage keyCertSign (checked only when the
  extension is critical; it is).
* Leaves: basicConstraints CA:false (a CA certificate is refused as a server
  or client certificate); keyUsage, when critical, must contain *both*
  digitalSignature and keyEncipherment, whatever the key type, so both are
  set although an EC key only ever signs (GnuTLS needs digitalSignature for
  ECDHE-ECDSA and ignores the other bit); extendedKeyUsage serverAuth or
  clientAuth (checked when critical; kept non-critical, as is usual).
* The leaf must verify against ``ca-cert.pem`` when the object is added
  ("Our own certificate ... failed validation"); ``ca-cert.pem`` may hold
  several CAs, which is how the test doubles below are built.
* On the client side ``client-cert.pem``/``client-key.pem`` are optional:
  QEMU loads such credentials, and the peer's ``verify-peer`` refuses them.
* The source matches ``tls-hostname`` with ``gnutls_x509_crt_check_hostname``:
  an IP address must be an iPAddress SAN (GnuTLS ignores IPs in dNSName).
  Without ``tls-hostname`` QEMU takes the host of the ``tcp:`` URI.
* Without ``dh-params.pem`` the server generates 2048-bit DH parameters when
  the object is added (0.1-0.3 s here); the handshake itself uses ECDHE.
* GnuTLS, as a client, only sends a certificate whose issuer *name* is among
  the CAs the server asks for: a client certificate from a differently named
  CA is not even sent ("No certificate was found" on the destination), one
  from an impostor CA with the deployment CA's name is sent and refused.
* ``tls-authz`` (checked after the chain, in
  ``qcrypto_tls_session_check_certificate``): the peer certificate's subject
  as ``gnutls_x509_crt_get_dn`` prints it (the certificate's order, first
  RDN first: ``O=wanmig,CN=wanmig-source``; not RFC 4514's reverse) must equal an ``authz-simple`` object's
  ``identity`` exactly; ``certificate_identity`` gives that string.

QMP, in this order (``add_tls_creds`` does the ``object-add``; the plan's
parameters, ``wanmig.memory.plan``, carry the rest)::

    destination: object-add {"qom-type": "tls-creds-x509", "id": "wanmig-tls",
                             "dir": "<dest_dir>", "endpoint": "server",
                             "verify-peer": true}
                 object-add {"qom-type": "authz-simple", "id": "wanmig-tls-authz",
                             "identity": "<MigrationTls.source_identity>"}
                 migrate-set-parameters {"tls-creds": "wanmig-tls",
                                         "tls-authz": "wanmig-tls-authz"}
                 migrate-incoming {"uri": "tcp:<ip>:<port>"}
    source:      object-add {... "dir": "<source_dir>", "endpoint": "client", ...}
                 migrate-set-parameters {"tls-creds": "wanmig-tls",
                                         "tls-hostname": "<MigrationTls.hostname>"}
                 migrate {"uri": "tcp:<ip>:<port>"}

``tls-creds`` is a migration *parameter*: it stays set in a QEMU process until
set to ``""``.  Between two attempts from the same source the object can be
replaced (``add_tls_creds(replace=True)``: ``object-del``, ``object-add``) while
the parameter keeps naming it.  TLS cannot be combined with ``zero-copy-send``.

A refusal ends the migration with status ``failed`` and the source keeps
running, but where the reason shows depends on who refused (QEMU 7.2's texts
are recorded in tests/integration/test_tls_migration.py):

* the source refuses the destination: the source's ``error-desc`` names the
  reason ("The certificate hasn't got a known issuer", "Certificate does not
  match the hostname ..."); the destination then fails to load the stream and
  *exits* (status 1, "load of migration failed");
* the destination refuses the source (chain or ``tls-authz``): the source
  only sees "Cannot write to TLS channel: Input/output error"; the reason
  is on the destination's stderr alone (no MIGRATION event, ``query-migrate`` has no status), and the
  destination stays ``inmigrate`` and keeps listening, so a retry with good
  credentials succeeds.

Errors: an invalid request (no name for a server, a malformed IP) is a
``ConfigError``; files that cannot be written or read, keys or certificates
that cannot be parsed, and QMP failures are a ``MigrationError`` with the
cause kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ..errors import ConfigError, MigrationError, WanmigError
from ..fileio import atomic_write, locked
from ..qemu.image import default_build_dir
from .plan import TLS_AUTHZ_ID, TLS_OBJECT_ID

__all__ = [
    "CA_VALIDITY",
    "LEAF_VALIDITY",
    "CLOCK_SKEW",
    "Endpoint",
    "QmpExecutor",
    "DeploymentCa",
    "MigrationTls",
    "default_pki_dir",
    "endpoint_files",
    "issue_endpoint",
    "certificate_identity",
    "endpoint_identity",
    "add_tls_creds",
    "remove_tls_creds",
]

log = logging.getLogger("wanmig.tls")

Endpoint = Literal["server", "client"]

CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=2)
CLOCK_SKEW = dt.timedelta(minutes=5)
"""Leaves are valid from a little before now: the two sites' clocks may differ."""

CA_CERT = "ca-cert.pem"
CA_KEY = "ca-key.pem"
LOCK = ".lock"
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o700

_CURVE = ec.SECP256R1()


def default_pki_dir() -> Path:
    """``<build dir>/pki``: next to ``build/image`` (honours ``$WANMIG_BUILD_DIR``)."""
    return default_build_dir() / "pki"


def endpoint_files(role: Endpoint) -> tuple[str, str, str]:
    """The names QEMU reads in a ``dir`` for ``role``: (CA cert, own cert, own key)."""
    if role not in ("server", "client"):
        raise ConfigError(f"TLS role must be 'server' or 'client', got {role!r}")
    return CA_CERT, f"{role}-cert.pem", f"{role}-key.pem"


# --------------------------------------------------------------------------- files


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise MigrationError(f"cannot create TLS directory {path}: {exc}", cause=exc) from exc


def _write(path: Path, data: bytes, mode: int) -> None:
    try:
        atomic_write(path, data, mode)
    except OSError as exc:
        raise MigrationError(f"cannot write {path}: {exc}", cause=exc) from exc


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MigrationError(f"cannot read {path}: {exc}", cause=exc) from exc


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """``fileio.locked``: processes creating the same CA take turns."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(locked(path))
        except OSError as exc:
            raise MigrationError(f"cannot lock {path}: {exc}", cause=exc) from exc
        yield


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


# --------------------------------------------------------------------------- CA


@dataclass(frozen=True, repr=False)
class DeploymentCa:
    """The deployment's CA: its certificate, its key, and where it is kept.

    ``path`` is None for a throw-away CA (``ephemeral``), which is never written.
    """

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    path: Path | None = None

    def __repr__(self) -> str:
        return (f"DeploymentCa(subject={self.subject!r}, fingerprint={self.fingerprint[:16]}, "
                f"expires={self.cert.not_valid_after_utc:%Y-%m-%d}, path={self.path})")

    @property
    def subject(self) -> str:
        return self.cert.subject.rfc4514_string()

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER certificate, hex."""
        return self.cert.fingerprint(hashes.SHA256()).hex()

    @property
    def cert_pem(self) -> bytes:
        return _cert_pem(self.cert)

    @classmethod
    def ephemeral(cls, name: str = "wanmig throw-away CA", *,
                  impersonate: DeploymentCa | None = None) -> DeploymentCa:
        """A CA that lives in memory only, for test doubles (a rogue peer).

        With ``impersonate`` it has that CA's subject name (but its own key):
        an impostor that only a signature check, not a name lookup, can tell
        apart.
        """
        key = ec.generate_private_key(_CURVE)
        subject = impersonate.cert.subject if impersonate else _ca_name(name)
        return cls(cert=_ca_certificate(key, subject, _now()), key=key, path=None)

    @classmethod
    def load_or_create(cls, path: Path | None = None, *,
                       name: str = "wanmig deployment CA") -> DeploymentCa:
        """The CA kept in ``path`` (default ``default_pki_dir()``), created on first use.

        Safe against a concurrent creator (file lock, rename). A CA that has
        expired, or would expire within one leaf's lifetime, is replaced.
        Raises ``MigrationError`` if the files cannot be written or read back,
        or if the stored key does not belong to the stored certificate.
        """
        path = (path or default_pki_dir()).absolute()
        _mkdir(path)
        with _locked(path / LOCK):
            cert_file, key_file = path / CA_CERT, path / CA_KEY
            if cert_file.exists():
                ca = cls._load(path)
                if ca.cert.not_valid_after_utc - LEAF_VALIDITY > _now():
                    return ca
                log.warning("deployment CA in %s expires %s: replacing it", path,
                            ca.cert.not_valid_after_utc)
            key = ec.generate_private_key(_CURVE)
            cert = _ca_certificate(key, _ca_name(name), _now())
            # key first: a certificate on disk always has its key
            _write(key_file, _key_pem(key), KEY_MODE)
            _write(cert_file, _cert_pem(cert), CERT_MODE)
            log.info("created deployment CA in %s", path)
            return cls(cert=cert, key=key, path=path)

    @classmethod
    def _load(cls, path: Path) -> DeploymentCa:
        cert_file, key_file = path / CA_CERT, path / CA_KEY
        try:
            cert = x509.load_pem_x509_certificate(_read(cert_file))
            key = serialization.load_pem_private_key(_read(key_file), password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise MigrationError(f"unreadable deployment CA in {path}: {exc}",
                                 cause=exc) from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise MigrationError(f"deployment CA key {key_file} is not an EC key")
        if key.public_key() != cert.public_key():
            raise MigrationError(f"deployment CA key {key_file} does not belong to "
                                 f"{cert_file}; remove {path} to start a new CA")
        return cls(cert=cert, key=key, path=path)

    def signed(self, cert: x509.Certificate) -> bool:
        """Whether ``cert`` was issued by this CA (issuer name and signature)."""
        try:
            cert.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wanmig"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(key: ec.EllipticCurvePrivateKey, subject: x509.Name,
                    now: dt.datetime) -> x509.Certificate:
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256()))


# --------------------------------------------------------------------------- leaves


_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _parse_ips(ips: Sequence[str]) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    out = []
    for ip in ips:
        try:
            out.append(ipaddress.ip_address(ip))
        except ValueError as exc:
            err = ConfigError(f"not an IP address: {ip!r}", field="tls ips")
            err.cause = exc
            raise err from exc
    return out


def _leaf_certificate(ca: DeploymentCa, key: ec.EllipticCurvePrivateKey, role: Endpoint, *,
                      common_name: str, hostnames: Sequence[str],
                      ips: Sequence[ipaddress.IPv4Address | ipaddress.IPv6Address],
                      validity: dt.timedelta) -> x509.Certificate:
    now = _now()
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else \
        ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([
                   x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wanmig"),
                   x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca.cert.subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - CLOCK_SKEW)
               .not_valid_after(min(now + validity, ca.cert.not_valid_after_utc))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               # keyEncipherment: QEMU refuses a critical keyUsage without it (see above)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=True,
                   data_encipherment=False, key_agreement=False, key_cert_sign=False,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False))
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    names += [x509.IPAddress(ip) for ip in ips]
    if not names and _DNS_NAME.match(common_name):
        # QEMU does not need it, but verifiers that follow RFC 5280 strictly
        # (cryptography's ClientVerifier) want a SAN on every leaf
        names = [x509.DNSName(common_name)]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def issue_endpoint(ca: DeploymentCa, out_dir: Path, role: Endpoint, *,
                   hostnames: Sequence[str] = (), ips: Sequence[str] = (),
                   name: str | None = None,
                   trust: Sequence[DeploymentCa] | None = None,
                   validity: dt.timedelta = LEAF_VALIDITY) -> Path:
    """Write a ``tls-creds-x509`` directory for ``role`` signed by ``ca``; returns it.

    ``out_dir`` gets ``ca-cert.pem`` and ``<role>-cert.pem``/``<role>-key.pem``
    (key 0600, directory 0700). A server certificate names ``hostnames`` (DNS)
    and ``ips`` (IP) in its SAN and needs at least one of them; a client's
    common name is ``name`` (default: the first host or IP, else
    ``wanmig-<role>``). ``trust`` are the CAs written to ``ca-cert.pem``
    (default: ``ca`` alone); the peer's certificate must chain to one of them.
    """
    ca_file, cert_file, key_file = endpoint_files(role)
    parsed_ips = _parse_ips(ips)
    for host in hostnames:
        if _is_ip(host):  # GnuTLS matches an IP only against iPAddress SANs
            raise ConfigError(f"{host!r} is an IP address: pass it in ips",
                              field="tls hostnames")
        if not _DNS_NAME.match(host):
            raise ConfigError(f"not a DNS name: {host!r}", field="tls hostnames")
    if role == "server" and not (hostnames or parsed_ips):
        raise ConfigError("a server certificate needs a hostname or an IP to be checked "
                          "against", field="tls")
    common_name = name or next(iter([*hostnames, *ips]), f"wanmig-{role}")
    key = ec.generate_private_key(_CURVE)
    try:
        cert = _leaf_certificate(ca, key, role, common_name=common_name, hostnames=hostnames,
                                 ips=parsed_ips, validity=validity)
    except ValueError as exc:  # e.g. a DNS name that is not IA5 text
        raise MigrationError(f"cannot issue a {role} certificate for {common_name!r}: {exc}",
                             cause=exc) from exc
    out_dir = out_dir.absolute()
    _mkdir(out_dir)
    # key before certificate, as for the CA: QEMU never sees a certificate without its key
    _write(out_dir / key_file, _key_pem(key), KEY_MODE)
    _write(out_dir / cert_file, _cert_pem(cert), CERT_MODE)
    _write(out_dir / ca_file, b"".join(c.cert_pem for c in (trust or [ca])), CERT_MODE)
    return out_dir


#: Attribute types GnuTLS and cryptography both print by the same short name.
_PLAIN_DN_TYPES = frozenset({NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME,
                             NameOID.ORGANIZATIONAL_UNIT_NAME, NameOID.COUNTRY_NAME,
                             NameOID.LOCALITY_NAME, NameOID.STATE_OR_PROVINCE_NAME})
#: A value RFC 4514 prints as it is (no escapes, no leading or trailing space).
_PLAIN_DN_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9 ._-]*[A-Za-z0-9._-])?$")


def certificate_identity(cert: x509.Certificate) -> str:
    """``cert``'s subject as QEMU's ``tls-authz`` compares it: ``O=wanmig,CN=wanmig-source``.

    QEMU 7.2 takes the peer's name from ``gnutls_x509_crt_get_dn``, which
    (unlike ``gnutls_x509_crt_get_dn2``/RFC 4514, and cryptography's
    ``rfc4514_string``) keeps the certificate's order: the *first* RDN first,
    ``,`` between them, ``CN``/``O``/... for the usual attribute types.  Only
    names both libraries print alike are given (single-valued RDNs of plain
    text, nothing to escape); anything else is refused rather than guessed at.
    """
    for rdn in cert.subject.rdns:
        attrs = list(rdn)
        if len(attrs) != 1 or attrs[0].oid not in _PLAIN_DN_TYPES or \
                not _PLAIN_DN_VALUE.match(str(attrs[0].value)):
            raise ConfigError(f"certificate subject {cert.subject.rfc4514_string()!r} is not "
                              f"a plain name that tls-authz can be given exactly", field="tls")
    return ",".join(rdn.rfc4514_string() for rdn in cert.subject.rdns)


def endpoint_identity(creds_dir: Path, role: Endpoint) -> str:
    """``certificate_identity`` of ``<creds_dir>/<role>-cert.pem``."""
    cert_file = creds_dir / endpoint_files(role)[1]
    try:
        cert = x509.load_pem_x509_certificate(_read(cert_file))
    except ValueError as exc:
        raise MigrationError(f"unreadable certificate {cert_file}: {exc}", cause=exc) from exc
    return certificate_identity(cert)


@dataclass(frozen=True)
class MigrationTls:
    """The two credential directories of one migration.

    ``source_dir`` is for the source QEMU (``endpoint=client``), ``dest_dir``
    for the destination (``endpoint=server``); ``hostname`` is the source's
    ``tls-hostname``: the destination's IP, which its certificate names;
    ``source_identity`` is the source certificate's subject
    (``certificate_identity``), the only client the destination's
    ``tls-authz`` lets in (``add_tls_creds(client_identity=...)``).
    """

    source_dir: Path
    dest_dir: Path
    hostname: str
    source_identity: str
    rogue: bool = False

    @classmethod
    def create(cls, run_dir: Path, ca: DeploymentCa, server_ip: str, *,
               rogue: bool = False, validity: dt.timedelta = LEAF_VALIDITY,
               source_name: str = "wanmig-source") -> MigrationTls:
        """Issue both sides' certificates under ``run_dir`` (``tls-source``, ``tls-dest``).

        ``source_name`` is the source certificate's common name: one per
        migration (the engine adds the run id), so the destination's
        ``tls-authz`` refuses a source certificate issued for another migration.

        ``rogue=True`` makes a test double of an impostor destination: its
        server certificate names the right IP but is signed by a throw-away
        CA. It trusts the deployment CA too (so it would accept our source, and
        QEMU loads it), so only the source's own check can refuse it.
        """
        ip = str(_parse_ips([server_ip])[0])
        source = issue_endpoint(ca, run_dir / "tls-source", "client", name=source_name,
                                validity=validity)
        if rogue:
            impostor = DeploymentCa.ephemeral(impersonate=ca)
            dest = issue_endpoint(impostor, run_dir / "tls-dest", "server", ips=[ip],
                                  trust=[ca, impostor], validity=validity)
        else:
            dest = issue_endpoint(ca, run_dir / "tls-dest", "server", ips=[ip],
                                  validity=validity)
        return cls(source_dir=source, dest_dir=dest, hostname=ip,
                   source_identity=endpoint_identity(source, "client"), rogue=rogue)


# --------------------------------------------------------------------------- QMP


class QmpExecutor(Protocol):
    """What the QMP helpers need: ``wanmig.qemu.process.QemuVm`` is one."""

    async def execute(self, cmd: str, args: dict[str, Any] | None = None,
                      timeout: float = ...) -> Any: ...


async def _execute(vm: QmpExecutor, cmd: str, args: dict[str, Any] | None,
                   timeout: float) -> Any:
    # QemuVm already raises QemuError (a WanmigError) naming the VM; anything
    # else an executor raises is mapped here. CancelledError is a BaseException
    # and passes. The outer timeout is a backstop for executors that have none.
    try:
        async with asyncio.timeout(timeout + 5.0):
            return await vm.execute(cmd, args, timeout=timeout)
    except WanmigError:
        raise
    except TimeoutError as exc:
        raise MigrationError(f"{cmd} did not answer within {timeout:g} s", cause=exc) from exc
    except Exception as exc:
        raise MigrationError(f"{cmd} failed: {exc}", cause=exc) from exc


async def add_tls_creds(vm: QmpExecutor, creds_dir: Path, endpoint: Endpoint,
                        obj_id: str = TLS_OBJECT_ID, *, client_identity: str | None = None,
                        authz_id: str = TLS_AUTHZ_ID, replace: bool = True,
                        timeout: float = 30.0) -> str:
    """``object-add`` a ``tls-creds-x509`` with ``verify-peer=true``; returns its id.

    ``creds_dir`` is what ``issue_endpoint``/``MigrationTls`` wrote for
    ``endpoint``. A server needs ``client_identity`` (``MigrationTls.source_identity``):
    it also gets an ``authz-simple`` object ``authz_id`` naming it, the one
    client the migration parameter ``tls-authz`` (``TlsSettings.authz_id``)
    lets in; a server without it would take any certificate the CA signed.
    With ``replace`` objects of the same ids (from an earlier attempt on this
    QEMU) are deleted first. QEMU checks the files here, so a bad directory
    fails now rather than at the handshake.
    """
    endpoint_files(endpoint)  # validates the role
    if (client_identity is not None) != (endpoint == "server"):
        raise ConfigError("a server, and only a server, is given its client's identity "
                          "(client_identity)", field="tls")
    await _add_object(vm, {"qom-type": "tls-creds-x509", "id": obj_id,
                           "dir": str(creds_dir.absolute()), "endpoint": endpoint,
                           "verify-peer": True}, replace=replace, timeout=timeout)
    if client_identity is not None:
        await _add_object(vm, {"qom-type": "authz-simple", "id": authz_id,
                               "identity": client_identity}, replace=replace, timeout=timeout)
    return obj_id


async def _add_object(vm: QmpExecutor, props: dict[str, Any], *, replace: bool,
                      timeout: float) -> None:
    if replace:
        await remove_tls_creds(vm, props["id"], timeout=timeout)
    await _execute(vm, "object-add", props, timeout)


async def remove_tls_creds(vm: QmpExecutor, obj_id: str = TLS_OBJECT_ID, *,
                           timeout: float = 30.0) -> bool:
    """``object-del`` the credentials (or authz object) if they exist; whether there were any.

    Set the migration parameter ``tls-creds`` (``tls-authz``) to ``""`` first
    if it names them and a migration could still be using them.
    """
    children = await _execute(vm, "qom-list", {"path": "/objects"}, timeout)
    if not any(child.get("name") == obj_id for child in children or []):
        return False
    await _execute(vm, "object-del", {"id": obj_id}, timeout)
    return True
