"""Emulated run of pvballoon.sys under speakeasy.

1. DriverEntry: must return STATUS_SUCCESS and register the PnP dispatch
   and AddDevice (speakeasy's DRIVER_OBJECT lacks the DRIVER_EXTENSION
   Windows always gives: added here).
2. AddDevice with a fake PDO: an FDO attached below (hooked
   IoAttachDeviceToDeviceStack), DO_POWER_PAGABLE, initialised.
3. IRP_MN_START_DEVICE with raw/translated CM_RESOURCE_LISTs naming BAR0;
   the IRPs the driver sends down are answered by the hooked IofCallDriver
   (START succeeds, IRP_MN_READ_CONFIG returns a virtio-balloon config
   space with the four virtio PCI capabilities). MmMapIoSpaceEx maps BAR0
   to emulated memory whose reads and writes a fake virtio-balloon device
   (class Device) serves: common config, notify, device config; it
   processes virtqueues in emulated memory when notified.
4. The worker thread PsCreateSystemThread was asked for runs; each
   KeWaitForSingleObject is a tick in which the script plays the host:
   num_pages = 300, a stats request, num_pages = 100, then stop.
5. IRP_MN_REMOVE_DEVICE.

Checks: the device's balloon holds exactly 300 frames, all handed out by
the hooked MmAllocatePagesForMdlEx; after the deflate it holds 100 of
them and the 200 others were freed with MmFreePagesFromMdl; `actual` is
100; the stats buffer carries MEMTOT and AVAIL from the hooked
ZwQuerySystemInformation; on remove the device is reset, every page comes
back, BAR0 is unmapped and the FDO detached and deleted.

What speakeasy lacks is hooked here (ExAllocatePool2, the Mm* memory calls,
IoBuildSynchronousFsdRequest, __chkstk, ...). No IRQL, no concurrency, no
interrupts, identity "physical" addresses: this tests the glue, not timing.
Run by tests/tests/windows_drivers.rs (venv under the cache root).

usage: python balloon_harness.py path/to/pvballoon.sys
"""
import struct
import sys

import speakeasy

DRIVER_OBJECT_EXTENSION = 0x30
DRIVER_OBJECT_MAJOR = 0x70
IRP_MJ_PNP = 0x1B


