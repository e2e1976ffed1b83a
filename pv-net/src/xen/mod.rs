//! Xen netif frontend (placeholder while the virtio half lands).
