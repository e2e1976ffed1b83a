"""Emulated run of pvnet.sys (the NDIS 6 miniport) under speakeasy.

1. DriverEntry: must return NDIS_STATUS_SUCCESS after
   NdisMRegisterMiniportDriver; the characteristics it passed are read
   back (NDIS 6.0, revision 1, every handler the miniport needs).
2. MiniportInitializeEx with an NDIS_MINIPORT_INIT_PARAMETERS whose
   AllocatedResources name BAR0; NdisMGetBusData answers with a
   virtio-net (1AF4:1041) config space carrying the four virtio PCI
   capabilities; NdisMMapIoSpace maps BAR0 to emulated memory whose reads
   and writes a fake virtio-net device (class Device) serves: common
   config, notify, device config (MAC, link up, MTU); it processes the
   virtqueues in emulated memory when notified. Checked: the registration
   and general attributes (context, MTU, MAC, link, OID list), the device
   brought up with the negotiated features, and one line-based interrupt
   registered with NdisMRegisterInterruptEx (ISR, DPC, enable and disable
   handlers; no polling timer allocated).
3. MiniportRestart, then OIDs: MAC, frame size, link state, statistics
   (queries) and the packet filter (set), answered into emulated buffers.
4. MiniportSendNetBufferLists with two NBLs (one frame split over two
   MDLs at an offset, one in one MDL): the frames must reach the device's
   transmit queue byte-exact, and both NBLs come back through
   NdisMSendNetBufferListsComplete with NDIS_STATUS_SUCCESS.
   The harness plays the interrupt controller: while the device's ISR
   status is non-zero (its line asserted) it calls the driver's ISR, which
   must claim the interrupt, read (and so clear) the status and ask for
   the DPC, which it then calls. With the status zero (another device on
   the shared line) or all-ones (a removed function) the ISR must claim
   nothing and ask for no DPC.
5. The device injects three frames (to our MAC, broadcast, to another
   MAC), raising its interrupt: nothing is indicated before the ISR and
   DPC run; then exactly the first two must be
   indicated with NdisMIndicateReceiveNetBufferLists, byte-exact, and the
   third filtered out. MiniportReturnNetBufferLists gives them back.
   The device's link goes down, then up: each change is indicated once
   with NDIS_STATUS_LINK_STATE; disabling TCP/IPv4 checksum offload with
   OID_TCP_OFFLOAD_PARAMETERS indicates NDIS_STATUS_TASK_OFFLOAD_CURRENT_CONFIG.
6. MiniportPause / MiniportRestart: pause succeeds once no NBL is lent;
   a send while paused is completed with NDIS_STATUS_PAUSED.
7. The device writes a garbage used-ring entry (an id never posted) on
   the receive queue and interrupts: the driver must not crash, and must
   reset and rebuild the device (status back to DRIVER_OK) and then
   receive again.
8. MiniportHaltEx: the device is reset, then the interrupt deregistered
   (in that order: a shared level line must not be left asserted with no
   handler), BAR0 unmapped, every NBL, MDL and the pool freed.

What speakeasy lacks is hooked here (most NDIS calls, ExAllocatePool2,
the Mm* memory calls with identity "physical" addresses, __chkstk). No
IRQL, no concurrency, no real interrupt controller: the harness calls the
ISR and DPC in turn, so this tests the glue, not timing.
Run by tests/tests/windows_ndis.rs (venv under the cache root).

usage: python ndis_harness.py path/to/pvnet.sys
"""
import struct
import sys

import speakeasy

from virtio_pci import BAR, BAR_LEN, DEVCFG, F_VERSION_1, ISR, VirtioPciDevice, config_space

MAC = bytes([0x52, 0x54, 0x00, 0x12, 0x34, 0x56])
F_CSUM, F_GUEST_CSUM = 1 << 0, 1 << 1
F_MAC, F_STATUS = 1 << 5, 1 << 16
FEATURES = F_CSUM | F_GUEST_CSUM | F_MAC | F_STATUS | F_VERSION_1
HDR = 12                  # virtio_net_hdr with VERSION_1
STATUS_PAUSED = 0xC023002A


def partial_resource_list():
    # NDIS_RESOURCE_LIST = CM_PARTIAL_RESOURCE_LIST: one CmResourceTypeMemory.
    return struct.pack('<HHI', 1, 1, 1) + struct.pack('<BBHQII', 3, 1, 0, BAR, BAR_LEN, 0)


