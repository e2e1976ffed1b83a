//! `log` records to the kernel debugger (`DbgPrintEx`, component
//! `DPFLTR_IHVDRIVER_ID`): errors at `DPFLTR_ERROR_LEVEL` (always shown),
//! the rest at `DPFLTR_INFO_LEVEL` (shown when the debugger's filter mask
//! asks for it). Formatted on the stack, truncated at 256 bytes.

use core::fmt::Write;

use crate::ffi;

struct StackBuf {
    buf: [u8; 256],
    len: usize,
}

impl Write for StackBuf {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

struct DbgPrint;

impl log::Log for DbgPrint {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut b = StackBuf {
            buf: [0; 256],
            len: 0,
        };
        let _ = write!(b, "pvdrivers: {}: {}", record.level(), record.args());
        let level = if record.level() == log::Level::Error {
            ffi::DPFLTR_ERROR_LEVEL
        } else {
            ffi::DPFLTR_INFO_LEVEL
        };
        // SAFETY: the format takes a length and a pointer to that many
        // bytes, which `b` holds; DbgPrintEx is callable at any IRQL up to
        // DIRQL and copies the text.
        unsafe {
            ffi::DbgPrintEx(
                ffi::DPFLTR_IHVDRIVER_ID,
                level,
                c"%.*s\n".as_ptr().cast(),
                b.len as i32,
                b.buf.as_ptr(),
            )
        };
    }

    fn flush(&self) {}
}

static LOGGER: DbgPrint = DbgPrint;

/// Send `log` records to the kernel debugger (once per driver; later calls
/// do nothing).
pub fn init(max: log::LevelFilter) {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(max);
    }
}
