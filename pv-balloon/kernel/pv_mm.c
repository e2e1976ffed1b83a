// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel's inline page and memory-size helpers, for the pv_balloon
 * module's Rust (it cannot call inline functions).
 */
#include <linux/mm.h>

u64 pv_page_to_phys(struct page *page);
u64 pv_totalram_bytes(void);

u64 pv_page_to_phys(struct page *page)
{
	return page_to_phys(page);
}

u64 pv_totalram_bytes(void)
{
	return (u64)totalram_pages() << PAGE_SHIFT;
}
