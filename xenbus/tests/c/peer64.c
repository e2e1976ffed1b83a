/*
 * C conformance peer, native (x86_64) ABI: layout table, ring sizes, the
 * notify rule as RING_PUSH_*_AND_CHECK_NOTIFY computes it, and a blkif back
 * ring and front ring driven only through the ring.h macros.
 *
 * Every function takes the ring state it works on, so the Rust tests can run
 * it in lock step with a Rust ring on the same shared page, or on a thread of
 * its own. The functions are out of line, so each call re-reads the shared
 * indices.
 */
#include "xen_peer.h"

#include <stdlib.h>
#include <xen/io/blkif.h>
#include <xen/io/netif.h>
#include <xen/grant_table.h>

static const struct xcp_layout layout64[] = {
    XCP_SIZE(struct blkif_request_segment),
    XCP_OFF(struct blkif_request_segment, gref),
    XCP_OFF(struct blkif_request_segment, first_sect),
    XCP_OFF(struct blkif_request_segment, last_sect),
    XCP_SIZE(struct blkif_request),
    XCP_OFF(struct blkif_request, operation),
    XCP_OFF(struct blkif_request, nr_segments),
    XCP_OFF(struct blkif_request, handle),
    XCP_OFF(struct blkif_request, id),
    XCP_OFF(struct blkif_request, sector_number),
    XCP_OFF(struct blkif_request, seg),
    XCP_SIZE(struct blkif_request_discard),
    XCP_OFF(struct blkif_request_discard, operation),
    XCP_OFF(struct blkif_request_discard, flag),
    XCP_OFF(struct blkif_request_discard, handle),
    XCP_OFF(struct blkif_request_discard, id),
    XCP_OFF(struct blkif_request_discard, sector_number),
    XCP_OFF(struct blkif_request_discard, nr_sectors),
    XCP_SIZE(struct blkif_request_indirect),
    XCP_OFF(struct blkif_request_indirect, operation),
    XCP_OFF(struct blkif_request_indirect, indirect_op),
    XCP_OFF(struct blkif_request_indirect, nr_segments),
    XCP_OFF(struct blkif_request_indirect, id),
    XCP_OFF(struct blkif_request_indirect, sector_number),
    XCP_OFF(struct blkif_request_indirect, handle),
    XCP_OFF(struct blkif_request_indirect, indirect_grefs),
    XCP_SIZE(struct blkif_response),
    XCP_OFF(struct blkif_response, id),
    XCP_OFF(struct blkif_response, operation),
    XCP_OFF(struct blkif_response, status),
    XCP_SIZE(struct netif_tx_request),
    XCP_OFF(struct netif_tx_request, gref),
    XCP_OFF(struct netif_tx_request, offset),
    XCP_OFF(struct netif_tx_request, flags),
    XCP_OFF(struct netif_tx_request, id),
    XCP_OFF(struct netif_tx_request, size),
    XCP_SIZE(struct netif_tx_response),
    XCP_OFF(struct netif_tx_response, id),
    XCP_OFF(struct netif_tx_response, status),
    XCP_SIZE(struct netif_rx_request),
    XCP_OFF(struct netif_rx_request, id),
    XCP_OFF(struct netif_rx_request, gref),
    XCP_SIZE(struct netif_rx_response),
    XCP_OFF(struct netif_rx_response, id),
    XCP_OFF(struct netif_rx_response, offset),
    XCP_OFF(struct netif_rx_response, flags),
    XCP_OFF(struct netif_rx_response, status),
    XCP_SIZE(struct netif_extra_info),
    XCP_OFF(struct netif_extra_info, type),
    XCP_OFF(struct netif_extra_info, flags),
    XCP_OFF(struct netif_extra_info, u),
    XCP_OFF(struct netif_extra_info, u.gso.size),
    XCP_OFF(struct netif_extra_info, u.gso.type),
    XCP_OFF(struct netif_extra_info, u.gso.features),
    XCP_SIZE(struct xen_netif_ctrl_request),
    XCP_OFF(struct xen_netif_ctrl_request, id),
    XCP_OFF(struct xen_netif_ctrl_request, type),
    XCP_OFF(struct xen_netif_ctrl_request, data),
    XCP_SIZE(struct xen_netif_ctrl_response),
    XCP_OFF(struct xen_netif_ctrl_response, id),
    XCP_OFF(struct xen_netif_ctrl_response, type),
    XCP_OFF(struct xen_netif_ctrl_response, status),
    XCP_OFF(struct xen_netif_ctrl_response, data),
    XCP_SIZE(struct grant_entry_v1),
    XCP_OFF(struct grant_entry_v1, flags),
    XCP_OFF(struct grant_entry_v1, domid),
    XCP_OFF(struct grant_entry_v1, frame),
    XCP_OFF(struct blkif_sring, req_prod),
    XCP_OFF(struct blkif_sring, req_event),
    XCP_OFF(struct blkif_sring, rsp_prod),
    XCP_OFF(struct blkif_sring, rsp_event),
    XCP_OFF(struct blkif_sring, pvt),
    XCP_OFF(struct blkif_sring, ring),
    XCP_OFF(struct netif_tx_sring, ring),
    XCP_OFF(struct netif_rx_sring, ring),
    XCP_OFF(struct xen_netif_ctrl_sring, ring),
    /* Slot strides: the union of request and response. */
    XCP_SIZE(union blkif_sring_entry),
    XCP_SIZE(union netif_tx_sring_entry),
    XCP_SIZE(union netif_rx_sring_entry),
    XCP_SIZE(union xen_netif_ctrl_sring_entry),
};

