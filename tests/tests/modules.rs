//! Module dependency resolution against the real current Debian cloud kernel.

use pvtest::{kernel, modules::ModuleIndex};

#[test]
fn scenario_modules_resolve_with_dependencies_first() {
    let k = kernel::current().expect("kernel");
    let index = ModuleIndex::load(&k.modules_dir).expect("index");
    let wanted = [
        "virtio_pci",
        "virtio_blk",
        "virtio_net",
        "virtio_balloon",
        "nbd",
        "tun",
        "uio_pci_generic",
    ];
    let order = index.load_order(&wanted).expect("order");
    for w in wanted {
        assert!(
            order.iter().any(|m| m == w) || index.is_builtin(w),
            "{w} missing from {order:?}"
        );
    }
    for (i, m) in order.iter().enumerate() {
        assert!(index.path(m).is_some(), "{m} has no file");
        for dep in index.depends_of(m).expect("depends") {
            assert!(
                order[..i].contains(&dep) || index.is_builtin(&dep),
                "{dep} must be loaded before {m}: {order:?}"
            );
        }
    }
    // virtio_blk cannot load before the virtio core on any kernel that has it as a module.
    if let (Some(core), Some(blk)) = (
        order.iter().position(|m| m == "virtio"),
        order.iter().position(|m| m == "virtio_blk"),
    ) {
        assert!(core < blk);
    }
}
