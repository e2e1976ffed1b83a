"""Emulated run of pvblk.sys (the virtio-blk StorPort miniport) under speakeasy.

speakeasy emulates nothing of storport.sys: the hooks below stand in for
it. StorPortInitialize captures the HW_INITIALIZATION_DATA DriverEntry
hands over; the script then plays StorPort: it builds a
PORT_CONFIGURATION_INFORMATION with one ACCESS_RANGE (BAR0) and calls
HwFindAdapter, HwInitialize (and the passive-level routine the driver asks
for with StorPortEnablePassiveInitialization), then HwStartIo with SRBs it
builds in emulated memory, HwInterrupt, HwResetBus and HwAdapterControl.
StorPortGetBusData answers with a virtio-blk config space (the four virtio
PCI capabilities), StorPortGetDeviceBase maps BAR0 to emulated memory whose
reads and writes a fake virtio-blk device (class Blk) serves: common config,
notify, ISR, device config; it executes the requests of its virtqueue
against a byte-array disk. StorPortNotification(RequestComplete) records
each completed SRB.

Checked (each prints FAIL and exits 1 when wrong):
- DriverEntry registers every callback, the extension size, mapped buffers
  and both SRB kinds (classic and SRB_EX); HwFindAdapter asks for SRB_EX
  (SrbType = STORAGE_REQUEST_BLOCK), finds the adapter, maps BAR0 and fills
  the port configuration; the bring-up negotiates FLUSH, DISCARD,
  WRITE_ZEROES and VERSION_1, reads the serial with GET_ID and sets
  DRIVER_OK.
- INQUIRY (standard, VPD 00/80/B0/B2), READ CAPACITY(10)/(16), MODE SENSE(6),
  REPORT LUNS, TEST UNIT READY answer what the device holds.
- WRITE(10)/(16) data reaches the disk and READ(10)/(16) returns it; a
  write completes through HwInterrupt (deferred device) and one by polling
  in HwStartIo.
- SYNCHRONIZE CACHE reaches the device as one FLUSH; UNMAP as one DISCARD
  per descriptor, with the right ranges.
- A bad opcode and a read past the end get CHECK CONDITION with autosense
  ILLEGAL REQUEST 20/00 and 21/00.
- HwResetBus with a read outstanding: the device is reset (status 0)
  before the SRB comes back with SRB_STATUS_BUS_RESET.
- A used-ring entry naming no request: the driver resets the device,
  completes the SRB with BUS_RESET, reports ResetDetected, does not crash,
  and the data is still read back after the device came up again.
- HwAdapterControl: supported types; stop resets and stops the device;
  restart brings it back and I/O works.
- D0 -> D3 -> D0 (HwAdapterControl stop, a power cut that drops the
  fake device's volatile cache, restart) with a write and a read
  outstanding: both complete GOOD before the stop returns, a flush reaches
  the device after the last write and before the reset, and the data
  written before D3 reads back after D0; with a device that answers
  nothing, the outstanding write comes back BUS_RESET once and its retry
  reads back. (StorPortStallExecution lets the fake device run.)
- SRB_EX: STORAGE_REQUEST_BLOCKs as StorPort builds them (BTL8 address,
  SRBEX_DATA_SCSI_CDB16 / CDB32 / CDB_VAR, SRBEX_DATA_PNP, _POWER): WRITE(16)
  reaches the disk and READ(10) in a CDB32 and a variable CDB read it back
  with the status and length in the SRB_EX; a bad opcode gets CHECK
  CONDITION with ScsiStatus and SenseInfoBufferLength in the CDB block and
  the sense in its buffer; QUERY_CAPABILITIES fills the capabilities; a
  power SRB to D3 flushes; a non-zero LUN is refused INVALID_LUN; SRB_EXs
  with a bad signature or a CDB block past SrbLength complete
  INVALID_REQUEST without touching the device.

No IRQL, no concurrency, no DMA, no real interrupts (HwInterrupt is called
by the script); identity "physical" addresses. This tests the glue.
Run by tests/tests/windows_storport.rs.

With the argument `dump` the run is the crash-dump instance instead:
DriverEntry(NULL, NULL), HwFindAdapter with DumpMode set and a dump region
(filled with garbage), HwInitialize without a passive routine, then
polled-only I/O (write, read back, flush, VPD 80h, a garbage used entry and
the reset it causes); nothing may be allocated from pool or contiguous
memory once HwFindAdapter was entered.

usage: python storport_harness.py path/to/pvblk.sys [dump]
"""
import struct
import sys

import speakeasy

from virtio_pci import (BAR, BAR_LEN, DEVCFG, F_VERSION_1, WRITE, VirtioPciDevice,
                        config_space)

# ---- the fake virtio-blk PCI function --------------------------------------

QMAX = 128
SECTORS = 2048                      # a 1 MiB disk
SERIAL = b'PVSERIAL-0001'
F_FLUSH, F_DISCARD, F_WRITE_ZEROES = 1 << 9, 1 << 13, 1 << 14
FEATURES = F_FLUSH | F_DISCARD | F_WRITE_ZEROES | F_VERSION_1
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13


