"""Network modes: how the VM's network identity follows it to the new site.

Parts (``wanmig.parts.NETWORK``): ``l2-extend`` today (Travostino's
stretched L2 segment); dns-tunnel, mobile-ip and route are named in the
table and refused as not implemented until they land.
"""
