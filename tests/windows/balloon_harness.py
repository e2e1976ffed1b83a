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
   The resource lists also carry a shared level-triggered interrupt: the
   driver must connect it with IoConnectInterruptEx (fully specified, the
   translated vector/IRQL/mode/affinity); the harness keeps the ISR, its
   context, and the DPC routine from KeInitializeDpc.
4. The worker thread PsCreateSystemThread was asked for runs until it
   blocks: a wait on its wake event that nobody set, with no timeout (an
   interrupt is connected: no polling). The harness then stops the
   emulation ("the thread sleeps"), and plays the interrupt controller:
   while the device's ISR status is non-zero (the line is asserted), it
   calls the ISR, then the DPC the ISR queued, then lets the worker run
   again (the wake event set by the DPC). The host moves num_pages to 300
   (config change), asks for stats (a used stats buffer), moves it to 100.
   The ISR is also called with the ISR status 0 (another device on the
   shared line): it must not claim the interrupt nor queue the DPC.
5. IRP_MJ_POWER / IRP_MN_SET_POWER to D3: the worker is told to stop and
   joined, the device reset and every page freed, the interrupt
   disconnected and DPCs flushed, PoSetPowerState(D3), all before the IRP
   goes down (any device access after that, while in D3, is a fault);
   the old worker, run again, ends. Then D0: the IRP goes down first,
   then the device is brought up again, a new interrupt connected, and the
   new worker inflates to the host's unchanged target (100).
6. IRP_MN_QUERY_REMOVE_DEVICE quiesces (device reset, every page back),
   IRP_MN_CANCEL_REMOVE_DEVICE brings the balloon back (inflated to 100
   again); IRP_MN_SURPRISE_REMOVAL with the function gone (every register
   reads all-ones) must return without spinning on the device, give every
   page back and disconnect; IRP_MN_REMOVE_DEVICE then unmaps BAR0 and
   detaches and deletes the FDO.

Checks: the balloon holds exactly the frames the driver allocated with the
hooked MmAllocatePagesForMdlEx; the deflated ones were freed with
MmFreePagesFromMdl; `actual`; the stats buffer carries MEMTOT and AVAIL
from the hooked ZwQuerySystemInformation; the steps above.

What speakeasy lacks is hooked here (ExAllocatePool2, the Mm* memory calls,
IoBuildSynchronousFsdRequest, IoConnectInterruptEx, the DPC calls,
__chkstk, ...). No IRQL, no concurrency (the ISR and DPC run when the
harness calls them, between worker runs), identity "physical" addresses:
this tests the glue, not timing.
Run by tests/tests/windows_drivers.rs (venv under the cache root).

A second mode (`poll`) starts the driver without an interrupt resource:
nothing may be connected, the log must say the worker polls, and the
worker must inflate to the target on 100 ms timed waits, acknowledging the
ISR status itself; a surprise removal then gives every page back.