const struct xcp_layout *xcp_layout64(size_t *n)
{
    *n = sizeof(layout64) / sizeof(layout64[0]);
    return layout64;
}

/* __CONST_RING_SIZE for each ring type, for a shared area of `bytes`. */
unsigned xcp_ring_size(int kind, size_t bytes)
{
    switch (kind) {
    case 0: return __CONST_RING_SIZE(blkif, bytes);
    case 1: return __CONST_RING_SIZE(netif_tx, bytes);
    case 2: return __CONST_RING_SIZE(netif_rx, bytes);
    case 3: return __CONST_RING_SIZE(xen_netif_ctrl, bytes);
    default: return 0;
    }
}

/*
 * The notify decision of RING_PUSH_REQUESTS_AND_CHECK_NOTIFY (resp == 0) or
 * RING_PUSH_RESPONSES_AND_CHECK_NOTIFY (resp != 0) when the producer moves
 * from `old` to `new` and the consumer's event index is `event`.
 */
int xcp_notify_rule(int resp, unsigned old, unsigned new_, unsigned event)
{
    static union { struct blkif_sring s; char page[4096]; } u;
    int notify;

    if (!resp) {
        blkif_front_ring_t f;
        FRONT_RING_ATTACH(&f, &u.s, new_, 4096);
        u.s.req_prod = old;
        u.s.req_event = event;
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(&f, notify);
    } else {
        blkif_back_ring_t b;
        BACK_RING_ATTACH(&b, &u.s, new_, 4096);
        u.s.rsp_prod = old;
        u.s.rsp_event = event;
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(&b, notify);
    }
    return notify;
}

/* ---- blkif back ring ---------------------------------------------------- */

/*
 * Private ring state on a cache line of its own: two 24-byte callocs can land
 * on one line, and a front and a back on two threads would then false-share
 * it (the Rust rings live on separate stacks).
 */
static void *xcp_alloc_line(size_t size)
{
    size_t bytes = (size + 63) & ~(size_t)63;
    void *p = aligned_alloc(64, bytes);
    if (p)
        memset(p, 0, bytes);
    return p;
}

blkif_back_ring_t *xcp_back_new(void *sring, size_t bytes, unsigned start)
{
    blkif_back_ring_t *b = xcp_alloc_line(sizeof(*b));
    if (b)
        BACK_RING_ATTACH(b, (blkif_sring_t *)sring, start, bytes);
    return b;
}

void xcp_back_free(blkif_back_ring_t *b) { free(b); }
unsigned xcp_back_size(blkif_back_ring_t *b) { return RING_SIZE(b); }
unsigned xcp_back_req_cons(blkif_back_ring_t *b) { return b->req_cons; }

/* Copy the next request out (RING_COPY_REQUEST); 1 if there was one. */
int xcp_back_consume(blkif_back_ring_t *b, blkif_request_t *out)
{
    if (!RING_HAS_UNCONSUMED_REQUESTS(b))
        return 0;
    rmb(); /* read the request /after/ seeing req_prod */
    RING_COPY_REQUEST(b, b->req_cons, out);
    b->req_cons++;
    return 1;
}

