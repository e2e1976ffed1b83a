"""The fake virtio modern PCI function the Windows driver harnesses share
(balloon_harness.py, storport_harness.py, ndis_harness.py).

One transport model (virtio 1.2 section 4.1): a PCI config space whose
capability list names the common config, notify, ISR and device config
windows of a 64-bit BAR0; BAR0 itself, served through speakeasy memory
hooks (reads see the registers refreshed first, writes land on the model);
split virtqueues read and completed in emulated memory. What is a device's
own is left to a subclass of VirtioPciDevice: its features, queue count and
size, its device-config bytes, what a notify does and what a reset keeps.

The ISR status byte is read-to-clear (reading it drops the line), and
push_used raises the queue bit, so a harness can play the interrupt
controller: call the driver's ISR while `isr` is non-zero.
"""
import struct

BAR = 0xFE000000          # bus = CPU physical address of BAR0 (64-bit)
BAR_LEN = 0x4000
COMMON, NOTIFY, ISR, DEVCFG = 0x0, 0x1000, 0x2000, 0x3000
NOTIFY_MULT = 4
F_VERSION_1 = 1 << 32
NEXT, WRITE = 1, 2        # descriptor flags
ISR_QUEUE, ISR_CONFIG = 1, 2


def config_space(device_id, class_code, devcfg_len=0x10):
    """Config space of a modern virtio function 1AF4:`device_id` (PCI class
    `class_code`, e.g. 0x0200 network), BAR0 at BAR, and the four virtio
    capabilities (common 0x38 bytes, notify with NOTIFY_MULT, ISR, device
    config of `devcfg_len` bytes) pointing into it."""
    c = bytearray(256)
    struct.pack_into('<HH', c, 0, 0x1AF4, device_id)
    struct.pack_into('<H', c, 0x06, 0x10)                # status: capability list
    struct.pack_into('<I', c, 0x08, (class_code << 16) | 1)   # class, revision 1
    struct.pack_into('<I', c, 0x10, BAR | 0xC)           # BAR0: 64-bit prefetchable
    struct.pack_into('<I', c, 0x14, 0)
    c[0x34] = 0x40
    caps = [(1, COMMON, 0x38), (2, NOTIFY, 0x1000), (3, ISR, 4), (4, DEVCFG, devcfg_len)]
    off = 0x40
    for i, (kind, where, length) in enumerate(caps):
        nxt = off + 20 if i + 1 < len(caps) else 0
        size = 20 if kind == 2 else 16
        c[off:off + 16] = struct.pack('<BBBBBBHII', 9, nxt, size, kind, 0, 0, 0, where, length)
        if kind == 2:
            struct.pack_into('<I', c, off + 16, NOTIFY_MULT)
        off = nxt or off
    return bytes(c)


