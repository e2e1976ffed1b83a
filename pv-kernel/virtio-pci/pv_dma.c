// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel's inline streaming-DMA calls, for pv_virtio_pci's Hal (Rust
 * cannot call inline functions, and the kernel's Rust helpers cover only
 * what the in-tree Rust code uses).
 */
#include <linux/dma-mapping.h>

u64 pv_dma_map(struct device *dev, void *ptr, size_t len, u32 dir);
void pv_dma_unmap(struct device *dev, u64 addr, size_t len, u32 dir);

/* Returns 0 when the mapping fails (the queue treats 0 as no memory). */
u64 pv_dma_map(struct device *dev, void *ptr, size_t len, u32 dir)
{
	dma_addr_t a = dma_map_single(dev, ptr, len, (enum dma_data_direction)dir);

	if (dma_mapping_error(dev, a))
		return 0;
	return a;
}

void pv_dma_unmap(struct device *dev, u64 addr, size_t len, u32 dir)
{
	dma_unmap_single(dev, addr, len, (enum dma_data_direction)dir);
}
