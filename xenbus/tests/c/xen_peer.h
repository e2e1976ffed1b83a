/*
 * Common prelude for the C conformance peer: what ring.h expects its user to
 * provide (integer types, memset, barriers) before it is included.
 *
 * The barriers are the C11 fences with the meaning ring.h gives them:
 * mb() full, rmb() orders loads after it, wmb() orders stores before it.
 */
#ifndef XEN_PEER_H
#define XEN_PEER_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define mb()  __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define rmb() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

/* One (name, value) row of the layout tables the Rust tests compare. */
struct xcp_layout {
    const char *name;
    size_t value;
};

#define XCP_SIZE(t)      { #t ".sizeof", sizeof(t) }
#define XCP_OFF(t, f)    { #t "." #f, offsetof(t, f) }
#endif