/*
 * Queue a response in the next slot (not yet published). Built locally and
 * copied whole, padding zeroed, as Linux's blkback does, so no stale request
 * bytes are left in the slot.
 */
void xcp_back_respond(blkif_back_ring_t *b, uint64_t id, uint8_t op, int16_t status)
{
    blkif_response_t r;
    memset(&r, 0, sizeof(r));
    r.id = id;
    r.operation = op;
    r.status = status;
    memcpy(RING_GET_RESPONSE(b, b->rsp_prod_pvt), &r, sizeof(r));
    b->rsp_prod_pvt++;
}

int xcp_back_push_notify(blkif_back_ring_t *b)
{
    int notify;
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(b, notify);
    return notify;
}

int xcp_back_final_check(blkif_back_ring_t *b)
{
    int work;
    RING_FINAL_CHECK_FOR_REQUESTS(b, work);
    return work != 0;
}

/* ---- blkif front ring --------------------------------------------------- */

/*
 * Attach a front ring at `start`; if `init`, first initialise the shared
 * header as SHARED_RING_INIT does, but with both producers at `start` and
 * both event indices at `start + 1`.
 */
blkif_front_ring_t *xcp_front_new(void *sring, size_t bytes, unsigned start, int init)
{
    blkif_sring_t *s = sring;
    blkif_front_ring_t *f = xcp_alloc_line(sizeof(*f));
    if (!f)
        return NULL;
    if (init) {
        SHARED_RING_INIT(s);
        s->req_prod = s->rsp_prod = start;
        s->req_event = s->rsp_event = start + 1;
    }
    FRONT_RING_ATTACH(f, s, start, bytes);
    return f;
}

void xcp_front_free(blkif_front_ring_t *f) { free(f); }
unsigned xcp_front_size(blkif_front_ring_t *f) { return RING_SIZE(f); }
unsigned xcp_front_free_requests(blkif_front_ring_t *f) { return RING_FREE_REQUESTS(f); }

/* Queue a request (not yet published); 0 if the ring is full. */
int xcp_front_queue(blkif_front_ring_t *f, const blkif_request_t *req)
{
    if (RING_FULL(f))
        return 0;
    *RING_GET_REQUEST(f, f->req_prod_pvt) = *req;
    f->req_prod_pvt++;
    return 1;
}

int xcp_front_push_notify(blkif_front_ring_t *f)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(f, notify);
    return notify;
}

/* Copy the next response out (RING_COPY_RESPONSE); 1 if there was one. */
int xcp_front_consume(blkif_front_ring_t *f, blkif_response_t *out)
{
    if (!RING_HAS_UNCONSUMED_RESPONSES(f))
        return 0;
    rmb(); /* read the response /after/ seeing rsp_prod */
    RING_COPY_RESPONSE(f, f->rsp_cons, out);
    f->rsp_cons++;
    return 1;
}

int xcp_front_final_check(blkif_front_ring_t *f)
{
    int work;
    RING_FINAL_CHECK_FOR_RESPONSES(f, work);
    return work != 0;
}

/* ---- constants ---------------------------------------------------------- */