def main(path):
    se = speakeasy.Speakeasy()
    calls = []

    def hook(name, ret, argc=0):
        def cb(emu, api_name, func, params):
            calls.append(api_name)
            try:
                return ret(emu, params) if callable(ret) else ret
            except Exception as e:
                print('hook %s failed: %r' % (api_name, e))
                raise
        se.add_api_hook(cb, 'ntoskrnl', name, argc=argc)

    messages = []

    def dbgprint(emu, params):
        # DbgPrintEx(component, level, "%.*s\n", len, ptr)
        try:
            # The fifth argument is on the stack: return address, 32 bytes
            # of home space, then it.
            rsp = emu.reg_read('rsp')
            ptr = struct.unpack('<Q', emu.mem_read(rsp + 0x28, 8))[0]
            messages.append(emu.mem_read(ptr, params[3]).decode('utf-8', 'replace'))
        except Exception as e:  # noqa: BLE001 - report, do not kill the emulator
            messages.append('unreadable: %r %r' % (e, params))
        return 0

    hook('DbgPrintEx', dbgprint, argc=5)

    pool = []

    def alloc(emu, params):
        size = params[1]
        addr = emu.mem_map(max(size, 16), tag='emu.pool.pvdr')
        emu.mem_write(addr, b'\0' * size)
        pool.append(addr)
        return addr

    hook('ExAllocatePool2', alloc, argc=3)
    hook('ExFreePoolWithTag', 0, argc=2)
    lower = {}

    def attach(emu, params):
        lower['dev'] = emu.mem_map(0x150, tag='emu.lower_device')
        return lower['dev']

    hook('IoAttachDeviceToDeviceStack', attach, argc=2)

    module = se.load_module(path)
    # speakeasy sizes the stack from the image's SizeOfStackCommit (4 KiB
    # here); a Windows x64 kernel stack is 24 KiB (KERNEL_STACK_SIZE).
    se.emu.stack_base, _ = se.emu.alloc_stack(0x6000)
    # speakeasy's DRIVER_OBJECT has no DRIVER_EXTENSION (Windows always
    # gives one): add it, with DriverObject pointing back.
    orig = se.emu.create_driver_object

    def create_driver_object(*a, **k):
        drv = orig(*a, **k)
        ext = se.emu.mem_map(0x40, tag='emu.driver_extension')
        se.emu.mem_write(ext, struct.pack('<Q', drv.address) + b'\0' * 0x38)
        drv.object.DriverExtension = ext
        drv.write_back()
        return drv

    se.emu.create_driver_object = create_driver_object
    se.run_module(module)
    report = se.get_report()
    ep = report['entry_points'][0]
    ret = ep.get('ret_val')
    print('DriverEntry returned', ret)
    print('DbgPrintEx:', messages, 'hooked calls:', calls)
    if ret not in ('0x0', 0) or ep.get('error'):
        sys.exit('DriverEntry failed: %s' % str(ep.get('error'))[:600])
    drv = int(ep['ep_args'][0], 16)
    pnp = struct.unpack('<Q', se.mem_read(drv + DRIVER_OBJECT_MAJOR + 8 * IRP_MJ_PNP, 8))[0]
    ext = struct.unpack('<Q', se.mem_read(drv + DRIVER_OBJECT_EXTENSION, 8))[0]
    add_device = struct.unpack('<Q', se.mem_read(ext + 8, 8))[0]
    print('IRP_MJ_PNP dispatch %#x, AddDevice %#x' % (pnp, add_device))
    if not pnp or not add_device:
        sys.exit('DriverEntry did not register PnP dispatch and AddDevice')

    # AddDevice(driver, pdo): a fake PDO below us.
    pdo = se.emu.mem_map(0x150, tag='emu.pdo')
    se.emu.mem_write(pdo, b'\0' * 0x150)
    calls.clear()
    se.call(add_device, [drv, pdo])
    fdo = struct.unpack('<Q', se.mem_read(drv + 0x08, 8))[0]
    print('AddDevice calls', calls, 'FDO %#x' % fdo)
    if not fdo:
        sys.exit('AddDevice created no device')
    flags = struct.unpack('<I', se.mem_read(fdo + 0x30, 4))[0]
    ext_ptr = struct.unpack('<Q', se.mem_read(fdo + 0x40, 8))[0]
    lower_seen = struct.unpack('<Q', se.mem_read(ext_ptr, 8))[0] if ext_ptr else 0
    print('FDO flags %#x, extension %#x, lower %#x (attached %#x)'
          % (flags, ext_ptr, lower_seen, lower.get('dev', 0)))
    if flags & 0x80:
        sys.exit('DO_DEVICE_INITIALIZING still set')
    if not flags & 0x2000:
        sys.exit('DO_POWER_PAGABLE not set')
    if lower_seen != lower.get('dev'):
        sys.exit('the extension does not hold the lower device')
    print('emulated: DriverEntry and AddDevice OK')
    return start_and_balloon(se, hook, calls, drv, fdo, pnp)


# ---- the fake virtio-balloon PCI function ---------------------------------

BAR = 0xFE000000          # bus = CPU physical address of BAR0 (64-bit)
BAR_LEN = 0x4000
COMMON, NOTIFY, ISR, DEVCFG = 0x0, 0x1000, 0x2000, 0x3000
NOTIFY_MULT = 4
QSIZE = 32
NQUEUES = 3               # inflate, deflate, stats
F_MUST_TELL_HOST, F_STATS_VQ, F_VERSION_1 = 1 << 0, 1 << 1, 1 << 32
FEATURES = F_MUST_TELL_HOST | F_STATS_VQ | F_VERSION_1
GUEST_PAGES = 262144      # 1 GiB of 4 KiB pages


def config_space():
    c = bytearray(256)
    struct.pack_into('<HH', c, 0, 0x1AF4, 0x1045)       # virtio, balloon (modern)
    struct.pack_into('<H', c, 0x06, 0x10)                # status: capability list
    struct.pack_into('<I', c, 0x08, 0x05000001)          # class, revision 1
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


def resource_list():
    # CM_RESOURCE_LIST: one full descriptor, one CmResourceTypeMemory.
    head = struct.pack('<IIIHHI', 1, 5, 0, 1, 1, 1)
    part = struct.pack('<BBHQII', 3, 1, 0, BAR, BAR_LEN, 0)
    return head + part