class VirtioPciDevice:
    """The transport half of a virtio PCI function. Subclasses set
    FEATURES, NQUEUES and QSIZE and override the hooks below."""

    FEATURES = F_VERSION_1
    NQUEUES = 1
    QSIZE = 32

    def __init__(self, se, virt):
        self.se, self.virt = se, virt
        self.bad = []             # protocol faults the device saw
        self.generation = 0       # config generation
        self.transport_reset()

    # ---- hooks for the device ---------------------------------------------

    def notify(self, qi):
        """The driver notified queue `qi` (an enabled queue)."""

    def on_reset(self, was):
        """The driver wrote status 0; `was` is the status before. The
        transport state is reset already."""

    def device_config(self):
        """Write the device-config window (at DEVCFG) before a read."""

    def device_config_write(self, off, value):
        """The driver wrote `value` at DEVCFG + `off`."""

    # ---- the transport ----------------------------------------------------

    def transport_reset(self):
        self.status = 0
        self.dfsel = self.gfsel = 0
        self.driver_features = 0
        self.qsel = 0
        self.q = [dict(size=self.QSIZE, enable=0, desc=0, driver=0, device=0, last=0)
                  for _ in range(self.NQUEUES)]
        self.isr = 0

    def w(self, off, fmt, v):
        self.se.mem_write(self.virt + off, struct.pack(fmt, v))

    def r(self, addr, fmt):
        return struct.unpack(fmt, self.se.mem_read(addr, struct.calcsize(fmt)))[0]

    def refresh(self):
        features = (self.FEATURES >> (32 * self.dfsel)) & 0xFFFFFFFF if self.dfsel < 2 else 0
        self.w(COMMON + 0x04, '<I', features)
        self.w(COMMON + 0x12, '<H', self.NQUEUES)
        self.w(COMMON + 0x14, '<B', self.status)
        self.w(COMMON + 0x15, '<B', self.generation & 0xFF)
        q = self.q[self.qsel] if self.qsel < self.NQUEUES else None
        self.w(COMMON + 0x18, '<H', q['size'] if q else 0)
        self.w(COMMON + 0x1C, '<H', q['enable'] if q else 0)
        self.w(COMMON + 0x1E, '<H', self.qsel)          # queue_notify_off
        for o, k in ((0x20, 'desc'), (0x28, 'driver'), (0x30, 'device')):
            self.w(COMMON + o, '<Q', q[k] if q else 0)
        self.w(ISR, '<B', self.isr)
        self.device_config()

    def on_write(self, se, access, addr, size, value, ctx):
        off = addr - self.virt
        if NOTIFY <= off < ISR:
            qi = value & 0xFFFF
            if qi >= self.NQUEUES or not self.q[qi]['enable']:
                self.bad.append('notify of queue %d' % qi)
            else:
                self.notify(qi)
            return True
        if off >= DEVCFG:
            self.device_config_write(off - DEVCFG, value)
            return True
        q = self.q[self.qsel] if self.qsel < self.NQUEUES else None
        if off == 0x00:
            self.dfsel = value
        elif off == 0x08:
            self.gfsel = value
        elif off == 0x0C:
            mask = 0xFFFFFFFF << (32 * self.gfsel)
            self.driver_features = (self.driver_features & ~mask) | ((value & 0xFFFFFFFF) << (32 * self.gfsel))
        elif off == 0x14:
            if value & 0xFF == 0:
                was = self.status
                self.transport_reset()
                self.on_reset(was)
            else:
                self.status = value & 0xFF
        elif off == 0x16:
            self.qsel = value & 0xFFFF
        elif q and off == 0x18:
            q['size'] = value & 0xFFFF
        elif q and off == 0x1C:
            q['enable'] = value & 0xFFFF
        elif q and 0x20 <= off < 0x38:
            key = {0x20: 'desc', 0x28: 'driver', 0x30: 'device'}[off & ~7]
            if size == 8:
                q[key] = value
            elif off & 4:
                q[key] = (q[key] & 0xFFFFFFFF) | (value << 32)
            else:
                q[key] = (q[key] & ~0xFFFFFFFF) | value
        # Registers that depend on this write are refreshed on the next
        # read (on_read), after the write itself has landed.
        return True

    def on_read(self, se, access, addr, size, value, ctx):
        self.refresh()
        if addr - self.virt == ISR:
            self.isr = 0          # read-to-clear: the line drops
        return True

    def hook(self):
        """Serve BAR0 (mapped at `virt`) from this model."""
        self.refresh()
        self.se.add_mem_write_hook(self.on_write, begin=self.virt, end=self.virt + BAR_LEN - 1)
        self.se.add_mem_read_hook(self.on_read, begin=self.virt, end=self.virt + BAR_LEN - 1)

    def chains(self, qi):
        """Available chains of queue `qi` not taken yet:
        [(head, [(addr, len, flags)])]."""
        q = self.q[qi]
        idx = self.r(q['driver'] + 2, '<H')
        out = []
        while q['last'] != idx:
            head = self.r(q['driver'] + 4 + 2 * (q['last'] % q['size']), '<H')
            descs, d = [], head
            for _ in range(q['size']):
                a, ln, fl, nx = struct.unpack('<QIHH', self.se.mem_read(q['desc'] + 16 * d, 16))
                descs.append((a, ln, fl))
                if not fl & NEXT:
                    break
                d = nx
            out.append((head, descs))
            q['last'] = (q['last'] + 1) & 0xFFFF
        return out

    def push_used(self, qi, head, length=0):
        """Complete `head` on queue `qi` with `length` bytes written, and
        raise the queue interrupt."""
        q = self.q[qi]
        used_idx = self.r(q['device'] + 2, '<H')
        self.se.mem_write(q['device'] + 4 + 8 * (used_idx % q['size']), struct.pack('<II', head, length))
        self.se.mem_write(q['device'] + 2, struct.pack('<H', (used_idx + 1) & 0xFFFF))
        self.isr |= ISR_QUEUE