static const struct xcp_layout consts64[] = {
    { "BLKIF_OP_READ", BLKIF_OP_READ },
    { "BLKIF_OP_WRITE", BLKIF_OP_WRITE },
    { "BLKIF_OP_WRITE_BARRIER", BLKIF_OP_WRITE_BARRIER },
    { "BLKIF_OP_FLUSH_DISKCACHE", BLKIF_OP_FLUSH_DISKCACHE },
    { "BLKIF_OP_DISCARD", BLKIF_OP_DISCARD },
    { "BLKIF_OP_INDIRECT", BLKIF_OP_INDIRECT },
    { "BLKIF_MAX_SEGMENTS_PER_REQUEST", BLKIF_MAX_SEGMENTS_PER_REQUEST },
    { "BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST", BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST },
    { "BLKIF_DISCARD_SECURE", BLKIF_DISCARD_SECURE },
    { "BLKIF_RSP_OKAY", (size_t)(int64_t)BLKIF_RSP_OKAY },
    { "BLKIF_RSP_ERROR", (size_t)(int64_t)BLKIF_RSP_ERROR },
    { "BLKIF_RSP_EOPNOTSUPP", (size_t)(int64_t)BLKIF_RSP_EOPNOTSUPP },
    { "XEN_NETIF_NR_SLOTS_MIN", XEN_NETIF_NR_SLOTS_MIN },
    { "XEN_NETIF_MAX_TX_SIZE", XEN_NETIF_MAX_TX_SIZE },
    { "NETTXF_csum_blank", NETTXF_csum_blank },
    { "NETTXF_data_validated", NETTXF_data_validated },
    { "NETTXF_more_data", NETTXF_more_data },
    { "NETTXF_extra_info", NETTXF_extra_info },
    { "NETRXF_data_validated", NETRXF_data_validated },
    { "NETRXF_csum_blank", NETRXF_csum_blank },
    { "NETRXF_more_data", NETRXF_more_data },
    { "NETRXF_extra_info", NETRXF_extra_info },
    { "XEN_NETIF_EXTRA_TYPE_GSO", XEN_NETIF_EXTRA_TYPE_GSO },
    { "XEN_NETIF_EXTRA_TYPE_MCAST_ADD", XEN_NETIF_EXTRA_TYPE_MCAST_ADD },
    { "XEN_NETIF_EXTRA_TYPE_MCAST_DEL", XEN_NETIF_EXTRA_TYPE_MCAST_DEL },
    { "XEN_NETIF_EXTRA_TYPE_HASH", XEN_NETIF_EXTRA_TYPE_HASH },
    { "XEN_NETIF_EXTRA_FLAG_MORE", XEN_NETIF_EXTRA_FLAG_MORE },
    { "XEN_NETIF_GSO_TYPE_TCPV4", XEN_NETIF_GSO_TYPE_TCPV4 },
    { "XEN_NETIF_GSO_TYPE_TCPV6", XEN_NETIF_GSO_TYPE_TCPV6 },
    { "NETIF_RSP_DROPPED", (size_t)(int64_t)NETIF_RSP_DROPPED },
    { "NETIF_RSP_ERROR", (size_t)(int64_t)NETIF_RSP_ERROR },
    { "NETIF_RSP_OKAY", (size_t)(int64_t)NETIF_RSP_OKAY },
    { "NETIF_RSP_NULL", (size_t)(int64_t)NETIF_RSP_NULL },
    { "XEN_NETIF_CTRL_TYPE_INVALID", XEN_NETIF_CTRL_TYPE_INVALID },
    { "XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS", XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS },
    { "XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS", XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS },
    { "XEN_NETIF_CTRL_TYPE_SET_HASH_KEY", XEN_NETIF_CTRL_TYPE_SET_HASH_KEY },
    { "XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE", XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE },
    { "XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE", XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE },
    { "XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING", XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING },
    { "XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM", XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM },
    { "XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE", XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE },
    { "XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING", XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING },
    { "XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING", XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING },
    { "XEN_NETIF_CTRL_STATUS_SUCCESS", XEN_NETIF_CTRL_STATUS_SUCCESS },
    { "XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED", XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED },
    { "XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER", XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER },
    { "XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW", XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW },
    { "GTF_invalid", GTF_invalid },
    { "GTF_permit_access", GTF_permit_access },
    { "GTF_accept_transfer", GTF_accept_transfer },
    { "GTF_transitive", GTF_transitive },
    { "GTF_type_mask", GTF_type_mask },
    { "GTF_readonly", GTF_readonly },
    { "GTF_reading", GTF_reading },
    { "GTF_writing", GTF_writing },
    { "GNTTAB_NR_RESERVED_ENTRIES", GNTTAB_NR_RESERVED_ENTRIES },
    { "GNTTAB_RESERVED_CONSOLE", GNTTAB_RESERVED_CONSOLE },
    { "GNTTAB_RESERVED_XENSTORE", GNTTAB_RESERVED_XENSTORE },
};

/* Protocol constants; negative values are sign-extended to size_t. */
const struct xcp_layout *xcp_consts64(size_t *n)
{
    *n = sizeof(consts64) / sizeof(consts64[0]);
    return consts64;
}

/* ---- benchmark loops ---------------------------------------------------- */

/*
 * The C side of the ring benchmark: the same loops as the Rust side, using
 * only the ring.h macros. Busy-polling (no event channel): this measures the
 * ring itself. `cpu_relax` is also a compiler barrier, so the shared indices
 * are re-read on every spin.
 */
#include <sched.h>

#define cpu_relax() __asm__ __volatile__("pause" ::: "memory")

