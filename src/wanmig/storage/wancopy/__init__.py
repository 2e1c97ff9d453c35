"""wancopy: wanmig's own transport for a disk image across the WAN.

QEMU's NBD over TCP sends every allocated block as it is, one request per
round trip for the stream.  wancopy moves the top layer of a frozen qcow2
image into a fresh overlay on B's base and sends only what B lacks: zero
blocks as ranges, blocks B's base holds (same offset: nothing; elsewhere: a
hash) by reference, the rest zstd-compressed, over parallel mutually
authenticated TLS streams that resume after a broken connection.  Each end
is a child process in its site's namespace (``python -m
wanmig.storage.wancopy send|receive``) with ``qemu-nbd`` on the image;
``channel.WanCopy`` drives both from the engine.
"""