class Device(VirtioPciDevice):
    """A virtio-net function: receive and transmit queues, MAC and link
    status in config. A reset keeps what was sent and the link."""

    FEATURES = FEATURES
    NQUEUES = 2

    def __init__(self, se, virt):
        self.resets = 0
        self.link = 1
        self.sent = []
        self.rx_ready = []          # (head, [(addr, len, flags)])
        self.isr_reads = 0
        super().__init__(se, virt)

    def on_reset(self, was):
        self.resets += 1
        self.rx_ready = []

    def device_config(self):
        self.se.mem_write(self.virt + DEVCFG, MAC)
        self.w(DEVCFG + 6, '<H', self.link)    # VIRTIO_NET_S_LINK_UP
        self.w(DEVCFG + 8, '<H', 1)            # max_virtqueue_pairs
        self.w(DEVCFG + 10, '<H', 1500)        # mtu

    def on_read(self, se, access, addr, size, value, ctx):
        if addr - self.virt == ISR:
            self.isr_reads += 1
        return super().on_read(se, access, addr, size, value, ctx)

    def set_link(self, up):
        self.link = up
        self.isr |= 2

    def notify(self, qi):
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


def frame(dst, payload):
    return dst + bytes([0x02, 0, 0, 0, 0, 0x09]) + b'\x08\x00' + payload


