pub fn virtio(_d: &[u8]) {}