class Blk(VirtioPciDevice):
    """virtio-blk (virtio 1.2 5.2) over the shared PCI model, one queue,
    a byte-array disk. A reset keeps the disk and the counters."""

    FEATURES = FEATURES
    NQUEUES = 1
    QSIZE = QMAX

    def __init__(self, se, virt):
        self.disk = bytearray(SECTORS * 512)
        self.flushes = 0
        self.discards = []
        self.resets = 0
        self.events = []          # ('reset',) / ('flush',) / ('complete', srb) in order
        self.defer = False        # hold notified chains until run()
        self.p2v = {}             # physical page -> virtual page (data buffers)
        self.in_place = 0         # data descriptors on scrambled pages
        self.garbage = False      # answer the next chain with a bogus id
        self.volatile = False     # writes sit in a volatile cache until a flush
        self.unflushed = []       # (offset, bytes before) of cached writes
        self.stall_works = True   # the device runs held chains while the driver stalls
        self.pending = False
        super().__init__(se, virt)

    def on_reset(self, was):
        # A reset of a device that was not reset already (the driver's
        # init writes 0 first too).
        if was != 0:
            self.resets += 1
            self.events.append(('reset',))
        self.pending = False

    def device_config(self):
        self.w(DEVCFG + 0, '<Q', SECTORS)
        self.w(DEVCFG + 36, '<I', 4096)       # max_discard_sectors
        self.w(DEVCFG + 40, '<I', 16)         # max_discard_seg
        self.w(DEVCFG + 48, '<I', 4096)       # max_write_zeroes_sectors
        self.w(DEVCFG + 52, '<I', 1)

    def notify(self, qi):
        if self.defer:
            self.pending = True
        else:
            self.run()

    def power_loss(self):
        """D3 cut the power: what was written since the last flush is
        gone (the volatile cache), and so is every queued request."""
        for pos, old in reversed(self.unflushed):
            self.disk[pos:pos + len(old)] = old
        self.unflushed = []
        self.pending = False

    def run(self):
        self.pending = False
        for head, descs in self.chains(0):
            if self.garbage:
                self.garbage = False
                self.push_used(0, QMAX + 77, 1)     # names no descriptor at all
                continue
            self.execute(head, descs)

    def execute(self, head, descs):
        ty, _, sector = struct.unpack('<IIQ', self.se.mem_read(descs[0][0], 16))
        body, (st_addr, _, st_fl) = descs[1:-1], descs[-1]
        if not st_fl & WRITE:
            self.bad.append('status descriptor not writable')
        written, status, pos = 0, 0, sector * 512
        if ty in (T_IN, T_OUT):
            for pa, ln, fl in body:
                page = pa & ~0xFFF
                a = self.p2v.get(page, page) + (pa & 0xFFF)
                if page in self.p2v:
                    self.in_place += 1
                    if (pa & 0xFFF) + ln > 0x1000:
                        self.bad.append('a descriptor runs past a page that is not contiguous')
                if pos + ln > len(self.disk):
                    status = 1
                    break
                if ty == T_IN:
                    self.se.mem_write(a, bytes(self.disk[pos:pos + ln]))
                    written += ln
                else:
                    if self.volatile:
                        self.unflushed.append((pos, bytes(self.disk[pos:pos + ln])))
                    self.disk[pos:pos + ln] = self.se.mem_read(a, ln)
                pos += ln
        elif ty == T_FLUSH:
            self.flushes += 1
            self.unflushed = []
            self.events.append(('flush',))
        elif ty == T_GET_ID:
            a, ln, _ = body[0]
            self.se.mem_write(a, SERIAL.ljust(ln, b'\0')[:ln])
            written = ln
        elif ty in (T_DISCARD, T_WRITE_ZEROES):
            for a, ln, _ in body:
                for i in range(0, ln, 16):
                    s, n, f = struct.unpack('<QII', self.se.mem_read(a + i, 16))
                    if ty == T_DISCARD:
                        self.discards.append((s, n))
                    self.disk[s * 512:(s + n) * 512] = bytes(n * 512)
        else:
            status = 2
        self.se.mem_write(st_addr, bytes([status]))
        self.push_used(0, head, written + 1)


# ---- the script -------------------------------------------------------------

FAILS = []


def check(ok, what):
    if not ok:
        print('FAIL:', what)
        FAILS.append(what)
    return ok


DUMP_REGION = 256 * 1024


def dump_io(se, d, ext, start_io, call, alloc, scramble, pool, contiguous,
            pool_mark, contiguous_mark, sp):
    """Crash-dump mode: polled I/O only (HwInterrupt is never called), and
    no ExAllocatePool2 or contiguous allocation once HwFindAdapter was
    entered: everything comes from the dump region."""
    def run_srb(cdb, flags=0, length=0, data=None):
        s = alloc(0x58, 'emu.srb')
        buf = alloc(length + 0x1000, 'emu.srb.data') + 0xE00 if length else 0
        if length:
            scramble(buf, length)
        sense = alloc(32, 'emu.srb.sense')
        if data:
            se.mem_write(buf, data)
        se.mem_write(s, struct.pack('<HBBBBBBBBBBIII', 0x58, 0, 0, 0, 0, 0, 0, 0, 0,
                                    len(cdb), 32, flags, length, 10))
        se.mem_write(s + 0x18, struct.pack('<QQ', buf, sense))
        se.mem_write(s + 0x48, cdb.ljust(16, b'\0'))
        call(start_io, [ext, s], 'HwStartIo (dump) %s' % cdb[:1].hex())
        done = [e for e in d.events if e == ('complete', s)]
        st = se.mem_read(s + 3, 1)[0]
        data = bytes(se.mem_read(buf, length)) if length else b''
        return len(done), st, data

    fails = len(FAILS)
    d.defer = False                       # the device answers at once
    a = bytes((i * 11 + 5) & 0xFF for i in range(8 * 512))
    n, st, _ = run_srb(bytes([0x2A, 0, 0, 0, 0, 40, 0, 0, 8, 0]), 0x80, len(a), a)
    check(n == 1 and st == 1 and bytes(d.disk[40 * 512:48 * 512]) == a,
          'dump: WRITE(10) completes by polling and reaches the disk')
    n, st, data = run_srb(bytes([0x28, 0, 0, 0, 0, 40, 0, 0, 8, 0]), 0x40, len(a))
    check(n == 1 and st == 1 and data == a, 'dump: READ(10) reads it back')
    flushes = d.flushes
    n, st, _ = run_srb(bytes([0x35] + [0] * 9))
    check(n == 1 and st == 1 and d.flushes == flushes + 1, 'dump: SYNCHRONIZE CACHE flushes')
    n, st, data = run_srb(bytes([0x12, 1, 0x80, 0, 64, 0]), 0x40, 64)
    check(n == 1 and st == 1 and data[4:4 + len(SERIAL)] == SERIAL, 'dump: the serial from GET_ID')
    # A garbage used entry: the device is reset from the region too.
    resets = d.resets
    d.garbage = True
    n, st, _ = run_srb(bytes([0x28, 0, 0, 0, 0, 40, 0, 0, 8, 0]), 0x40, len(a))
    check(n == 1 and st == 0x0E and d.resets == resets + 1 and d.status == 0xF,
          'dump: a garbage used entry resets the device, the SRB comes back BUS_RESET')
    n, st, data = run_srb(bytes([0x28, 0, 0, 0, 0, 40, 0, 0, 8, 0]), 0x40, len(a))
    check(n == 1 and st == 1 and data == a, 'dump: data read back after the reset')
    print('dump: pool allocations after HwFindAdapter %s, contiguous %s, ResetDetected %d' %
          (pool[pool_mark:], contiguous[contiguous_mark:], sp['reset_detected']))
    check(pool[pool_mark:] == [] and contiguous[contiguous_mark:] == [],
          'dump: nothing allocated from pool or contiguous memory after HwFindAdapter')
    check(not d.bad, 'the device saw no protocol fault: %s' % d.bad)
    if len(FAILS) == fails:
        print('emulated: crash-dump mode: NULL DriverEntry, no allocation, polled I/O, reset: OK')
    return 1 if FAILS else 0


