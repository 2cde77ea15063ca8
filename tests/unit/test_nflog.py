"""nflog messages decoded (pure): the port a logged frame came in on, and the frame itself."""

import struct

from roamnet.dataplane.announce import parse_announcement, rarp_frame
from roamnet.dataplane.nflog import NFULNL_MSG_PACKET, decode, nflog_packet


def _message(frame: bytes, indev: int, physindev: int | None) -> bytes:
    m = nflog_packet()
    m["nfgen_family"] = 7  # NFPROTO_BRIDGE
    m["res_id"] = 77
    attrs = [("NFULA_PACKET_HDR", {"hw_protocol": 0x8035, "hook": 0}), ("NFULA_IFINDEX_INDEV", indev)]
    if physindev is not None:
        attrs.append(("NFULA_IFINDEX_PHYSINDEV", physindev))
    attrs += [("NFULA_HWHEADER", frame[:14]), ("NFULA_PAYLOAD", frame[14:42])]
    m["attrs"] = attrs
    m["header"]["type"] = (4 << 8) | NFULNL_MSG_PACKET
    m.encode()
    return m.data


def test_a_logged_rarp_names_its_bridge_port_and_parses_as_an_announcement():
    frame = rarp_frame("02:00:00:01:00:11")
    data = _message(frame, indev=2, physindev=9) + _message(frame, indev=5, physindev=None)
    first, second = decode(data)
    assert (first.ifindex, first.ethertype) == (9, 0x8035)  # the port, not the bridge
    assert second.ifindex == 5
    assert parse_announcement(first.frame) == "02:00:00:01:00:11"
    assert decode(b"") == [] and decode(struct.pack("=IHHII", 16, 2, 0, 0, 0)) == []  # an ack: no frame
