"""Storage strategies: how the VM's disk gets to the destination site.

Parts (``wanmig.parts.STORAGE``): ``shared`` today -- both sites open one
disk image, so nothing crosses the WAN.  The strategies that copy a local
disk (mirror, precopy, postcopy, hybrid) are named in the table and refused
as not implemented until they land.
"""
