"""The fake virtio-net PCI function the NDIS harness drives (moved out of
ndis_harness.py unchanged; the next commit makes it the model all three
Windows harnesses share)."""
import struct


MAC = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
BAR = 0xFE000000
BAR_LEN = 0x4000
COMMON, NOTIFY, ISR, DEVCFG = 0x0, 0x1000, 0x2000, 0x3000
NOTIFY_MULT = 4
QSIZE = 32
NQUEUES = 2               # receive, transmit
F_CSUM, F_GUEST_CSUM = 1 << 0, 1 << 1
F_MAC, F_STATUS, F_VERSION_1 = 1 << 5, 1 << 16, 1 << 32
FEATURES = F_CSUM | F_GUEST_CSUM | F_MAC | F_STATUS | F_VERSION_1
HDR = 12                  # virtio_net_hdr with VERSION_1


def config_space():
    c = bytearray(256)
    struct.pack_into('<HH', c, 0, 0x1AF4, 0x1041)       # virtio, network (modern)
    struct.pack_into('<H', c, 0x06, 0x10)                # status: capability list
    struct.pack_into('<I', c, 0x08, 0x02000001)          # class: network, revision 1
    struct.pack_into('<I', c, 0x10, BAR | 0xC)           # BAR0: 64-bit prefetchable
    struct.pack_into('<I', c, 0x14, 0)
    c[0x34] = 0x40
    caps = [(1, COMMON, 0x38), (2, NOTIFY, 0x1000), (3, ISR, 4), (4, DEVCFG, 0x10)]
    off = 0x40
    for i, (kind, where, length) in enumerate(caps):
        nxt = off + 20 if i + 1 < len(caps) else 0
        size = 20 if kind == 2 else 16
        c[off:off + 16] = struct.pack('<BBBBBBHII', 9, nxt, size, kind, 0, 0, 0, where, length)
        if kind == 2:
            struct.pack_into('<I', c, off + 16, NOTIFY_MULT)
        off = nxt or off
    return bytes(c)