def main(path, dump=False):
    se = speakeasy.Speakeasy()
    emu_calls = []

    def hook(module, name, ret, argc):
        def cb(emu, api_name, func, params):
            emu_calls.append(api_name)
            try:
                return ret(emu, params) if callable(ret) else ret
            except Exception as e:
                print('hook %s failed: %r' % (api_name, e))
                raise
        se.add_api_hook(cb, module, name, argc=argc)

    def u64(a):
        return struct.unpack('<Q', se.mem_read(a, 8))[0]

    def stack_arg(n):
        # Argument n (n >= 4) of the API being hooked: return address,
        # 32 bytes of home space, then the stack arguments.
        return u64(se.emu.reg_read('rsp') + 8 + 8 * n)

    def alloc(size, tag):
        a = se.emu.mem_map(max(size, 16), tag=tag)
        se.mem_write(a, b'\0' * max(size, 16))
        return a

    messages = []

    def dbgprint(emu, p):
        try:
            ptr = stack_arg(4)
            messages.append(emu.mem_read(ptr, p[3]).decode('utf-8', 'replace'))
        except Exception as e:  # noqa: BLE001 - report, do not kill the emulator
            messages.append('unreadable: %r' % (e,))
        return 0

    hook('ntoskrnl', 'DbgPrintEx', dbgprint, 5)
    pool = []

    def alloc_pool(emu, p):
        pool.append(p[1])
        return alloc(p[1], 'emu.pool.pvdr')

    hook('ntoskrnl', 'ExAllocatePool2', alloc_pool, 3)
    hook('ntoskrnl', 'ExFreePoolWithTag', 0, 2)
    contiguous = []

    def alloc_contiguous(emu, p):
        contiguous.append(p[0])
        return alloc((p[0] + 0xFFF) & ~0xFFF, 'emu.contiguous')

    hook('ntoskrnl', 'MmAllocateContiguousMemorySpecifyCache', alloc_contiguous, 5)
    hook('ntoskrnl', 'MmFreeContiguousMemorySpecifyCache', 0, 3)
    # Identity "physical" addresses, except for SRB data buffers: their
    # pages get physical addresses in reverse order with gaps (scramble()),
    # as a buffer mapped from a user MDL would have.
    v2p = {}
    next_phys = [0x70000000]

    def scramble(addr, length):
        pages = list(range(addr & ~0xFFF, (addr + length + 0xFFF) & ~0xFFF, 0x1000))
        for i, page in enumerate(reversed(pages)):
            v2p[page] = next_phys[0] + 0x2000 * i
            dev[0].p2v[v2p[page]] = page
        next_phys[0] += 0x2000 * len(pages) + 0x10000

    def physical(emu, p):
        page = p[0] & ~0xFFF
        return v2p.get(page, page) + (p[0] & 0xFFF)

    hook('ntoskrnl', 'MmGetPhysicalAddress', physical, 1)
    hook('ntoskrnl', 'MmGetVirtualForPhysical', lambda e, p: p[0], 1)
    hook('ntoskrnl', '__chkstk', lambda e, p: e.reg_read('rax'), 0)

    # StorPort.
    sp = {'init': None, 'passive': None, 'bus_data': 0, 'mapped': [], 'reset_detected': 0}
    cfg_space = config_space(0x1042, 0x0100, 0x40)   # block (modern), mass storage
    bar_virt = [0]
    dev = [None]

    def initialize(emu, p):
        sp['init'] = bytes(emu.mem_read(p[2], 0xD0))
        sp['init_args'] = (p[0], p[1])
        return 0

    def bus_data(emu, p):
        buf, length = stack_arg(4), stack_arg(5)
        sp['bus_data'] += 1
        if p[1] != 4:                       # PCIConfiguration
            return 0
        n = min(length, len(cfg_space))
        emu.mem_write(buf, cfg_space[:n])
        return n

    def device_base(emu, p):
        io, n = p[3], stack_arg(4)
        sp['mapped'].append((io, n))
        return bar_virt[0] if io == BAR and n <= BAR_LEN else 0

    def notification(emu, p):
        kind = p[0]
        if kind == 0:                        # RequestComplete
            dev[0].events.append(('complete', p[2]))
        elif kind == 3:                      # ResetDetected
            sp['reset_detected'] += 1
        elif kind == 0x1000:                 # EnablePassiveInitialization
            sp['passive'] = p[2]
            emu.mem_write(p[3], struct.pack('<i', 1))
        else:
            print('unexpected StorPortNotification %#x' % kind)
        return 0

    hook('storport', 'StorPortInitialize', initialize, 4)
    hook('storport', 'StorPortGetBusData', bus_data, 6)
    hook('storport', 'StorPortGetDeviceBase', device_base, 6)
    hook('storport', 'StorPortNotification', notification, 4)
    def stall(emu, p):
        # Time passes for the device too: it answers what it holds.
        d = dev[0]
        if d is not None and d.stall_works and d.pending:
            d.run()
        return 0

    hook('storport', 'StorPortStallExecution', stall, 1)

    module = se.load_module(path)
    se.emu.stack_base, _ = se.emu.alloc_stack(0x6000)   # a 24 KiB kernel stack
    bar_virt[0] = alloc(BAR_LEN, 'emu.virtio_blk_bar0')
    d = dev[0] = Blk(se, bar_virt[0])
    d.hook()

    se.run_module(module)
    ep = se.get_report()['entry_points'][0]
    print('DriverEntry returned', ep.get('ret_val'), 'messages', messages)
    if ep.get('error') or ep.get('ret_val') not in ('0x0', 0):
        sys.exit('DriverEntry failed: %s' % str(ep.get('error'))[:600])
    init = sp['init']
    if init is None:
        sys.exit('DriverEntry did not call StorPortInitialize')
    size, bus = struct.unpack_from('<II', init, 0)
    hw_initialize, start_io, interrupt, find_adapter, reset_bus = struct.unpack_from('<5Q', init, 0x08)
    ext_size = struct.unpack_from('<I', init, 0x40)[0]
    adapter_control = struct.unpack_from('<Q', init, 0x78)[0]
    map_buffers, srb_types = init[0x58], struct.unpack_from('<I', init, 0xBC)[0]
    print('HW_INITIALIZATION_DATA size %#x bus %d ext %d map %d srb types %#x' %
          (size, bus, ext_size, map_buffers, srb_types))
    check(size == 0xD0 and bus == 5, 'HwInitializationDataSize / PCIBus')
    check(all((hw_initialize, start_io, interrupt, find_adapter, reset_bus, adapter_control)),
          'every callback registered')
    check(ext_size > 0 and map_buffers == 3 and srb_types == 3,
          'extension size, mapped buffers, classic and extended SRBs')

    def call(fn, args, what, bits=8):
        """Run `fn`; its return value cut to `bits` (BOOLEAN callbacks
        leave the rest of rax undefined)."""
        # speakeasy's call() puts stack arguments right above the return
        # address; Windows x64 has 32 bytes of home space there first.
        if len(args) > 4:
            args = args[:4] + [0, 0, 0, 0] + args[4:]
        se.call(fn, args)
        last = se.get_report()['entry_points'][-1]
        if last.get('error'):
            sys.exit('%s crashed: %s\nmessages %s' % (what, str(last['error'])[:800], messages))
        rv = last.get('ret_val')
        return (int(rv, 16) if isinstance(rv, str) else (rv or 0)) & ((1 << bits) - 1)

    if dump:
        # The dump stack loads its own copy of the miniport and calls
        # DriverEntry with NULL driver object and registry path.
        entry = int(ep['start_addr'], 16)
        st = call(entry, [0, 0], 'DriverEntry (dump)', 32)
        check(st == 0 and sp['init_args'] == (0, 0),
              'DriverEntry(NULL, NULL) hands StorPortInitialize the NULLs: %s' % (sp['init_args'],))

    # HwFindAdapter with one memory access range (BAR0).
    ext = alloc(ext_size, 'emu.device_extension')
    ranges = alloc(16, 'emu.access_ranges')
    se.mem_write(ranges, struct.pack('<qIB', BAR, BAR_LEN, 1))
    cfg = alloc(0xE0, 'emu.port_config')
    se.mem_write(cfg, struct.pack('<III', 0xE0, 0, 5))
    se.mem_write(cfg + 0x34, struct.pack('<IQ', 1, ranges))
    se.mem_write(cfg + 0x64, struct.pack('<I', 3))          # SlotNumber
    again = alloc(8, 'emu.again')
    if dump:
        # DumpMode = DUMP_MODE_CRASH and the region the normal instance
        # asked for (identity "physical" address).
        region = alloc(DUMP_REGION, 'emu.dump_region')
        se.mem_write(region, b'\xA5' * DUMP_REGION)     # not zeroed: the driver must
        se.mem_write(cfg + 0xA8, struct.pack('<QQI', region, region, DUMP_REGION))
        se.mem_write(cfg + 0xC5, bytes([1]))
    found = call(find_adapter, [ext, 0, 0, 0, cfg, again], 'HwFindAdapter', 32)
    # From here on the dump instance may not allocate.
    pool_mark, contiguous_mark = len(pool), len(contiguous)
    max_transfer = struct.unpack('<I', se.mem_read(cfg + 0x18, 4))[0]
    cfg_bytes = se.mem_read(cfg, 0xE0)
    print('HwFindAdapter returned %d, mapped %s, MaximumTransferLength %d' %
          (found, sp['mapped'], max_transfer))
    check(found == 1, 'HwFindAdapter: SP_RETURN_FOUND')
    check(sp['bus_data'] == 1 and sp['mapped'] == [(BAR, BAR_LEN)], 'config space read, BAR0 mapped')
    check(max_transfer == 128 * 1024 and cfg_bytes[0x59] == 3 and cfg_bytes[0x61] == 1,
          'port configuration: transfer length, mapped buffers, one target')
    check(cfg_bytes[0x62] == 1 and cfg_bytes[0x63] == 0,
          'port configuration: SrbType STORAGE_REQUEST_BLOCK, BTL8 addresses')
    requested = struct.unpack('<I', se.mem_read(cfg + 0xC0, 4))[0]
    if not dump:
        check(requested == DUMP_REGION, 'RequestedDumpBufferSize: %d' % requested)
    else:
        ok = call(hw_initialize, [ext], 'HwInitialize (dump)')
        check(ok == 1 and sp['passive'] is None and d.status == 0xF,
              'dump: HwInitialize brings the device up itself, no passive routine')
        return dump_io(se, d, ext, start_io, call, alloc, scramble, pool, contiguous,
                       pool_mark, contiguous_mark, sp)

    ok = call(hw_initialize, [ext], 'HwInitialize')
    check(ok == 1 and sp['passive'], 'HwInitialize asks for passive initialisation')
    ok = call(sp['passive'], [ext], 'HwPassiveInitializeRoutine')
    print('bring-up: status %#x, features %#x, messages %s' % (d.status, d.driver_features, messages))
    check(ok == 1 and d.status == 0xF and d.driver_features == FEATURES,
          'device up: DRIVER_OK and FLUSH|DISCARD|WRITE_ZEROES|VERSION_1 negotiated')

    # ---- SRBs -------------------------------------------------------------
    def srb(cdb=b'', flags=0, length=0, data=None, function=0, lun=0):
        s = alloc(0x58, 'emu.srb')
        buf = 0
        if length:
            # The data starts 0xE00 into a page, so a few KiB span pages
            # that are not physically contiguous.
            buf = alloc(length + 0x1000, 'emu.srb.data') + 0xE00
            scramble(buf, length)
        sense = alloc(32, 'emu.srb.sense')
        if data:
            se.mem_write(buf, data)
        se.mem_write(s, struct.pack('<HBBBBBBBBBBIII', 0x58, function, 0, 0, 0, 0, lun, 0, 0,
                                    len(cdb), 32, flags, length, 10))
        se.mem_write(s + 0x18, struct.pack('<QQ', buf, sense))
        se.mem_write(s + 0x48, cdb.ljust(16, b'\0'))
        return s, buf, sense

    def outcome(s, buf, sense):
        st, scsi = se.mem_read(s + 3, 2)
        n = struct.unpack('<I', se.mem_read(s + 0x10, 4))[0]
        sn = se.mem_read(s + 0x0B, 1)[0]
        data = bytes(se.mem_read(buf, n)) if buf and n else b''
        return dict(srb_status=st, scsi_status=scsi, n=n, data=data,
                    sense=bytes(se.mem_read(sense, sn)) if sn else b'')

    def completions_of(s):
        return [i for i, e in enumerate(d.events) if e == ('complete', s)]

    def io(cdb, flags=0, length=0, data=None, function=0):
        """Start an SRB; if the device holds it, run the device and take
        the interrupt. Returns the SRB's outcome."""
        s, buf, sense = srb(cdb, flags, length, data, function)
        call(start_io, [ext, s], 'HwStartIo %s' % cdb[:1].hex())
        # A plan of several parts (UNMAP descriptors) goes to the device
        # one part per interrupt.
        for _ in range(32):
            if completions_of(s) or not d.pending:
                break
            d.run()
            taken = call(interrupt, [ext], 'HwInterrupt')
            check(taken == 1, 'HwInterrupt claims the interrupt')
        check(len(completions_of(s)) == 1, 'SRB %s completed exactly once' % cdb[:1].hex())
        return outcome(s, buf, sense)

    DATA_IN, DATA_OUT = 0x40, 0x80
    good = lambda o: o['srb_status'] == 1 and o['scsi_status'] == 0  # noqa: E731

    def sense_of(o):
        s = o['sense']
        return (s[2] & 0xF, s[12], s[13]) if len(s) >= 14 else None

    d.defer = True
    o = io(b'\x00' * 6)
    check(good(o), 'TEST UNIT READY: GOOD')
    o = io(bytes([0x12, 0, 0, 0, 96, 0]), DATA_IN, 96)
    check(good(o) and o['n'] == 36 and o['data'][8:16] == b'PVDRIVER', 'standard INQUIRY')
    o = io(bytes([0x12, 1, 0x80, 0, 64, 0]), DATA_IN, 64)
    check(good(o) and o['data'][4:] == SERIAL, 'VPD 80h: the serial GET_ID read: %r' % o['data'])
    o = io(bytes([0x12, 1, 0x00, 0, 64, 0]), DATA_IN, 64)
    check(good(o) and o['data'][4:] == bytes([0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]), 'VPD 00h')
    o = io(bytes([0x12, 1, 0xB0, 0, 64, 0]), DATA_IN, 64)
    check(good(o) and struct.unpack_from('>I', o['data'], 20)[0] == 4096, 'VPD B0h: MAXIMUM UNMAP LBA COUNT')
    o = io(bytes([0x12, 1, 0xB2, 0, 8, 0]), DATA_IN, 8)
    check(good(o) and o['data'][5] & 0x80, 'VPD B2h: LBPU')
    o = io(bytes([0x25] + [0] * 9), DATA_IN, 8)
    check(good(o) and struct.unpack('>II', o['data']) == (SECTORS - 1, 512), 'READ CAPACITY(10)')
    o = io(bytes([0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0]), DATA_IN, 32)
    check(good(o) and struct.unpack_from('>QI', o['data']) == (SECTORS - 1, 512)
          and o['data'][14] & 0x80, 'READ CAPACITY(16) with LBPME')
    o = io(bytes([0x1A, 0, 0x08, 0, 64, 0]), DATA_IN, 64)
    check(good(o) and o['data'][4 + 8] == 0x08 and o['data'][4 + 8 + 2] & 0x04,
          'MODE SENSE(6): caching page with WCE (the device has a volatile cache)')
    o = io(bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]), DATA_IN, 16)
    check(good(o) and o['data'][:4] == b'\0\0\0\x08' and o['data'][8:] == bytes(8), 'REPORT LUNS: LUN 0')
    print('emulated: INQUIRY, VPD, READ CAPACITY, MODE SENSE, REPORT LUNS, TEST UNIT READY: OK'
          if not FAILS else 'emulated: data commands FAILED')

    fails = len(FAILS)
    allocated, in_place = len(contiguous), d.in_place
    a = bytes((i * 7 + 3) & 0xFF for i in range(4 * 512))
    o = io(bytes([0x2A, 0, 0, 0, 0, 10, 0, 0, 4, 0]), DATA_OUT, len(a), a)
    check(good(o) and bytes(d.disk[10 * 512:14 * 512]) == a, 'WRITE(10) reaches the disk')
    o = io(bytes([0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0]), DATA_IN, len(a))
    check(good(o) and o['data'] == a, 'READ(10) reads back what WRITE(10) wrote')
    b = bytes((i * 13 + 1) & 0xFF for i in range(8 * 512))
    o = io(bytes([0x8A, 0]) + struct.pack('>QI', 1000, 8) + b'\0\0', DATA_OUT, len(b), b)
    check(good(o) and bytes(d.disk[1000 * 512:1008 * 512]) == b, 'WRITE(16) reaches the disk')
    o = io(bytes([0x88, 0]) + struct.pack('>QI', 1000, 8) + b'\0\0', DATA_IN, len(b))
    check(good(o) and o['data'] == b, 'READ(16) reads back what WRITE(16) wrote')
    # Polled completion: the device answers at once, HwStartIo finds it.
    d.defer = False
    c = bytes(range(256)) * 2
    s, buf, sense = srb(bytes([0x2A, 0, 0, 0, 0, 20, 0, 0, 1, 0]), DATA_OUT, 512, c)
    call(start_io, [ext, s], 'HwStartIo (polled)')
    check(len(completions_of(s)) == 1 and good(outcome(s, buf, sense))
          and bytes(d.disk[20 * 512:21 * 512]) == c, 'a write completes by polling in HwStartIo')
    d.defer = True
    print('data descriptors in place: %d, contiguous allocations during I/O: %s' %
          (d.in_place - in_place, contiguous[allocated:]))
    check(d.in_place - in_place >= 2 * 4 and contiguous[allocated:] == [],
          'data buffers are shared in place, cut at physical discontinuities: no bounce, no allocation')
    if len(FAILS) == fails:
        print('emulated: READ/WRITE(10/16) read back, interrupt and polled completion: OK')

    fails = len(FAILS)
    before = d.flushes
    o = io(bytes([0x35] + [0] * 9))
    check(good(o) and d.flushes == before + 1, 'SYNCHRONIZE CACHE reaches the device as one FLUSH')
    params = struct.pack('>HH4x', 6 + 32, 32) + struct.pack('>QI4x', 100, 8) + struct.pack('>QI4x', 200, 16)
    o = io(bytes([0x42, 0, 0, 0, 0, 0, 0]) + struct.pack('>H', len(params)) + b'\0', DATA_OUT,
           len(params), params)
    check(good(o) and d.discards == [(100, 8), (200, 16)], 'UNMAP reaches the device: %s' % d.discards)
    if len(FAILS) == fails:
        print('emulated: SYNCHRONIZE CACHE and UNMAP reach the device: OK')

    fails = len(FAILS)
    o = io(bytes([0xFF] + [0] * 5))
    check(o['srb_status'] == 0x84 and o['scsi_status'] == 2 and sense_of(o) == (5, 0x20, 0),
          'bad opcode: CHECK CONDITION, ILLEGAL REQUEST 20/00: %s' % o)
    o = io(bytes([0x28, 0]) + struct.pack('>I', SECTORS - 1) + bytes([0, 0, 2, 0]), DATA_IN, 1024)
    check(o['srb_status'] == 0x84 and sense_of(o) == (5, 0x21, 0),
          'read past the end: ILLEGAL REQUEST 21/00: %s' % o)
    if len(FAILS) == fails:
        print('emulated: bad CDBs get CHECK CONDITION with the right sense: OK')

    # HwResetBus with a read outstanding: reset first, then BUS_RESET.
    fails = len(FAILS)
    s, buf, sense = srb(bytes([0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0]), DATA_IN, 2048)
    call(start_io, [ext, s], 'HwStartIo (held)')
    check(d.pending and not completions_of(s), 'the device holds the read')
    mark = len(d.events)
    ok = call(reset_bus, [ext, 0], 'HwResetBus')
    after = d.events[mark:]
    print('HwResetBus returned %d, events %s' % (ok, after))
    check(ok == 1 and outcome(s, buf, sense)['srb_status'] == 0x0E, 'outstanding SRB: SRB_STATUS_BUS_RESET')
    check(('reset',) in after and ('complete', s) in after
          and after.index(('reset',)) < after.index(('complete', s)),
          'the device is reset BEFORE the outstanding SRB is completed')
    check(d.status == 0xF, 'the device is up again after the bus reset')
    d.pending = False
    o = io(bytes([0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0]), DATA_IN, len(a))
    check(good(o) and o['data'] == a, 'I/O works after the bus reset')
    if len(FAILS) == fails:
        print('emulated: HwResetBus resets the device before completing outstanding SRBs: OK')

    # A garbage used-ring entry.
    fails = len(FAILS)
    resets = d.resets
    d.garbage = True
    o = io(bytes([0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0]), DATA_IN, len(a))
    print('garbage used entry: outcome %s, resets %d -> %d, ResetDetected %d, status %#x' %
          (o['srb_status'], resets, d.resets, sp['reset_detected'], d.status))
    check(o['srb_status'] == 0x0E, 'the SRB the device lost comes back with BUS_RESET')
    check(d.resets == resets + 1 and sp['reset_detected'] == 1, 'the device is reset, StorPort told')
    check(d.status == 0xF, 'the device is up again')
    o = io(bytes([0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0]), DATA_IN, len(a))
    check(good(o) and o['data'] == a, 'data read back after the fault reset')
    if len(FAILS) == fails:
        print('emulated: a garbage used-ring entry resets the device, no crash: OK')

    # HwAdapterControl.
    fails = len(FAILS)
    lst = alloc(16, 'emu.control_types')
    se.mem_write(lst, struct.pack('<I', 5))
    ok = call(adapter_control, [ext, 0, lst], 'HwAdapterControl(query)', 32)
    check(ok == 0 and bytes(se.mem_read(lst + 4, 5)) == b'\x01\x01\x01\x00\x00', 'supported control types')
    ok = call(adapter_control, [ext, 1, 0], 'HwAdapterControl(stop)', 32)
    check(ok == 0 and d.status == 0, 'stop: the device is stopped')
    ok = call(adapter_control, [ext, 2, 0], 'HwAdapterControl(restart)', 32)
    check(ok == 0 and d.status == 0xF, 'restart: the device is up')
    o = io(bytes([0x28, 0, 0, 0, 0, 10, 0, 0, 4, 0]), DATA_IN, len(a))
    check(good(o) and o['data'] == a, 'I/O after restart')
    if len(FAILS) == fails:
        print('emulated: HwAdapterControl stop/restart: OK')

    # ---- D0 -> D3 -> D0 with requests outstanding ---------------------------
    fails = len(FAILS)
    d.volatile = True
    x = bytes((i * 3 + 17) & 0xFF for i in range(4 * 512))
    y = bytes((i * 29 + 4) & 0xFF for i in range(4 * 512))
    o = io(bytes([0x2A, 0, 0, 0, 1, 0x90, 0, 0, 4, 0]), DATA_OUT, len(x), x)   # LBA 400
    check(good(o) and d.unflushed, 'a write completed GOOD, still in the volatile cache')
    # Outstanding when the stop comes: a write and a read the device holds.
    sw, bw, nw = srb(bytes([0x2A, 0, 0, 0, 1, 0xF4, 0, 0, 4, 0]), DATA_OUT, len(y), y)  # LBA 500
    call(start_io, [ext, sw], 'HwStartIo (held write)')
    sr, br, nr = srb(bytes([0x28, 0, 0, 0, 1, 0x90, 0, 0, 4, 0]), DATA_IN, len(x))
    call(start_io, [ext, sr], 'HwStartIo (held read)')
    check(d.pending and not completions_of(sw) and not completions_of(sr), 'two requests outstanding')
    mark = len(d.events)
    ok = call(adapter_control, [ext, 1, 0], 'HwAdapterControl(stop) with I/O outstanding', 32)
    ev = d.events[mark:]
    print('stop with I/O outstanding: %d, events %s' % (ok, ev))
    check(ok == 0 and d.status == 0, 'stop: the device is stopped')
    check(len(completions_of(sw)) == 1 and good(outcome(sw, bw, nw))
          and len(completions_of(sr)) == 1 and outcome(sr, br, nr)['data'] == x,
          'the outstanding write and read complete GOOD before D3 (drained, not dropped)')
    check(('flush',) in ev and ('reset',) in ev and ev.index(('flush',)) < ev.index(('reset',))
          and ev.index(('complete', sw)) < ev.index(('flush',)),
          'a flush after the last write completed, before the reset')
    d.power_loss()
    ok = call(adapter_control, [ext, 2, 0], 'HwAdapterControl(restart)', 32)
    check(ok == 0 and d.status == 0xF, 'restart: the device is up')
    o = io(bytes([0x28, 0, 0, 0, 1, 0x90, 0, 0, 4, 0]), DATA_IN, len(x))
    check(good(o) and o['data'] == x, 'data written before D3 reads back after D0 (LBA 400)')
    o = io(bytes([0x28, 0, 0, 0, 1, 0xF4, 0, 0, 4, 0]), DATA_IN, len(y))
    check(good(o) and o['data'] == y, 'the write outstanding at D3 reads back after D0 (LBA 500)')
    # A device that answers nothing during the stop: the outstanding write
    # comes back BUS_RESET (the class driver retries it), never lost.
    d.stall_works = False
    z = bytes((i * 31 + 2) & 0xFF for i in range(512))
    sz, bz, nz = srb(bytes([0x2A, 0, 0, 0, 2, 0x58, 0, 0, 1, 0]), DATA_OUT, len(z), z)  # LBA 600
    call(start_io, [ext, sz], 'HwStartIo (write to a stuck device)')
    ok = call(adapter_control, [ext, 1, 0], 'HwAdapterControl(stop), device stuck', 32)
    check(ok == 0 and d.status == 0 and len(completions_of(sz)) == 1
          and outcome(sz, bz, nz)['srb_status'] == 0x0E,
          'a request the device never answered comes back BUS_RESET at D3, once')
    d.power_loss()
    d.stall_works = True
    ok = call(adapter_control, [ext, 2, 0], 'HwAdapterControl(restart)', 32)
    o = io(bytes([0x2A, 0, 0, 0, 2, 0x58, 0, 0, 1, 0]), DATA_OUT, len(z), z)        # the retry
    check(ok == 0 and good(o), 'the retried write succeeds after D0')
    o = io(bytes([0x28, 0, 0, 0, 2, 0x58, 0, 0, 1, 0]), DATA_IN, len(z))
    check(good(o) and o['data'] == z, 'the retried write reads back')
    d.volatile = False
    if len(FAILS) == fails:
        print('emulated: D0 -> D3 -> D0: outstanding I/O drained or retried, data read back: OK')

    # ---- SRB_EX ------------------------------------------------------------
    fails = len(FAILS)

    def srb_ex(function, flags=0, length=0, data=None, blocks=(), lun=0):
        """A STORAGE_REQUEST_BLOCK laid out as StorPort does (srb.h,
        x64): the 0x78-byte header, the SrbExDataOffset table, a
        STOR_ADDR_BTL8, then each SRBEX_DATA block 8-aligned. Blocks:
        ('cdb16'|'cdb32'|'var', cdb) with a 32-byte sense buffer, ('pnp',
        action, flags), ('power', state). Returns (srb, data, sense)."""
        buf = 0
        if length:
            buf = alloc(length + 0x1000, 'emu.srbex.data') + 0xE00
            scramble(buf, length)
            if data:
                se.mem_write(buf, data)
        sense = alloc(32, 'emu.srbex.sense')
        table_end = 0x78 + 4 * len(blocks)
        addr_at = (table_end + 7) & ~7
        body, offsets, at = b'', [], addr_at + 16
        for b in blocks:
            kind = b[0]
            if kind in ('cdb16', 'cdb32'):
                n = 16 if kind == 'cdb16' else 32
                blk = struct.pack('<IIBBBBIQ', 0x40 if n == 16 else 0x41, 32 if n == 16 else 48,
                                  0, 32, len(b[1]), 0, 0, sense) + b[1].ljust(n, b'\0')
            elif kind == 'var':
                blk = struct.pack('<IIBBBBI8xQ', 0x42, 24 + len(b[1]), 0, 32, 0, 0, len(b[1]),
                                  sense) + b[1]
            elif kind == 'pnp':
                blk = struct.pack('<IIB3xIII', 0x62, 16, 0, b[1], b[2], 0)
            else:
                blk = struct.pack('<IIB3xII', 0x61, 12, 0, b[1], 0)
            blk = blk.ljust((len(blk) + 7) & ~7, b'\0')
            offsets.append(at)
            body += blk
            at += len(blk)
        total = at
        hdr = bytearray(addr_at + 16)
        struct.pack_into('<HBBIIIIII', hdr, 0, 0x58, 0x28, 0, 0, 0x53524258, 1, total, function, flags)
        struct.pack_into('<I', hdr, 0x28, 10)
        struct.pack_into('<III', hdr, 0x34, addr_at, len(blocks), length)
        struct.pack_into('<Q', hdr, 0x40, buf)
        for i, o in enumerate(offsets):
            struct.pack_into('<I', hdr, 0x78 + 4 * i, o)
        struct.pack_into('<HHIBBB', hdr, addr_at, 1, 0, 4, 0, 0, lun)
        s = alloc(total, 'emu.srbex')
        se.mem_write(s, bytes(hdr) + body)
        return s, buf, sense, offsets

    def outcome_ex(s, buf, sense, offsets):
        st = se.mem_read(s + 3, 1)[0]
        n = struct.unpack('<I', se.mem_read(s + 0x3C, 4))[0]
        scsi, sn = (se.mem_read(s + offsets[0] + 8, 2) if offsets else (0, 0))
        return dict(srb_status=st, scsi_status=scsi, n=n,
                    data=bytes(se.mem_read(buf, n)) if buf and n else b'',
                    sense=bytes(se.mem_read(sense, sn)) if sn else b'')

    def io_ex(function, flags=0, length=0, data=None, blocks=(), lun=0, what=''):
        s, buf, sense, offsets = srb_ex(function, flags, length, data, blocks, lun)
        call(start_io, [ext, s], 'HwStartIo (SRB_EX %s)' % what)
        for _ in range(32):
            if completions_of(s) or not d.pending:
                break
            d.run()
            check(call(interrupt, [ext], 'HwInterrupt') == 1, 'HwInterrupt claims the interrupt')
        check(len(completions_of(s)) == 1, 'SRB_EX %s completed exactly once' % what)
        return outcome_ex(s, buf, sense, offsets)

    e = bytes((i * 5 + 9) & 0xFF for i in range(4 * 512))
    o = io_ex(0, DATA_OUT, len(e), e, [('cdb16', bytes([0x8A, 0]) + struct.pack('>QI', 300, 4) + b'\0\0')],
              what='WRITE(16)')
    check(good(o) and o['n'] == len(e) and bytes(d.disk[300 * 512:304 * 512]) == e,
          'SRB_EX CDB16 WRITE(16) reaches the disk: %s' % {k: v for k, v in o.items() if k != 'data'})
    read10 = bytes([0x28, 0]) + struct.pack('>I', 300) + bytes([0, 0, 4, 0])
    o = io_ex(0, DATA_IN, len(e), blocks=[('cdb32', read10)], what='READ(10) in a CDB32')
    check(good(o) and o['data'] == e, 'SRB_EX CDB32 READ(10) reads it back')
    o = io_ex(0, DATA_IN, len(e), blocks=[('var', read10)], what='READ(10) in a variable CDB')
    check(good(o) and o['data'] == e, 'SRB_EX CDB_VAR READ(10) reads it back')
    o = io_ex(0, blocks=[('cdb16', bytes([0xFF] + [0] * 5))], what='bad opcode')
    check(o['srb_status'] == 0x84 and o['scsi_status'] == 2 and sense_of(o) == (5, 0x20, 0),
          'SRB_EX bad opcode: CHECK CONDITION in the CDB block, sense in its buffer: %s' % o)
    caps = io_ex(0x25, DATA_IN, 24, blocks=[('pnp', 0x9, 0)], what='QUERY_CAPABILITIES')
    check(caps['srb_status'] == 1 and len(caps['data']) == 24
          and struct.unpack_from('<I', caps['data'], 4)[0] & (1 << 9),
          'SRB_EX PNP QUERY_CAPABILITIES: SurpriseRemovalOK filled in: %s' % caps)
    before = d.flushes
    o = io_ex(0x24, blocks=[('power', 4)], what='POWER D3')
    check(o['srb_status'] == 1 and d.flushes == before + 1, 'SRB_EX POWER to D3 flushes first')
    o = io_ex(0, DATA_IN, 8, blocks=[('cdb16', bytes([0x25] + [0] * 9))], lun=2, what='LUN 2')
    check(o['srb_status'] == 0x20, 'SRB_EX to LUN 2: INVALID_LUN (%#x)' % o['srb_status'])
    # Malformed: a bad signature, and a CDB block offset past SrbLength.
    events = len(d.events)
    s, buf, sense, offsets = srb_ex(0, DATA_IN, 512, blocks=[('cdb16', read10)])
    se.mem_write(s + 8, b'SRBX')
    call(start_io, [ext, s], 'HwStartIo (SRB_EX bad signature)')
    check(len(completions_of(s)) == 1 and se.mem_read(s + 3, 1)[0] == 0x06,
          'SRB_EX with a bad signature: INVALID_REQUEST')
    s, buf, sense, offsets = srb_ex(0, DATA_IN, 512, blocks=[('cdb16', read10)])
    se.mem_write(s + 0x78, struct.pack('<I', 0x7FF0))
    call(start_io, [ext, s], 'HwStartIo (SRB_EX block past the end)')
    check(len(completions_of(s)) == 1 and se.mem_read(s + 3, 1)[0] == 0x06,
          'SRB_EX with a block past SrbLength: INVALID_REQUEST')
    check(not d.pending and all(ev[0] == 'complete' for ev in d.events[events:]),
          'malformed SRB_EXs never reach the device: %s' % d.events[events:])
    if len(FAILS) == fails:
        print('emulated: SRB_EX (CDB16/CDB32/CDB_VAR, PnP, power) decoded and completed: OK')

    print('device complaints', d.bad, 'messages', messages)
    check(not d.bad, 'the device saw no protocol fault: %s' % d.bad)
    return 1 if FAILS else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1], dump=sys.argv[2:] == ['dump']))
