"""Counts the 802.1Q-tagged frames arriving on an interface, by VLAN id, until it goes
away or the time is up: the proof that a VLAN network's traffic leaves its host tagged.
The kernel moves the tag into packet metadata on receive; PACKET_AUXDATA hands it back.

    capture_vlan.py IFACE SECONDS    ->  "TAGGED <vid>=<count> ..." on its last line
"""
import socket
import struct
import sys
import time

SOL_PACKET, PACKET_AUXDATA, ETH_P_ALL, TP_STATUS_VLAN_VALID = 263, 8, 3, 1 << 4
iface, secs = sys.argv[1], float(sys.argv[2])
deadline = time.time() + secs
s = None
while time.time() < deadline and s is None:
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((iface, 0))
    except OSError:
        s = None
        time.sleep(0.2)
tagged, frames = {}, 0
if s is not None:
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.settimeout(1)
    while time.time() < deadline:
        try:
            data, anc, _, _ = s.recvmsg(65535, socket.CMSG_SPACE(32))
        except socket.timeout:
            continue
        except OSError:
            break  # the interface went with the VM
        frames += 1
        vid = None
        for level, kind, d in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(d) >= 20:
                status, _, _, _, _, tci, _ = struct.unpack("IIIHHHH", d[:20])
                if status & TP_STATUS_VLAN_VALID:
                    vid = tci & 0xFFF
        if vid is None and data[12:14] == b"\x81\x00":
            vid = struct.unpack("!H", data[14:16])[0] & 0xFFF
        if vid is not None:
            tagged[vid] = tagged.get(vid, 0) + 1
print("FRAMES %d" % frames)
print("TAGGED " + " ".join("%d=%d" % kv for kv in sorted(tagged.items())))