class Device:
    def __init__(self, se, virt):
        self.se, self.virt = se, virt
        self.status = 0
        self.dfsel = self.gfsel = 0
        self.driver_features = 0
        self.qsel = 0
        self.q = [dict(size=QSIZE, enable=0, desc=0, driver=0, device=0, last=0)
                  for _ in range(NQUEUES)]
        self.num_pages = 0
        self.actual = 0
        self.generation = 0
        self.balloon = set()
        self.stats_head = None
        self.last_stats = b''
        self.bad = []

    def w(self, off, fmt, v):
        self.se.mem_write(self.virt + off, struct.pack(fmt, v))

    def r(self, addr, fmt):
        return struct.unpack(fmt, self.se.mem_read(addr, struct.calcsize(fmt)))[0]

    def refresh(self):
        self.w(COMMON + 0x04, '<I', (FEATURES >> (32 * self.dfsel)) & 0xFFFFFFFF if self.dfsel < 2 else 0)
        self.w(COMMON + 0x12, '<H', NQUEUES)
        self.w(COMMON + 0x14, '<B', self.status)
        self.w(COMMON + 0x15, '<B', self.generation & 0xFF)
        q = self.q[self.qsel] if self.qsel < NQUEUES else None
        self.w(COMMON + 0x18, '<H', q['size'] if q else 0)
        self.w(COMMON + 0x1C, '<H', q['enable'] if q else 0)
        self.w(COMMON + 0x1E, '<H', self.qsel)
        for o, k in ((0x20, 'desc'), (0x28, 'driver'), (0x30, 'device')):
            self.w(COMMON + o, '<Q', q[k] if q else 0)
        self.w(DEVCFG + 0, '<I', self.num_pages)
        self.w(DEVCFG + 4, '<I', self.actual)

    def set_num_pages(self, n):
        self.num_pages = n
        self.generation += 1
        self.refresh()

    def on_write(self, se, access, addr, size, value, ctx):
        off = addr - self.virt
        if NOTIFY <= off < ISR:
            self.process(value & 0xFFFF)
            return True
        if DEVCFG <= off < DEVCFG + 0x10:
            if off == DEVCFG + 4:
                self.actual = value & 0xFFFFFFFF
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
                self.__init__(se, self.virt)
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
        # Registers that depend on this write are refreshed on the next
        # read (on_read), after the write itself has landed.
        return True

    def on_read(self, se, access, addr, size, value, ctx):
        self.refresh()
        return True

    def chains(self, qi):
        # Available chains not yet taken: (head, [(addr, len, flags)]).
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

    def process(self, qi):
        if qi >= NQUEUES or not self.q[qi]['enable']:
            self.bad.append('notify of queue %d' % qi)
            return
        for head, descs in self.chains(qi):
            data = b''.join(self.se.mem_read(a, ln) for a, ln, _ in descs)
            if qi == 2:
                self.stats_head, self.last_stats = head, data
                continue
            pfns = struct.unpack('<%dI' % (len(data) // 4), data)
            if qi == 0:
                self.balloon.update(pfns)
            else:
                self.balloon.difference_update(pfns)
            self.push_used(qi, head)

    def request_stats(self):
        if self.stats_head is None:
            return False
        self.push_used(2, self.stats_head)
        self.stats_head = None
        return True


def start_and_balloon(se, hook, calls, drv, fdo, pnp):
    emu = se.emu
    bar_virt = emu.mem_map(BAR_LEN, tag='emu.virtio_balloon_bar0')
    emu.mem_write(bar_virt, b'\0' * BAR_LEN)
    dev = Device(se, bar_virt)
    dev.refresh()
    se.add_mem_write_hook(dev.on_write, begin=bar_virt, end=bar_virt + BAR_LEN - 1)
    se.add_mem_read_hook(dev.on_read, begin=bar_virt, end=bar_virt + BAR_LEN - 1)
    cfg = config_space()

    def u64(a):
        return struct.unpack('<Q', se.mem_read(a, 8))[0]

    def stack_arg(n):
        # Argument n (0-based, n >= 4) of the API being hooked.
        return u64(emu.reg_read('rsp') + 8 + 8 * n)

    hook('__chkstk', lambda e, p: e.reg_read('rax'))
    hook('MmMapIoSpaceEx', lambda e, p: bar_virt if p[0] == BAR and p[1] <= BAR_LEN else 0, argc=3)
    unmapped = []
    hook('MmUnmapIoSpace', lambda e, p: unmapped.append(p[0]) or 0, argc=2)

    def contiguous(e, p):
        size = (p[0] + 0xFFF) & ~0xFFF
        a = e.mem_map(size, tag='emu.contiguous')
        e.mem_write(a, b'\0' * size)
        return a

    hook('MmAllocateContiguousMemorySpecifyCache', contiguous, argc=5)
    hook('MmFreeContiguousMemorySpecifyCache', 0, argc=3)
    # Identity "physical" addresses: the device model reads the same memory.
    hook('MmGetPhysicalAddress', lambda e, p: p[0], argc=1)
    hook('MmGetVirtualForPhysical', lambda e, p: p[0], argc=1)

    def sysinfo(e, p):
        cls, buf, length = p[0], p[1], p[2]
        b = bytearray(length)
        if cls == 0:
            struct.pack_into('<II', b, 0x08, 4096, GUEST_PAGES)
        elif cls == 2:
            struct.pack_into('<I', b, 0x2C, 200000)   # AvailablePages
            struct.pack_into('<I', b, 0x3C, 5000)     # PageFaultCount
            struct.pack_into('<I', b, 0x54, 300)      # PageReadIoCount
        e.mem_write(buf, bytes(b))
        return 0

    hook('ZwQuerySystemInformation', sysinfo, argc=4)
    mdls = {}
    freed = []
    next_pfn = [0x20000]

    def pages_for_mdl(e, p):
        mdl = e.mem_map(0x40, tag='emu.mdl')
        pfn = next_pfn[0]
        next_pfn[0] += 1
        e.mem_write(mdl, b'\0' * 0x28 + struct.pack('<II', 4096, 0) + struct.pack('<Q', pfn))
        mdls[mdl] = pfn
        return mdl

    hook('MmAllocatePagesForMdlEx', pages_for_mdl, argc=6)
    hook('MmFreePagesFromMdl', lambda e, p: freed.append(mdls.get(p[0])) or 0, argc=1)
    hook('ExFreePool', 0, argc=1)

    fsd = {}

    def build_fsd(e, p):
        irp = e.mem_map(0xD0 + 0x48, tag='emu.irp.fsd')
        e.mem_write(irp, b'\0' * (0xD0 + 0x48))
        e.mem_write(irp + 0x43, bytes([2]))
        e.mem_write(irp + 0xB8, struct.pack('<Q', irp + 0xD0 + 0x48))
        e.mem_write(irp + 0xD0, bytes([p[0]]))
        fsd['iosb'] = stack_arg(6)
        return irp

    hook('IoBuildSynchronousFsdRequest', build_fsd, argc=7)

    def call_driver(e, p):
        irp = p[1]
        nxt = u64(irp + 0xB8) - 0x48
        major, minor = se.mem_read(nxt, 2)
        if major == 0x1B and minor == 0x0F:
            _which, buf, off, length = struct.unpack('<QQQQ', se.mem_read(nxt + 8, 32))
            se.mem_write(buf, cfg[off:off + length])
        e.mem_write(irp + 0x30, struct.pack('<QQ', 0, 0))
        return 0

    hook('IofCallDriver', call_driver, argc=2)
    thread = {}

    def create_thread(e, p):
        thread['start'], thread['ctx'] = stack_arg(5), stack_arg(6)
        e.mem_write(p[0], struct.pack('<Q', 0x1234))
        return 0

    hook('PsCreateSystemThread', create_thread, argc=7)
    hook('PsTerminateSystemThread', 0, argc=1)
    hook('ZwWaitForSingleObject', 0, argc=3)
    hook('ZwClose', 0, argc=1)

    # IRP_MN_START_DEVICE from the PnP manager: two stack locations.
    raw = emu.mem_map(0x100, tag='emu.resources.raw')
    tr = emu.mem_map(0x100, tag='emu.resources.translated')
    emu.mem_write(raw, resource_list())
    emu.mem_write(tr, resource_list())
    irp = emu.mem_map(0xD0 + 2 * 0x48, tag='emu.irp.start')
    emu.mem_write(irp, b'\0' * (0xD0 + 2 * 0x48))
    cur = irp + 0xD0 + 0x48
    emu.mem_write(irp + 0x42, bytes([2, 2]))
    emu.mem_write(irp + 0xB8, struct.pack('<Q', cur))
    emu.mem_write(cur, bytes([0x1B, 0x00]) + b'\0' * 6 + struct.pack('<QQ', raw, tr))
    calls.clear()
    se.call(pnp, [fdo, irp])
    last = se.get_report()['entry_points'][-1]
    if last.get('error'):
        sys.exit('START_DEVICE crashed: %s' % str(last['error'])[:600])
    status = struct.unpack('<i', se.mem_read(irp + 0x30, 4))[0]
    print('START_DEVICE status %#x, calls %s' % (status & 0xFFFFFFFF, calls))
    if status != 0:
        sys.exit('START_DEVICE failed')
    if dev.status != 0xF or dev.driver_features != FEATURES:
        sys.exit('device not brought up: status %#x features %#x' % (dev.status, dev.driver_features))
    if not thread:
        sys.exit('no worker thread')

    # The worker: each KeWaitForSingleObject is a tick; the script plays
    # the host between ticks. STATUS_TIMEOUT runs a round, 0 stops.
    script = [lambda: dev.set_num_pages(300), None, None, None,
              lambda: dev.request_stats(), None,
              lambda: dev.set_num_pages(100), None, None, None]
    ticks = [0]
    seen = {}

    def wait(e, p):
        i = ticks[0]
        ticks[0] += 1
        if i == 4:
            seen['inflated'] = set(dev.balloon)
        if i < len(script):
            if script[i]:
                script[i]()
            return 0x102
        return 0

    hook('KeWaitForSingleObject', wait, argc=5)
    se.call(thread['start'], [thread['ctx']])
    handed = set(mdls.values())
    inflated = seen.get('inflated', set())
    print('ticks', ticks[0], 'inflated', len(inflated), 'now in balloon', len(dev.balloon),
          'freed', len(freed), 'actual', dev.actual, 'device complaints', dev.bad)
    stats = {struct.unpack_from('<H', dev.last_stats, i)[0]: struct.unpack_from('<Q', dev.last_stats, i + 2)[0]
             for i in range(0, len(dev.last_stats) - 9, 10)}
    print('stats', stats)
    ok = True
    if len(inflated) != 300 or not inflated <= handed:
        print('FAIL: the balloon does not hold 300 pages the driver allocated')
        ok = False
    if len(dev.balloon) != 100 or not dev.balloon <= inflated:
        print('FAIL: deflate to 100 pages')
        ok = False
    if sorted(freed) != sorted(inflated - dev.balloon):
        print('FAIL: deflated pages were not the ones freed')
        ok = False
    if dev.actual != 100:
        print('FAIL: actual %d' % dev.actual)
        ok = False
    if stats.get(5) != GUEST_PAGES * 4096 or stats.get(6) != 200000 * 4096:
        print('FAIL: stats')
        ok = False
    if not ok:
        sys.exit(1)
    print('emulated: start, inflate 300, stats, deflate to 100: OK')

    # IRP_MN_REMOVE_DEVICE: the worker is joined (its routine returned
    # above), the balloon dropped: the device is reset and every page it
    # still held goes back to the kernel; the BAR is unmapped, the FDO
    # detached and deleted.
    hook('IoDetachDevice', 0, argc=1)
    hook('IoDeleteDevice', 0, argc=1)
    emu.mem_write(cur, bytes([0x1B, 0x02]) + b'\0' * 38)
    emu.mem_write(irp + 0x43, bytes([2]))
    emu.mem_write(irp + 0xB8, struct.pack('<Q', cur))
    calls.clear()
    se.call(pnp, [fdo, irp])
    last = se.get_report()['entry_points'][-1]
    if last.get('error'):
        sys.exit('REMOVE_DEVICE crashed: %s' % str(last['error'])[:600])
    print('REMOVE_DEVICE calls', calls)
    if sorted(freed) != sorted(inflated):
        sys.exit('FAIL: after remove, freed %d of the %d pages' % (len(freed), len(inflated)))
    if dev.status != 0:
        sys.exit('FAIL: device not reset on remove (status %#x)' % dev.status)
    if unmapped != [bar_virt]:
        sys.exit('FAIL: BAR not unmapped: %s' % unmapped)
    if 'ntoskrnl.IoDeleteDevice' not in calls or 'ntoskrnl.IoDetachDevice' not in calls:
        sys.exit('FAIL: FDO not detached and deleted')
    print('emulated: remove gives every page back: OK')
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1]))