/*
 * Use a value the way a driver would, so the compiler must compute all of it.
 * Without this GCC drops most of RING_COPY_*'s volatile copy (it loaded only
 * the two request fields the loop reads, and no response slot at all) and the
 * event-index load behind an unused `notify`: the C side then moved a third
 * of the cache lines the Rust side, which copies every entry whole, moves.
 * The Rust loops pass the same values to `std::hint::black_box`.
 */
#define consume(x) __asm__ __volatile__("" : : "m"(x))

/* Idle backoff shared by both sides of the benchmark: spin, then yield. */
static void idle(unsigned *spins)
{
    if (++*spins < 64) {
        cpu_relax();
    } else {
        *spins = 0;
        sched_yield();
    }
}

/* Produce `n` requests in batches of up to `batch`, consuming responses. */
void xcp_bench_front(blkif_front_ring_t *f, uint64_t n, unsigned batch)
{
    uint64_t sent = 0, done = 0;
    blkif_request_t req;
    blkif_response_t rsp;
    unsigned spins = 0, avail;
    int notify;

    memset(&req, 0, sizeof(req));
    while (done < n) {
        unsigned k = 0;
        while (k < batch && sent < n && !RING_FULL(f)) {
            req.id = sent;
            req.sector_number = sent * 8;
            *RING_GET_REQUEST(f, f->req_prod_pvt) = req;
            f->req_prod_pvt++;
            sent++;
            k++;
        }
        if (k) {
            RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(f, notify);
            consume(notify);
        }
        /* One read of rsp_prod per pass; drain exactly what it showed. */
        avail = RING_HAS_UNCONSUMED_RESPONSES(f);
        if (!avail) {
            idle(&spins);
            continue;
        }
        rmb();
        while (avail--) {
            RING_COPY_RESPONSE(f, f->rsp_cons, &rsp);
            consume(rsp);
            f->rsp_cons++;
            done++;
        }
    }
}

/* Answer `n` requests, publishing after each batch found on the ring. */
void xcp_bench_back(blkif_back_ring_t *b, uint64_t n)
{
    uint64_t served = 0;
    blkif_request_t req;
    blkif_response_t rsp;
    unsigned spins = 0, avail;
    int notify;

    memset(&rsp, 0, sizeof(rsp));
    while (served < n) {
        /* One read of req_prod per pass; drain exactly what it showed. */
        avail = RING_HAS_UNCONSUMED_REQUESTS(b);
        if (!avail) {
            idle(&spins);
            continue;
        }
        rmb();
        while (avail--) {
            RING_COPY_REQUEST(b, b->req_cons, &req);
            consume(req);
            b->req_cons++;
            rsp.id = req.id;
            rsp.operation = req.operation;
            *RING_GET_RESPONSE(b, b->rsp_prod_pvt) = rsp;
            b->rsp_prod_pvt++;
            served++;
        }
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(b, notify);
        consume(notify);
    }
}

/*
 * One thread, both ends in turn: push a batch, serve it, consume the
 * responses. No scheduler in the picture: the cost of the ring operations.
 */
void xcp_bench_lockstep(blkif_front_ring_t *f, blkif_back_ring_t *b, uint64_t n, unsigned batch)
{
    uint64_t sent = 0, done = 0;
    blkif_request_t req, got;
    blkif_response_t rsp, back;
    int notify;

    memset(&req, 0, sizeof(req));
    memset(&rsp, 0, sizeof(rsp));
    while (done < n) {
        unsigned k = 0;
        while (k < batch && sent < n && !RING_FULL(f)) {
            req.id = sent;
            req.sector_number = sent * 8;
            *RING_GET_REQUEST(f, f->req_prod_pvt) = req;
            f->req_prod_pvt++;
            sent++;
            k++;
        }
        RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(f, notify);
        consume(notify);
        rmb();
        while (RING_HAS_UNCONSUMED_REQUESTS(b)) {
            RING_COPY_REQUEST(b, b->req_cons, &got);
            consume(got);
            b->req_cons++;
            rsp.id = got.id;
            rsp.operation = got.operation;
            *RING_GET_RESPONSE(b, b->rsp_prod_pvt) = rsp;
            b->rsp_prod_pvt++;
        }
        RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(b, notify);
        consume(notify);
        rmb();
        while (RING_HAS_UNCONSUMED_RESPONSES(f)) {
            RING_COPY_RESPONSE(f, f->rsp_cons, &back);
            consume(back);
            f->rsp_cons++;
            done++;
        }
    }
}
