"""The network modes' layer-2 tunnel over the WAN: OpenVPN with mutual TLS, or VXLAN.

The tunnel joins the hypervisors' bridges of a real testbed (what ``l2-extend``
does at ``prepare``); a namespace with the VM's address on B's bridge answers the
client across it.  A certificate from another CA, or the deployment CA's for
another identity, is refused, and the error says which.
"""

from __future__ import annotations

import pytest

from wanmig.bench.tunnel import vm_place
from wanmig.errors import NetworkError
from wanmig.memory.tls import DeploymentCa
from wanmig.network.l2extend import PORT, stretch_tunnel
from wanmig.network.tunnel import Credentials
from wanmig.registry import Registry, new_run_id
from wanmig.testbed import Testbed

from .test_testbed import _udp_roundtrip

pytestmark = pytest.mark.root


@pytest.mark.parametrize("encrypt", [True, False], ids=["openvpn", "vxlan"])
async def test_the_tunnel_stretches_a_subnet_to_b(encrypt: bool, leaves_nothing_behind) -> None:
    registry = Registry(new_run_id())
    ca = DeploymentCa.ephemeral("test CA")
    async with Testbed(registry) as tb:
        vm = await vm_place(tb, registry)
        try:
            tunnel = stretch_tunnel(tb, registry, encrypt=encrypt)
            await tunnel.start(Credentials.of(ca) if encrypt else None)
            try:
                for site in (tb.site_a, tb.site_b):
                    assert PORT in await site.run("ip", "-o", "link", "show", "master", "br0")
                assert await _udp_roundtrip(tb.client, tb.addr.vm_ip, vm) == "ok"
                if encrypt:
                    # each end listens on its own WAN address only
                    for site, which in ((tb.site_a, "a"), (tb.site_b, "b")):
                        listening = await site.run("ss", "-Hulnp")
                        assert f"{tb.site_ip(which)}:1194" in listening
                        assert "0.0.0.0:1194" not in listening and "*:1194" not in listening
                    log = (registry.run_dir / "l2x-server.log").read_text()
                    assert "Data Channel: cipher 'AES-256-GCM'" in log, log[-2000:]
                    assert tunnel.record()["tunnel_encrypted"] is True
                    assert tunnel.describe() == "openvpn tap, AES-256-GCM, mutual TLS"
                else:
                    assert "vxlan id 77" in await tb.site_b.run("ip", "-d", "link", "show", PORT)
            finally:
                await tunnel.stop()
            for site in (tb.site_a, tb.site_b):
                assert PORT not in await site.run("ip", "-o", "link", "show")
        finally:
            await vm.remove()
    registry.close()


@pytest.mark.parametrize("fault,refusal", [
    ("foreign-ca", "VERIFY ERROR"),
    ("wrong-identity", "VERIFY X509NAME ERROR"),
])
async def test_a_foreign_certificate_or_identity_is_refused(fault: str, refusal: str,
                                                            leaves_nothing_behind) -> None:
    registry = Registry(new_run_id())
    ca = DeploymentCa.ephemeral("test CA")
    credentials = (Credentials(ca, DeploymentCa.ephemeral("another CA"), ca)
                   if fault == "foreign-ca" else
                   Credentials(ca, ca, ca, client_name_expected="wanmig-l2x-client-other"))
    async with Testbed(registry) as tb:
        tunnel = stretch_tunnel(tb, registry, encrypt=True)
        with pytest.raises(NetworkError, match=refusal) as caught:
            await tunnel.start(credentials, timeout=6)
        assert "the encrypted tunnel did not come up" in str(caught.value)
        assert not tunnel.pids, "a refused tunnel leaves no OpenVPN behind"
    registry.close()
