//! The handover of a disk between two frontend connections
//! (`host-backend/src/blk/handover.rs`), driven by the native vhost-user
//! driver in the order a same-host live migration takes: the source runs,
//! the destination connects and starts its device while the source still
//! runs (its requests fail: the source owns the disk), the source's queue
//! is stopped (GET_VRING_BASE), the destination's next request takes the
//! disk over, and the stopped source cannot take it back.
//!
//! No sleeps decide the outcome: each step waits for the previous one's
//! answer.

use pvtest::peers::PvBackend;
use pvtest::vhost_user::blk::{DriverError, NativeBlkDriver};

/// `VIRTIO_BLK_S_IOERR`.
const S_IOERR: u8 = 1;

fn refused(r: Result<(), DriverError>) -> bool {
    matches!(
        r,
        Err(DriverError::Status {
            status: S_IOERR,
            ..
        })
    )
}

#[test]
fn the_disk_moves_to_the_second_connection_only_once_the_first_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("disk.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).expect("image");
    let sock = dir.path().join("disk.sock");
    let backend = PvBackend::start(
        &[format!(
            "path={},socket={},queues=1,name=disk",
            img.display(),
            sock.display()
        )],
        &["--log-level", "info", "--metrics", "127.0.0.1:0"],
        &dir.path().join("backend.log"),
    )
    .expect("backend");
    let (a_data, b_data) = (vec![0xa5u8; 4096], vec![0x5bu8; 4096]);

    let mut source = NativeBlkDriver::connect(&sock, 1, 64).expect("source");
    source.write(0, &a_data).expect("the source writes");
    // The destination connects and starts while the source runs.
    let mut dest = NativeBlkDriver::connect(&sock, 1, 64).expect("destination");
    assert!(
        refused(dest.write(8, &b_data)),
        "the destination wrote while the source owned the disk; log:\n{}",
        backend.log()
    );
    source
        .write(16, &a_data)
        .expect("the source still owns the disk");

    // The source stops (the last step of a migration on its side).
    source.device().stop_queue(0).expect("GET_VRING_BASE");
    dest.write(8, &b_data).unwrap_or_else(|e| {
        panic!(
            "the destination could not take over: {e}\n{}",
            backend.log()
        )
    });
    assert_eq!(dest.read(0, 4096).expect("read"), a_data);
    assert_eq!(dest.read(16, 4096).expect("read"), a_data);

    // A third connection while the destination runs is refused too (the
    // source QEMU resumed after the handover connects like this after a
    // reconnect).
    drop(source);
    let mut late = NativeBlkDriver::connect(&sock, 1, 64).expect("late connection");
    assert!(
        refused(late.write(8, &a_data)),
        "a connection wrote while the destination owned the disk; log:\n{}",
        backend.log()
    );
    assert_eq!(dest.read(8, 4096).expect("read"), b_data);

    let text = backend.fetch_metrics().expect("metrics");
    assert!(
        PvBackend::metric(
            &text,
            "pvbackend_blk_errors_total{disk=\"disk\",kind=\"not_owner\"}"
        )
        .is_some_and(|v| v >= 2.0),
        "refusals not counted:\n{text}"
    );
    assert!(backend.log().contains("handed over from connection 1"));
}