class Device:
    """A virtio-net function: two queues, MAC and link status in config."""

    def __init__(self, se, virt):
        self.se, self.virt = se, virt
        self.resets = getattr(self, 'resets', -1) + 1
        self.link = getattr(self, 'link', 1)
        self.status = 0
        self.dfsel = self.gfsel = 0
        self.driver_features = 0
        self.qsel = 0
        self.q = [dict(size=QSIZE, enable=0, desc=0, driver=0, device=0, last=0)
                  for _ in range(NQUEUES)]
        self.sent = []
        self.rx_ready = []          # (head, [(addr, len, flags)])
        self.bad = []
        self.isr = 0                # ISR status: 1 queue, 2 config change
        self.isr_reads = 0

    def w(self, off, fmt, v):
        self.se.mem_write(self.virt + off, struct.pack(fmt, v))

    def r(self, addr, fmt):
        return struct.unpack(fmt, self.se.mem_read(addr, struct.calcsize(fmt)))[0]

    def refresh(self):
        self.w(COMMON + 0x04, '<I', (FEATURES >> (32 * self.dfsel)) & 0xFFFFFFFF if self.dfsel < 2 else 0)
        self.w(COMMON + 0x12, '<H', NQUEUES)
        self.w(COMMON + 0x14, '<B', self.status)
        self.w(COMMON + 0x15, '<B', 0)
        q = self.q[self.qsel] if self.qsel < NQUEUES else None
        self.w(COMMON + 0x18, '<H', q['size'] if q else 0)
        self.w(COMMON + 0x1C, '<H', q['enable'] if q else 0)
        self.w(COMMON + 0x1E, '<H', self.qsel)
        for o, k in ((0x20, 'desc'), (0x28, 'driver'), (0x30, 'device')):
            self.w(COMMON + o, '<Q', q[k] if q else 0)
        self.se.mem_write(self.virt + DEVCFG, MAC)
        self.w(DEVCFG + 6, '<H', self.link)    # VIRTIO_NET_S_LINK_UP
        self.w(DEVCFG + 8, '<H', 1)
        self.w(DEVCFG + 10, '<H', 1500)
        self.w(ISR, '<B', self.isr)

    def on_write(self, se, access, addr, size, value, ctx):
        off = addr - self.virt
        if NOTIFY <= off < ISR:
            self.process(value & 0xFFFF)
            return True
        if off >= DEVCFG:
            return True
        q = self.q[self.qsel] if self.qsel < NQUEUES else None
        if off == 0x00:
            self.dfsel = value
        elif off == 0x08:
            self.gfsel = value
        elif off == 0x0C:
            mask = 0xFFFFFFFF << (32 * self.gfsel)
            self.driver_features = (self.driver_features & ~mask) | ((value & 0xFFFFFFFF) << (32 * self.gfsel))
        elif off == 0x14:
            self.status = value & 0xFF
            if self.status == 0:
                sent = self.sent
                self.__init__(se, self.virt)
                self.sent = sent
        elif off == 0x16:
            self.qsel = value & 0xFFFF
        elif q and off == 0x18:
            q['size'] = value & 0xFFFF
        elif q and off == 0x1C:
            q['enable'] = value & 0xFFFF
        elif q and off in (0x20, 0x24, 0x28, 0x2C, 0x30, 0x34):
            key = {0x20: 'desc', 0x28: 'driver', 0x30: 'device'}[off & ~7]
            if size == 8:
                q[key] = value
            elif off & 4:
                q[key] = (q[key] & 0xFFFFFFFF) | (value << 32)
            else:
                q[key] = (q[key] & ~0xFFFFFFFF) | value
        return True

    def on_read(self, se, access, addr, size, value, ctx):
        self.refresh()
        if addr - self.virt == ISR:
            # Read-to-clear: this read sees the bits, the next one zero.
            self.isr_reads += 1
            self.isr = 0
        return True

    def set_link(self, up):
        self.link = up
        self.isr |= 2

    def chains(self, qi):
        q = self.q[qi]
        idx = self.r(q['driver'] + 2, '<H')
        out = []
        while q['last'] != idx:
            head = self.r(q['driver'] + 4 + 2 * (q['last'] % q['size']), '<H')
            descs, d = [], head
            for _ in range(q['size']):
                a, ln, fl, nx = struct.unpack('<QIHH', self.se.mem_read(q['desc'] + 16 * d, 16))
                descs.append((a, ln, fl))
                if not fl & 1:
                    break
                d = nx
            out.append((head, descs))
            q['last'] = (q['last'] + 1) & 0xFFFF
        return out

    def push_used(self, qi, head, length=0):
        q = self.q[qi]
        used_idx = self.r(q['device'] + 2, '<H')
        self.se.mem_write(q['device'] + 4 + 8 * (used_idx % q['size']), struct.pack('<II', head, length))
        self.se.mem_write(q['device'] + 2, struct.pack('<H', (used_idx + 1) & 0xFFFF))
        self.isr |= 1

    def process(self, qi):
        if qi >= NQUEUES or not self.q[qi]['enable']:
            self.bad.append('notify of queue %d' % qi)
            return
        if qi == 0:
            self.rx_ready.extend(self.chains(0))
            return
        for head, descs in self.chains(1):
            data = b''.join(self.se.mem_read(a, ln) for a, ln, _ in descs)
            self.sent.append(data[HDR:])
            self.push_used(1, head, 0)

    def inject(self, frame):
        """Hand one frame to the driver: the next posted receive buffer."""
        if not self.rx_ready:
            self.rx_ready.extend(self.chains(0))
        if not self.rx_ready:
            return False
        head, descs = self.rx_ready.pop(0)
        addr, ln, _ = descs[0]
        data = struct.pack('<BBHHHHH', 0, 0, 0, 0, 0, 0, 1) + frame
        if len(data) > ln:
            return False
        self.se.mem_write(addr, data)
        self.push_used(0, head, len(data))
        return True

    def garbage_used(self):
        """A used entry whose id was never posted."""
        self.push_used(0, 999, 64)