def main(path):
    se = speakeasy.Speakeasy()
    emu = None  # set once the module is loaded (closures bind late)
    calls = []

    def hook(name, ret, argc=0, mod='ntoskrnl'):
        def cb(emu, api_name, func, params):
            calls.append(api_name)
            try:
                return ret(emu, params) if callable(ret) else ret
            except Exception as e:
                print('hook %s failed: %r' % (api_name, e))
                raise
        se.add_api_hook(cb, mod, name, argc=argc)

    def nhook(name, ret, argc=0):
        hook(name, ret, argc, mod='ndis')

    def u64(a):
        return struct.unpack('<Q', se.mem_read(a, 8))[0]

    def u32(a):
        return struct.unpack('<I', se.mem_read(a, 4))[0]

    def stack_arg(n):
        return u64(emu.reg_read('rsp') + 8 + 8 * n)

    def alloc(size, tag):
        a = emu.mem_map(max((size + 0xFFF) & ~0xFFF, 0x1000), tag=tag)
        emu.mem_write(a, b'\0' * size)
        return a

    messages = []

    def dbgprint(e, p):
        try:
            ptr = stack_arg(4)
            messages.append(se.mem_read(ptr, p[3]).decode('utf-8', 'replace'))
        except Exception as ex:  # noqa: BLE001 - report, do not kill the emulator
            messages.append('unreadable: %r' % (ex,))
        return 0

    hook('DbgPrintEx', dbgprint, argc=5)
    hook('ExAllocatePool2', lambda e, p: alloc(p[1], 'emu.pool.pvdr'), argc=3)
    hook('ExFreePoolWithTag', 0, argc=2)
    hook('__chkstk', lambda e, p: e.reg_read('rax'))
    hook('MmAllocateContiguousMemorySpecifyCache', lambda e, p: alloc(p[0], 'emu.contiguous'), argc=5)
    hook('MmFreeContiguousMemorySpecifyCache', 0, argc=3)
    hook('MmGetPhysicalAddress', lambda e, p: p[0], argc=1)
    hook('MmGetVirtualForPhysical', lambda e, p: p[0], argc=1)

    reg = {}

    def register(e, p):
        reg['chars'] = p[3]
        e.mem_write(p[4], struct.pack('<Q', 0xD1D1))
        return 0

    nhook('NdisMRegisterMiniportDriver', register, argc=5)
    module = se.load_module(path)
    emu = se.emu
    se.emu.stack_base, _ = se.emu.alloc_stack(0x8000)
    se.run_module(module)
    ep = se.get_report()['entry_points'][0]
    ret = ep.get('ret_val')
    print('DriverEntry returned', ret, 'DbgPrintEx:', messages)
    if ret not in ('0x0', 0) or ep.get('error') or 'chars' not in reg:
        sys.exit('DriverEntry failed: %s' % str(ep.get('error'))[:600])
    ch = se.mem_read(reg['chars'], 0x98)
    typ, rev, size = struct.unpack_from('<BBH', ch, 0)
    major, minor = ch[4], ch[5]
    handlers = {name: struct.unpack_from('<Q', ch, off)[0] for name, off in [
        ('initialize', 0x18), ('halt', 0x20), ('unload', 0x28), ('pause', 0x30),
        ('restart', 0x38), ('oid', 0x40), ('send', 0x48), ('return', 0x50),
        ('cancel_send', 0x58), ('reset', 0x68), ('pnp', 0x70), ('shutdown', 0x78),
        ('cancel_oid', 0x80)]}
    print('characteristics: type %#x rev %d size %#x NDIS %d.%d' % (typ, rev, size, major, minor))
    missing = [k for k, v in handlers.items() if not v]
    if (typ, rev, size, major, minor) != (0x8A, 1, 0x88, 6, 0) or missing:
        sys.exit('FAIL: characteristics (missing handlers %s)' % missing)
    print('emulated: DriverEntry registers the miniport: OK')

    # ---- the device and the NDIS services InitializeEx uses ----
    bar_virt = emu.mem_map(BAR_LEN, tag='emu.virtio_net_bar0')
    emu.mem_write(bar_virt, b'\0' * BAR_LEN)
    dev = Device(se, bar_virt)
    dev.hook()
    cfg = config_space(0x1041, 0x0200)   # network (modern)
    attrs = {}

    def set_attrs(e, p):
        typ = se.mem_read(p[1], 1)[0]
        attrs[typ] = se.mem_read(p[1], 0xE0 if typ == 0x9F else 0x28)
        return 0

    nhook('NdisMSetMiniportAttributes', set_attrs, argc=2)

    def bus_data(e, p):
        buf, length = p[3], stack_arg(4)
        off = p[2]
        e.mem_write(buf, cfg[off:off + length])
        return len(cfg[off:off + length])

    nhook('NdisMGetBusData', bus_data, argc=5)

    def map_io(e, p):
        if p[2] != BAR or p[3] > BAR_LEN:
            return 0xC000009A
        e.mem_write(p[0], struct.pack('<Q', bar_virt))
        return 0

    nhook('NdisMMapIoSpace', map_io, argc=4)
    unmapped = []
    nhook('NdisMUnmapIoSpace', lambda e, p: unmapped.append(p[1]) or 0, argc=3)
    for name in ('NdisAllocateSpinLock', 'NdisFreeSpinLock', 'NdisAcquireSpinLock',
                 'NdisReleaseSpinLock'):
        nhook(name, 0, argc=1)
    pools, freed = [], dict(nbl=0, mdl=0, pool=0)

    def nbl_pool(e, p):
        pools.append(alloc(0x10, 'emu.nbl_pool'))
        return pools[-1]

    nhook('NdisAllocateNetBufferListPool', nbl_pool, argc=2)
    nhook('NdisFreeNetBufferListPool', lambda e, p: freed.__setitem__('pool', freed['pool'] + 1) or 0, argc=1)

    def make_mdl(va, length, nxt=0):
        m = alloc(0x30, 'emu.mdl')
        # Next, Size, MdlFlags (SOURCE_IS_NONPAGED_POOL), ..., MappedSystemVa,
        # StartVa, ByteCount, ByteOffset.
        se.mem_write(m, struct.pack('<QhhHHQQQII', nxt, 0x30, 0x4, 0, 0, 0, va, va & ~0xFFF, length, va & 0xFFF))
        return m

    nhook('NdisAllocateMdl', lambda e, p: make_mdl(p[1], p[2]), argc=3)
    nhook('NdisFreeMdl', lambda e, p: freed.__setitem__('mdl', freed['mdl'] + 1) or 0, argc=1)

    def make_nbl(mdl, offset, length):
        nb = alloc(0xB0, 'emu.net_buffer')
        se.mem_write(nb + 0x08, struct.pack('<QI', mdl, offset))
        se.mem_write(nb + 0x18, struct.pack('<QQI', length, mdl, offset))
        nbl = alloc(0x160, 'emu.nbl')
        se.mem_write(nbl + 0x08, struct.pack('<Q', nb))
        return nbl

    def nbl_alloc(e, p):
        return make_nbl(p[3], stack_arg(4), stack_arg(5))

    nhook('NdisAllocateNetBufferAndNetBufferList', nbl_alloc, argc=6)
    nhook('NdisFreeNetBufferList', lambda e, p: freed.__setitem__('nbl', freed['nbl'] + 1) or 0, argc=1)
    irq = {}

    def register_interrupt(e, p):
        ic = se.mem_read(p[2], 0x60)
        irq['header'] = struct.unpack_from('<BBH', ic, 0)
        irq['isr'], irq['dpc'], irq['disable'], irq['enable'] = struct.unpack_from('<QQQQ', ic, 8)
        irq['msi'] = ic[0x28]
        irq['ctx'] = p[1]
        # NDIS grants a line: the fake function has no MSI-X capability.
        e.mem_write(p[2] + 0x50, struct.pack('<I', 1))
        e.mem_write(p[3], struct.pack('<Q', 0x1A7))
        return 0

    nhook('NdisMRegisterInterruptEx', register_interrupt, argc=4)
    # Hooked only to be seen: the driver must not set up a polling timer.
    nhook('NdisAllocateTimerObject', lambda e, p: e.mem_write(p[2], struct.pack('<Q', 0x7117)) or 0, argc=3)
    nhook('NdisSetTimerObject', 0, argc=4)
    deregistered = []
    nhook('NdisMDeregisterInterruptEx', lambda e, p: deregistered.append((p[0], dev.status)) or 0, argc=1)
    flags = alloc(0x10, 'emu.isr_out')

    def isr():
        """Call the ISR as the interrupt dispatcher does; (claimed, queue DPC)."""
        se.mem_write(flags, b'\xAA' * 0x10)
        se.call(irq['isr'], [irq['ctx'], flags, flags + 8])
        last = se.get_report()['entry_points'][-1]
        if last.get('error'):
            sys.exit('FAIL: the ISR crashed: %s' % str(last['error'])[:800])
        return emu.reg_read('rax') & 0xFF, se.mem_read(flags, 1)[0]

    def fire():
        """The interrupt controller: while the device's line is asserted,
        the ISR (which must claim it and clear the status), then the DPC."""
        rounds = 0
        while dev.isr:
            rounds += 1
            if rounds > 8:
                sys.exit('FAIL: the interrupt line stays asserted')
            claimed, queue_dpc = isr()
            if not claimed or queue_dpc != 1 or dev.isr:
                sys.exit('FAIL: own interrupt: claimed %d, DPC %d, ISR status left %#x' % (
                    claimed, queue_dpc, dev.isr))
            se.call(irq['dpc'], [irq['ctx'], 0, 0, 0])
            last = se.get_report()['entry_points'][-1]
            if last.get('error'):
                sys.exit('FAIL: the DPC crashed: %s' % str(last['error'])[:800])
        return rounds
    indicated = []

    def nb_bytes(nb):
        mdl, off = u64(nb + 0x08), u32(nb + 0x10)
        left = u64(nb + 0x18)
        out = b''
        while mdl and left:
            va, count = u64(mdl + 0x18), u32(mdl + 0x28)
            take = min(count - off, left)
            out += se.mem_read(va + off, take)
            left -= take
            off = 0
            mdl = u64(mdl)
        return out

    def indicate(e, p):
        nbl = p[1]
        for _ in range(p[3]):
            indicated.append((nbl, nb_bytes(u64(nbl + 0x08)), u64(nbl + 0x90)))
            nbl = u64(nbl)
        return 0

    nhook('NdisMIndicateReceiveNetBufferLists', indicate, argc=5)
    completed = []

    def send_complete(e, p):
        nbl = p[1]
        while nbl:
            completed.append((nbl, u32(nbl + 0x8C)))
            nbl = u64(nbl)
        return 0

    nhook('NdisMSendNetBufferListsComplete', send_complete, argc=3)
    statuses = []

    def status_ex(e, p):
        ind = p[1]
        code = u32(ind + 0x14)
        buf, size = u64(ind + 0x30), u32(ind + 0x38)
        statuses.append((code, se.mem_read(buf, size)))
        return 0

    nhook('NdisMIndicateStatusEx', status_ex, argc=2)
    pause_done = []
    nhook('NdisMPauseComplete', lambda e, p: pause_done.append(1) or 0, argc=1)

    def run(name, args):
        se.call(handlers[name], args)
        last = se.get_report()['entry_points'][-1]
        if last.get('error'):
            sys.exit('%s crashed: %s' % (name, str(last['error'])[:800]))
        return emu.reg_read('rax') & 0xFFFFFFFF

    # ---- 2. MiniportInitializeEx ----
    res = alloc(0x100, 'emu.resources')
    se.mem_write(res, partial_resource_list())
    params = alloc(0x40, 'emu.init_params')
    se.mem_write(params, struct.pack('<BBHIQ', 0x81, 1, 0x40, 0, res))
    adapter_handle = 0xADA0
    calls.clear()
    st = run('initialize', [adapter_handle, 0, params])
    print('InitializeEx status %#x, calls %s' % (st, sorted(set(calls))))
    if st != 0:
        sys.exit('FAIL: InitializeEx')
    regattr, gen = attrs.get(0x9E), attrs.get(0x9F)
    if not regattr or not gen:
        sys.exit('FAIL: registration or general attributes not set: %s' % list(attrs))
    ctx = struct.unpack_from('<Q', regattr, 8)[0]
    mtu = struct.unpack_from('<I', gen, 0x10)[0]
    connect = struct.unpack_from('<I', gen, 0x38)[0]
    perm, cur = gen[0x5E:0x64], gen[0x7E:0x84]
    oid_count = struct.unpack_from('<I', gen, 0xD0)[0] // 4
    print('context %#x mtu %d link %d mac %s oids %d device status %#x features %#x' % (
        ctx, mtu, connect, perm.hex(), oid_count, dev.status, dev.driver_features))
    if not ctx or mtu != 1500 or connect != 1 or perm != MAC or cur != MAC or oid_count < 30:
        sys.exit('FAIL: general attributes')
    if dev.status != 0xF or dev.driver_features != FEATURES:
        sys.exit('FAIL: device not brought up')
    if 0xA0 not in attrs:
        sys.exit('FAIL: offload attributes missing')
    print('interrupt:', {k: (hex(v) if isinstance(v, int) else v) for k, v in irq.items()})
    if irq.get('header') != (0x84, 1, 0x60) or not all(irq.get(k) for k in ('isr', 'dpc', 'disable', 'enable')):
        sys.exit('FAIL: no line-based interrupt registered with ISR, DPC, enable and disable handlers')
    if irq['ctx'] != ctx or irq['msi'] != 0:
        sys.exit('FAIL: interrupt context is not the adapter context, or MSI claimed without handlers')
    if any('TimerObject' in c for c in calls):
        sys.exit('FAIL: a polling timer was set up besides the interrupt')
    print('emulated: InitializeEx brings the device up and registers the adapter: OK')

    # ---- 3. Restart, OIDs ----
    if run('restart', [ctx, 0]) != 0:
        sys.exit('FAIL: restart')
    req = alloc(0xF0, 'emu.oid_request')
    info = alloc(0x200, 'emu.oid_buffer')

    def oid(kind, code, data=b'', length=0x200):
        se.mem_write(req, b'\0' * 0xF0)
        se.mem_write(req, struct.pack('<BBHI', 0x96, 1, 0xF0, kind))
        se.mem_write(info, data + b'\0' * (0x200 - len(data)))
        se.mem_write(req + 0x20, struct.pack('<IIQII', code, 0, info, length, 0))
        st = run('oid', [ctx, req])
        done, needed = u32(req + 0x34), u32(req + 0x38)
        return st, se.mem_read(info, done), needed

    checks = []
    st, mac, _ = oid(0, 0x01010102)
    checks.append(('OID_802_3_CURRENT_ADDRESS', st == 0 and mac == MAC))
    st, fs, _ = oid(0, 0x00010106)
    checks.append(('OID_GEN_MAXIMUM_FRAME_SIZE', st == 0 and struct.unpack('<I', fs)[0] == 1500))
    st, ls, _ = oid(0, 0x00010207)
    checks.append(('OID_GEN_LINK_STATE', st == 0 and len(ls) == 40 and struct.unpack_from('<I', ls, 4)[0] == 1))
    st, _, needed = oid(0, 0x00020106, length=16)
    checks.append(('OID_GEN_STATISTICS short buffer', st == 0xC0010016 and needed == 0x98))
    st, _, _ = oid(1, 0x0001010E, struct.pack('<I', 0x1 | 0x8), length=4)
    checks.append(('set OID_GEN_CURRENT_PACKET_FILTER', st == 0))
    st, _, _ = oid(0, 0x0001FFFF)
    checks.append(('unknown OID', st == 0xC00000BB))
    # Checksum offload off for TCP/IPv4 (both directions): the new
    # configuration must be indicated.
    statuses.clear()
    params = struct.pack('<BBH', 0x80, 1, 20) + bytes([0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]) + struct.pack('<I', 0)
    st, _, _ = oid(1, 0xFC01020C, params, length=20)
    ok = st == 0 and len(statuses) == 1 and statuses[0][0] == 0x40020006
    if ok:
        off = statuses[0][1]
        v4tx, v4rx = struct.unpack_from('<I', off, 8)[0], struct.unpack_from('<I', off, 16)[0]
        # TcpChecksum bits 4-5 cleared, UdpChecksum bits 6-7 still set.
        ok = len(off) == 112 and off[0] == 0xA7 and v4tx & 0x30 == 0 and v4tx & 0xC0 and v4rx & 0x30 == 0
    checks.append(('OID_TCP_OFFLOAD_PARAMETERS indicates the new offloads', ok))
    print('OIDs:', checks)
    if not all(ok for _, ok in checks):
        sys.exit('FAIL: OIDs')
    print('emulated: OIDs answered: OK')

    # ---- 4. Send ----
    f1 = frame(bytes([0x52, 0x54, 0, 0, 0, 1]), bytes(range(60)))
    f2 = frame(b'\xff' * 6, b'broadcast payload ' * 3)
    buf1 = alloc(0x200, 'emu.send1')
    se.mem_write(buf1, b'\xAA' * 10 + f1[:20])          # 10 bytes before the data
    buf1b = alloc(0x200, 'emu.send1b')
    se.mem_write(buf1b, f1[20:])
    m1b = make_mdl(buf1b, len(f1) - 20)
    m1 = make_mdl(buf1, 30, m1b)
    nbl1 = make_nbl(m1, 10, len(f1))
    buf2 = alloc(0x200, 'emu.send2')
    se.mem_write(buf2, f2)
    nbl2 = make_nbl(make_mdl(buf2, len(f2)), 0, len(f2))
    se.mem_write(nbl1, struct.pack('<Q', nbl2))
    run('send', [ctx, nbl1, 0, 0])
    print('sent at device:', [s.hex()[:24] for s in dev.sent], 'completed:', completed)
    if dev.sent != [f1, f2]:
        sys.exit('FAIL: frames at the device differ from the frames sent')
    if sorted(completed) != sorted([(nbl1, 0), (nbl2, 0)]):
        sys.exit('FAIL: send completion')
    print('emulated: SendNetBufferLists frames reach the device byte-exact: OK')

    # ---- 4b. The shared line: interrupts that are not ours ----
    fire()                      # the transmit completions
    reads = dev.isr_reads
    claimed, queue_dpc = isr()  # status 0: another device's interrupt
    dev.isr = 0xFF              # a removed function reads all-ones
    claimed_ff, queue_dpc_ff = isr()
    dev.isr = 0
    print('foreign interrupt: claimed %d DPC %d; all-ones: claimed %d DPC %d; ISR reads %d' % (
        claimed, queue_dpc, claimed_ff, queue_dpc_ff, dev.isr_reads - reads))
    if claimed or queue_dpc or claimed_ff or queue_dpc_ff:
        sys.exit('FAIL: the ISR claimed an interrupt that is not its device\'s')
    if dev.isr_reads - reads != 2:
        sys.exit('FAIL: the ISR must read the ISR status once per call')
    print('emulated: the ISR refuses interrupts that are not ours (shared line): OK')

    # ---- 5. Receive ----
    r1 = frame(MAC, b'to us ' * 10)
    r2 = frame(b'\xff' * 6, b'to everyone ' * 5)
    r3 = frame(bytes([0x52, 0x54, 0, 0, 0, 7]), b'not ours ' * 7)
    if not all(dev.inject(f) for f in (r1, r2, r3)):
        sys.exit('FAIL: the driver posted no receive buffers')
    if indicated:
        sys.exit('FAIL: frames indicated before any interrupt')
    if not dev.isr & 1:
        sys.exit('FAIL: the device raised no queue interrupt for its receives')
    fire()
    got = [d for _, d, _ in indicated]
    print('indicated:', [g.hex()[:24] for g in got])
    if got != [r1, r2]:
        sys.exit('FAIL: indications differ from the frames injected (want the first two)')
    print('emulated: injected frames arrive as indications, filtered: OK')

    # ---- 5b. Link down, then up: each change indicated once ----
    statuses.clear()
    dev.set_link(0)
    fire()
    dev.isr |= 1                # an unrelated queue interrupt: no new link state
    fire()
    dev.set_link(1)
    fire()
    states = [(c, struct.unpack_from('<I', b, 4)[0]) for c, b in statuses]
    print('link indications:', states)
    if states != [(0x40010017, 2), (0x40010017, 1)]:
        sys.exit('FAIL: link changes not indicated as NDIS_STATUS_LINK_STATE (down, then up)')
    st, ls, _ = oid(0, 0x00010207)
    if st != 0 or struct.unpack_from('<I', ls, 4)[0] != 1:
        sys.exit('FAIL: OID_GEN_LINK_STATE after the link came back')
    print('emulated: link changes indicated: OK')

    # ---- 6. Pause with NBLs lent, return, restart; send while paused ----
    st = run('pause', [ctx, 0])
    if st != 0x103:
        sys.exit('FAIL: pause with lent NBLs must pend (got %#x)' % st)
    lent = [n for n, _, _ in indicated]
    for a, b in zip(lent, lent[1:] + [0]):
        se.mem_write(a, struct.pack('<Q', b))
    run('return', [ctx, lent[0], 0])
    if not pause_done:
        sys.exit('FAIL: pause not completed after the last NBL came back')
    completed.clear()
    se.mem_write(nbl2, struct.pack('<Q', 0))
    run('send', [ctx, nbl2, 0, 0])
    if completed != [(nbl2, STATUS_PAUSED)] or len(dev.sent) != 2:
        sys.exit('FAIL: send while paused: %s' % completed)
    if run('restart', [ctx, 0]) != 0:
        sys.exit('FAIL: restart')
    print('emulated: Pause/Restart: OK')

    # ---- 7. A garbage used entry ----
    resets_before = dev.resets
    dev.garbage_used()
    fire()
    last = se.get_report()['entry_points'][-1]
    if last.get('error'):
        sys.exit('FAIL: garbage used entry crashed the driver: %s' % str(last['error'])[:800])
    print('after garbage: resets %d -> %d, status %#x' % (resets_before, dev.resets, dev.status))
    if dev.resets <= resets_before or dev.status != 0xF:
        sys.exit('FAIL: the device was not reset and rebuilt after a garbage used entry')
    indicated.clear()
    r4 = frame(MAC, b'after reset ' * 4)
    if not dev.inject(r4):
        sys.exit('FAIL: no receive buffers after the reset')
    fire()
    if [d for _, d, _ in indicated] != [r4]:
        sys.exit('FAIL: no receive after the reset')
    print('emulated: a garbage used entry resets the device, no crash: OK')

    # ---- 8. Halt ----
    for n, _, _ in indicated:
        se.mem_write(n, struct.pack('<Q', 0))
        run('return', [ctx, n, 0])
    run('halt', [ctx, 0])
    print('halt: device status %#x, unmapped %s, deregistered %s, freed %s' % (
        dev.status, [hex(u) for u in unmapped], deregistered, freed))
    if dev.status != 0:
        sys.exit('FAIL: device not reset on halt')
    if unmapped != [bar_virt]:
        sys.exit('FAIL: BAR not unmapped')
    if deregistered != [(0x1A7, 0)]:
        sys.exit('FAIL: the interrupt must be deregistered once, after the device reset')
    if freed['pool'] != 1 or freed['nbl'] != freed['mdl'] or freed['nbl'] < 1:
        sys.exit('FAIL: NBLs, MDLs or the pool not freed')
    if dev.bad:
        sys.exit('FAIL: the device saw protocol faults: %s' % dev.bad)
    print('emulated: Halt resets the device and frees everything: OK')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