usage: python balloon_harness.py path/to/pvballoon.sys [interrupt|poll]
"""
import struct
import sys

import speakeasy

from virtio_pci import BAR, BAR_LEN, DEVCFG, F_VERSION_1, VirtioPciDevice, config_space

DRIVER_OBJECT_EXTENSION = 0x30
DRIVER_OBJECT_MAJOR = 0x70
IRP_MJ_PNP = 0x1B
IRP_MJ_POWER = 0x16
# DbgPrintEx output, in order.
MESSAGES = []


def main(path, mode='interrupt'):
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

    messages = MESSAGES

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
    if mode == 'poll':
        return start_without_interrupt(se, hook, calls, drv, fdo, pnp, pdo)
    return start_and_balloon(se, hook, calls, drv, fdo, pnp, pdo)


# ---- the fake virtio-balloon PCI function ---------------------------------

QSIZE = 32
NQUEUES = 3               # inflate, deflate, stats
F_MUST_TELL_HOST, F_STATS_VQ = 1 << 0, 1 << 1
FEATURES = F_MUST_TELL_HOST | F_STATS_VQ | F_VERSION_1
GUEST_PAGES = 262144      # 1 GiB of 4 KiB pages


def end_run(emu):
    """End the current run before its next instruction (what speakeasy does
    when an emulated thread exits): the code it was running never goes on."""
    emu.enable_code_hook()
    emu.run_complete = True


IRQ_VECTOR, IRQ_LEVEL, IRQ_AFFINITY = 0x71, 5, 0x1


def resource_list(interrupt=True):
    # CM_RESOURCE_LIST: one full descriptor; a CmResourceTypeMemory and a
    # CmResourceTypeInterrupt (shared, level-sensitive: Level/Group as two
    # USHORTs, Vector, Affinity).
    parts = [struct.pack('<BBHQII', 3, 1, 0, BAR, BAR_LEN, 0)]
    if interrupt:
        parts.append(struct.pack('<BBHHHIQ', 2, 3, 0, IRQ_LEVEL, 0, IRQ_VECTOR, IRQ_AFFINITY))
    head = struct.pack('<IIIHHI', 1, 5, 0, 1, 1, len(parts))
    return head + b''.join(parts)


class Device(VirtioPciDevice):
    """virtio-balloon (virtio 1.2 5.5) over the shared PCI model: inflate,
    deflate and stats queues; num_pages and actual in config. It also
    plays power and removal: any access in D3 is a fault, and a removed
    function reads all-ones."""

    FEATURES = FEATURES
    NQUEUES = NQUEUES
    QSIZE = QSIZE

    def __init__(self, se, virt):
        self.powered = True
        self.gone = False
        self.gone_reads = 0
        self.num_pages = 0
        self.balloon_reset()
        super().__init__(se, virt)

    def balloon_reset(self):
        self.actual = 0
        self.generation = 0
        self.balloon = set()
        self.stats_head = None
        self.last_stats = b''

    def on_reset(self, was):
        self.balloon_reset()

    def device_config(self):
        self.w(DEVCFG + 0, '<I', self.num_pages)
        self.w(DEVCFG + 4, '<I', self.actual)

    def device_config_write(self, off, value):
        if off == 4:
            self.actual = value & 0xFFFFFFFF

    def set_num_pages(self, n):
        self.num_pages = n
        self.generation += 1
        self.isr |= 2                      # config change interrupt
        self.refresh()

    def check_access(self, what):
        if not self.powered:
            self.bad.append('%s while in D3' % what)

    def on_write(self, se, access, addr, size, value, ctx):
        self.check_access('write at %#x' % (addr - self.virt))
        if self.gone:
            return True
        return super().on_write(se, access, addr, size, value, ctx)

    def on_read(self, se, access, addr, size, value, ctx):
        self.check_access('read at %#x' % (addr - self.virt))
        if self.gone:
            # Surprise-removed: every register reads all-ones. A driver
            # that spins on it is stopped after a bound.
            se.mem_write(self.virt, b'\xff' * BAR_LEN)
            self.gone_reads += 1
            if self.gone_reads > 10000:
                self.bad.append('spins on a removed device')
                end_run(se.emu)
            return True
        return super().on_read(se, access, addr, size, value, ctx)

    def notify(self, qi):
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
        self.refresh()
        return True


def start_without_interrupt(se, hook, calls, drv, fdo, pnp, pdo):
    return start_and_balloon(se, hook, calls, drv, fdo, pnp, pdo, interrupt=False)


def start_and_balloon(se, hook, calls, drv, fdo, pnp, pdo, interrupt=True):
    emu = se.emu
    bar_virt = emu.mem_map(BAR_LEN, tag='emu.virtio_balloon_bar0')
    emu.mem_write(bar_virt, b'\0' * BAR_LEN)
    dev = Device(se, bar_virt)
    dev.hook()
    cfg = config_space(0x1045, 0x0500)   # balloon (modern)
    power = struct.unpack('<Q', se.mem_read(drv + DRIVER_OBJECT_MAJOR + 8 * IRP_MJ_POWER, 8))[0]

    def u64(a):
        return struct.unpack('<Q', se.mem_read(a, 8))[0]

    def stack_arg(n):
        # Argument n (0-based, n >= 4) of the API being hooked.
        return u64(emu.reg_read('rsp') + 8 + 8 * n)

    # Order of the events the checks below are about.
    log = []
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

    def free_mdl(e, p):
        freed.append(mdls.get(p[0]))
        return 0

    hook('MmAllocatePagesForMdlEx', pages_for_mdl, argc=6)
    hook('MmFreePagesFromMdl', free_mdl, argc=1)
    hook('ExFreePool', 0, argc=1)

    def build_fsd(e, p):
        irp = e.mem_map(0xD0 + 0x48, tag='emu.irp.fsd')
        e.mem_write(irp, b'\0' * (0xD0 + 0x48))
        e.mem_write(irp + 0x43, bytes([2]))
        e.mem_write(irp + 0xB8, struct.pack('<Q', irp + 0xD0 + 0x48))
        e.mem_write(irp + 0xD0, bytes([p[0]]))
        return irp

    hook('IoBuildSynchronousFsdRequest', build_fsd, argc=7)

    def call_driver(e, p):
        irp = p[1]
        nxt = u64(irp + 0xB8) - 0x48
        major, minor = se.mem_read(nxt, 2)
        if major == 0x1B and minor == 0x0F:
            _which, buf, off, length = struct.unpack('<QQQQ', se.mem_read(nxt + 8, 32))
            se.mem_write(buf, cfg[off:off + length])
        if major == IRP_MJ_POWER and minor == 0x02:
            kind, state = struct.unpack('<QQ', se.mem_read(nxt + 16, 16))
            if kind == 1:
                # The bus driver below sets the function's power state.
                dev.powered = state == 1
                log.append('lower D%d' % (state - 1))
        e.mem_write(irp + 0x30, struct.pack('<QQ', 0, 0))
        return 0

    hook('IofCallDriver', call_driver, argc=2)
    threads = []

    def create_thread(e, p):
        threads.append((stack_arg(5), stack_arg(6)))
        e.mem_write(p[0], struct.pack('<Q', 0x1234 + len(threads)))
        log.append('thread')
        return 0

    hook('PsCreateSystemThread', create_thread, argc=7)
    terminated = []
    hook('PsTerminateSystemThread', lambda e, p: terminated.append(1) or 0, argc=1)
    hook('ZwWaitForSingleObject', lambda e, p: log.append('join') or 0, argc=3)
    hook('ZwClose', 0, argc=1)

    # Events: KeInitializeEvent/KeSetEvent/KeWaitForSingleObject kept here,
    # so a wait on an event nobody set is seen as the thread sleeping.
    events = {}

    def init_event(e, p):
        events[p[0]] = dict(kind=p[1], set=bool(p[2]))
        return 0

    def set_event(e, p):
        ev = events.setdefault(p[0], dict(kind=0, set=False))
        ev['set'] = True
        log.append('set %#x' % p[0])
        return 0

    waits = []
    # Timed waits (polling) the harness lets time out before it ends the
    # run: each is a tick of the worker.
    poll_budget = [0]

    def wait(e, p):
        ev = events.get(p[0])
        if ev is None or ev['set']:
            if ev is not None and ev['kind'] == 1:
                ev['set'] = False              # synchronization event
            return 0
        if p[4] and poll_budget[0] > 0:
            poll_budget[0] -= 1
            waits.append(struct.unpack('<q', se.mem_read(p[4], 8))[0])
            return 0x102                       # STATUS_TIMEOUT: a tick
        # Nobody set it: the thread sleeps. End this run; the harness
        # resumes the thread (from its start routine) once the event is set.
        waits.append(p[4])
        end_run(e)
        return 0x102

    hook('KeInitializeEvent', init_event, argc=3)
    hook('KeSetEvent', set_event, argc=3)
    hook('KeWaitForSingleObject', wait, argc=5)

    dpcs = {}
    queued = []

    def init_dpc(e, p):
        dpcs[p[0]] = (p[1], p[2])
        return 0

    def insert_dpc(e, p):
        queued.append(p[0])
        return 1

    hook('KeInitializeDpc', init_dpc, argc=3)
    hook('KeInsertQueueDpc', insert_dpc, argc=3)
    hook('KeFlushQueuedDpcs', lambda e, p: log.append('flush dpcs') or 0, argc=0)
    connected = []

    def connect(e, p):
        ver = struct.unpack('<I', se.mem_read(p[0], 4))[0]
        fs = se.mem_read(p[0] + 8, 0x48)
        pdo_, objp, routine, ctx, _lock = struct.unpack_from('<QQQQQ', fs, 0)
        sync_irql, _fsave, share = struct.unpack_from('<BBB', fs, 0x28)
        vector, = struct.unpack_from('<I', fs, 0x2C)
        irql, = struct.unpack_from('<B', fs, 0x30)
        mode, = struct.unpack_from('<I', fs, 0x34)
        mask, group = struct.unpack_from('<QH', fs, 0x38)
        kint = e.mem_map(0x100, tag='emu.kinterrupt')
        se.mem_write(objp, struct.pack('<Q', kint))
        connected.append(dict(version=ver, pdo=pdo_, isr=routine, ctx=ctx, vector=vector,
                              irql=irql, sync=sync_irql, mode=mode, share=share,
                              mask=mask, group=group, object=kint))
        log.append('connect')
        return 0

    disconnected = []

    def disconnect(e, p):
        ver, obj = struct.unpack('<IxxxxQ', se.mem_read(p[0], 16))
        disconnected.append((ver, obj))
        log.append('disconnect')
        return 0

    hook('IoConnectInterruptEx', connect, argc=1)
    hook('IoDisconnectInterruptEx', disconnect, argc=1)
    powerset = []
    hook('PoSetPowerState', lambda e, p: powerset.append((p[1], p[2])) or 0, argc=3)

    fails = []

    def check(cond, what):
        if not cond:
            print('FAIL: ' + what)
            fails.append(what)

    def run_worker(which=-1):
        start, ctx = threads[which]
        se.call(start, [ctx])
        last = se.get_report()['entry_points'][-1]
        if last.get('error'):
            sys.exit('worker crashed: %s' % str(last['error'])[:600])

    def call_isr():
        c = connected[-1]
        queued.clear()
        se.call(c['isr'], [c['object'], c['ctx']])
        return se.emu.get_return_val() & 0xFF

    def deliver():
        # The interrupt controller: while the device holds its line
        # asserted, call the ISR; if it claimed the interrupt, run the DPC
        # it queued, then the worker (its wake event set by the DPC).
        for _ in range(64):
            if not dev.isr:
                return
            claimed = call_isr()
            check(claimed == 1, 'the ISR did not claim its own interrupt')
            check(dev.isr == 0, 'the ISR did not read (and so clear) the ISR status')
            check(len(queued) == 1, 'the ISR queued no DPC')
            for d in queued:
                routine, dctx = dpcs[d]
                se.call(routine, [d, dctx, 0, 0])
            run_worker()
            if fails:
                return
        check(False, 'the line never dropped')

    def irp(major, minor, params=(0, 0, 0, 0)):
        i = emu.mem_map(0xD0 + 2 * 0x48, tag='emu.irp')
        emu.mem_write(i, b'\0' * (0xD0 + 2 * 0x48))
        cur = i + 0xD0 + 0x48
        emu.mem_write(i + 0x42, bytes([2, 2]))
        emu.mem_write(i + 0xB8, struct.pack('<Q', cur))
        emu.mem_write(cur, bytes([major, minor]) + b'\0' * 6 + struct.pack('<QQQQ', *params))
        return i

    def send(major, minor, params=(0, 0, 0, 0), what=''):
        i = irp(major, minor, params)
        calls.clear()
        se.call(pnp if major == IRP_MJ_PNP else power, [fdo, i])
        last = se.get_report()['entry_points'][-1]
        if last.get('error'):
            sys.exit('%s crashed: %s' % (what, str(last['error'])[:600]))
        return struct.unpack('<i', se.mem_read(i + 0x30, 4))[0]

    def stats():
        d = dev.last_stats
        return {struct.unpack_from('<H', d, i)[0]: struct.unpack_from('<Q', d, i + 2)[0]
                for i in range(0, len(d) - 9, 10)}

    # ---- IRP_MN_START_DEVICE with a memory BAR and an interrupt -------
    raw = emu.mem_map(0x100, tag='emu.resources.raw')
    tr = emu.mem_map(0x100, tag='emu.resources.translated')
    emu.mem_write(raw, resource_list(interrupt))
    emu.mem_write(tr, resource_list(interrupt))
    status = send(IRP_MJ_PNP, 0x00, (raw, tr, 0, 0), 'START_DEVICE')
    print('START_DEVICE status %#x, calls %s' % (status & 0xFFFFFFFF, calls))
    if status != 0:
        sys.exit('START_DEVICE failed')
    if dev.status != 0xF or dev.driver_features != FEATURES:
        sys.exit('device not brought up: status %#x features %#x' % (dev.status, dev.driver_features))
    if not threads:
        sys.exit('no worker thread')
    if not interrupt:
        return poll_fallback(se, dev, check, fails, connected, waits, poll_budget, run_worker,
                             send, mdls, freed, disconnected)
    c = connected[-1] if connected else {}
    print('interrupt connected: %s' % c)
    check(c.get('version') == 1 and c.get('pdo') == pdo and c.get('vector') == IRQ_VECTOR
          and c.get('irql') == IRQ_LEVEL and c.get('sync') == IRQ_LEVEL and c.get('mode') == 0
          and c.get('share') == 1 and c.get('mask') == IRQ_AFFINITY and c.get('group') == 0,
          'the interrupt is not connected with the translated resource (fully specified, '
          'vector, IRQL, level mode, shared, affinity, the PDO)')
    check(any('interrupt vector 0x71' in m for m in messages_of(se)),
          'the log does not say which interrupt is connected')
    if fails:
        sys.exit(1)

    # ---- the worker sleeps until an interrupt --------------------------
    run_worker()
    check(waits and waits[-1] == 0,
          'the worker waits with a timeout although an interrupt is connected (polling)')
    # Another device on the shared line: ISR status 0.
    check(call_isr() == 0 and not queued,
          'the ISR claimed (or queued a DPC for) an interrupt that was not its device\'s')
    # The host moves the target: a config-change interrupt.
    dev.set_num_pages(300)
    deliver()
    inflated = set(dev.balloon)
    handed = set(mdls.values())
    check(len(inflated) == 300 and inflated <= handed,
          'after the config-change interrupt the balloon does not hold 300 pages the '
          'driver allocated (%d)' % len(inflated))
    # The host asks for stats: a used buffer on the stats queue.
    check(dev.request_stats(), 'the driver posted no stats buffer')
    deliver()
    st = stats()
    check(st.get(5) == GUEST_PAGES * 4096 and st.get(6) == 200000 * 4096,
          'stats after the queue interrupt: %s' % st)
    dev.set_num_pages(100)
    deliver()
    check(len(dev.balloon) == 100 and dev.balloon <= inflated,
          'deflate to 100 pages (%d)' % len(dev.balloon))
    check(sorted(freed) == sorted(inflated - dev.balloon), 'deflated pages were not the ones freed')
    check(dev.actual == 100, 'actual %d' % dev.actual)
    print('ticks', len(waits), 'in balloon', len(dev.balloon), 'freed', len(freed),
          'device complaints', dev.bad)
    if fails or dev.bad:
        sys.exit(1)
    print('emulated: interrupts: config change inflates to 300, stats, deflate to 100: OK')

    # ---- D3, then D0 ---------------------------------------------------
    log.clear()
    calls_before = len(connected)
    st = send(IRP_MJ_POWER, 0x02, (0, 1, 4, 0), 'SET_POWER D3')
    print('D3: status %#x, order %s, calls %s' % (st & 0xFFFFFFFF, log, calls))
    wake = threads[-1][1]      # the wake event is the first field of the worker's context
    order = [x for x in log if x in ('set %#x' % wake, 'join', 'disconnect', 'flush dpcs', 'lower D3')]
    check(order == ['set %#x' % wake, 'join', 'disconnect', 'flush dpcs', 'lower D3'],
          'D3: the worker is not woken and joined, the interrupt disconnected and DPCs '
          'flushed, before the IRP goes down: %s' % order)
    check(dev.status == 0 and not dev.balloon, 'D3: the device was not reset before power-down')
    check(sorted(freed) == sorted(inflated), 'D3: not every page went back to the kernel')
    check(disconnected and disconnected[-1] == (1, connected[-1]['object']),
          'D3: the connected interrupt was not disconnected')
    check((1, 4) in powerset, 'D3: PoSetPowerState(DevicePowerState, D3) not called')
    check(st == 0, 'D3: status %#x' % st)
    terminated.clear()
    run_worker()
    check(terminated, 'D3: the old worker, told to stop, does not end')
    check(not dev.bad, 'D3: %s' % dev.bad)
    log.clear()
    before = set(mdls.values())
    st = send(IRP_MJ_POWER, 0x02, (0, 1, 1, 0), 'SET_POWER D0')
    print('D0: status %#x, order %s' % (st & 0xFFFFFFFF, log))
    check(not dev.bad, 'D0: the device was touched before the IRP went down: %s' % dev.bad)
    check(log[:1] == ['lower D0'], 'D0: the IRP did not go down first: %s' % log)
    check(dev.status == 0xF and len(connected) == calls_before + 1 and len(threads) == 2,
          'D0: the device, the interrupt and the worker are not back')
    check((1, 1) in powerset, 'D0: PoSetPowerState(DevicePowerState, D0) not called')
    run_worker()
    deliver()
    again = set(dev.balloon)
    check(len(again) == 100 and not again & before,
          'D0: the new worker did not inflate to the unchanged target with new pages (%d)'
          % len(again))
    if fails or dev.bad:
        sys.exit(1)
    print('emulated: D3 quiesces and gives every page back, D0 rebuilds: OK')

    # ---- query-remove, cancel, surprise removal, remove ----------------
    freed_before = len(freed)
    st = send(IRP_MJ_PNP, 0x01, what='QUERY_REMOVE_DEVICE')
    check(st == 0 and dev.status == 0 and not dev.balloon and len(freed) == freed_before + 100,
          'QUERY_REMOVE: the balloon was not quiesced (device reset, every page back)')
    st = send(IRP_MJ_PNP, 0x03, what='CANCEL_REMOVE_DEVICE')
    check(st == 0 and dev.status == 0xF and len(threads) == 3,
          'CANCEL_REMOVE: the balloon did not come back')
    run_worker()
    deliver()
    check(len(dev.balloon) == 100, 'CANCEL_REMOVE: not inflated again (%d)' % len(dev.balloon))
    held = set(dev.balloon)
    freed_before = len(freed)
    dev.gone = True
    n_disc = len(disconnected)
    st = send(IRP_MJ_PNP, 0x17, what='SURPRISE_REMOVAL')
    check('spins on a removed device' not in dev.bad,
          'SURPRISE_REMOVAL: the driver spins on the removed device')
    check(st == 0 and len(freed) == freed_before + 100
          and set(freed[freed_before:]) == held,
          'SURPRISE_REMOVAL: the pages were not given back')
    check(len(disconnected) == n_disc + 1, 'SURPRISE_REMOVAL: the interrupt was not disconnected')
    check(unmapped == [bar_virt], 'SURPRISE_REMOVAL: BAR not unmapped: %s' % unmapped)
    if fails:
        sys.exit(1)
    hook('IoDetachDevice', 0, argc=1)
    hook('IoDeleteDevice', 0, argc=1)
    send(IRP_MJ_PNP, 0x02, what='REMOVE_DEVICE')
    print('REMOVE_DEVICE calls', calls)
    if 'ntoskrnl.IoDeleteDevice' not in calls or 'ntoskrnl.IoDetachDevice' not in calls:
        sys.exit('FAIL: FDO not detached and deleted')
    if unmapped != [bar_virt]:
        sys.exit('FAIL: BAR unmapped twice: %s' % unmapped)
    print('emulated: query-remove, cancel, surprise removal and remove: OK')
    return 0


def poll_fallback(se, dev, check, fails, connected, waits, poll_budget, run_worker, send,
                  mdls, freed, disconnected):
    # No interrupt resource: nothing connected, the log says the worker
    # polls, and it does: timed waits of 100 ms (relative, in 100 ns
    # units), in which it acknowledges the ISR status itself and moves the
    # balloon to the target.
    check(not connected, 'an interrupt was connected without an interrupt resource')
    check(any('no interrupt resource assigned: polling every 100 ms' in m for m in MESSAGES),
          'the log does not say that the worker polls')
    dev.set_num_pages(300)
    poll_budget[0] = 3
    run_worker()
    # Three ticks let time out, then a fourth timed wait (its timeout
    # pointer, non-null) where the harness ends the run.
    check(len(waits) == 4 and waits[:3] == [-100 * 10_000] * 3 and waits[3] != 0,
          'the worker does not poll with 100 ms timed waits: %s' % waits)
    check(dev.isr == 0, 'the polling worker does not acknowledge the ISR status')
    check(len(dev.balloon) == 300 and set(dev.balloon) <= set(mdls.values()),
          'the polling worker did not inflate to 300 (%d)' % len(dev.balloon))
    if fails or dev.bad:
        sys.exit(1)
    send(IRP_MJ_PNP, 0x17, what='SURPRISE_REMOVAL')
    check(len(freed) == 300 and not disconnected,
          'stop without an interrupt: pages back, nothing to disconnect')
    if fails:
        sys.exit(1)
    print('emulated: no interrupt resource: polls every 100 ms and inflates: OK')
    return 0


def messages_of(se):
    return MESSAGES


if __name__ == '__main__':
    sys.exit(main(*sys.argv[1:3]))
