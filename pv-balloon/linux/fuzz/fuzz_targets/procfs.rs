//! The Linux runtime's `/proc` parsers (`/proc/meminfo`, `/proc/vmstat`,
//! `/proc/iomem`, `/proc/pressure/memory`) over arbitrary text: no panic,
//! no overflow, and every figure the stats carry comes from the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pv_balloon_linux::procfs::{self, MemInfo, VmStat};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mi = MemInfo::parse(&text);
    let vm = VmStat::parse(&text);
    let _ = mi.available();
    let _ = procfs::mem_stats(&mi, &vm);
    let _ = procfs::system_ram_bytes(&text);
    let _ = procfs::psi_full_avg10(&text);
});
