/*
 * C conformance peer, x86_32 ABI (`protocol = "x86_32-abi"`): the same
 * blkif.h compiled the way an i386 guest sees it. i386 aligns 64-bit fields
 * to 4 bytes, which `#pragma pack(4)` reproduces on x86_64, and defines
 * __i386__, which blkif.h tests for the indirect request's trailing pad.
 * (This is how Linux's blkback builds its x86_32 structs too.)
 */
#include "xen_peer.h"

#define __i386__ 1
#pragma pack(push, 4)
#include <xen/io/blkif.h>
#pragma pack(pop)
#undef __i386__

static const struct xcp_layout layout32[] = {
    XCP_SIZE(struct blkif_request_segment),
    XCP_SIZE(struct blkif_request),
    XCP_OFF(struct blkif_request, operation),
    XCP_OFF(struct blkif_request, nr_segments),
    XCP_OFF(struct blkif_request, handle),
    XCP_OFF(struct blkif_request, id),
    XCP_OFF(struct blkif_request, sector_number),
    XCP_OFF(struct blkif_request, seg),
    XCP_SIZE(struct blkif_request_discard),
    XCP_OFF(struct blkif_request_discard, flag),
    XCP_OFF(struct blkif_request_discard, handle),
    XCP_OFF(struct blkif_request_discard, id),
    XCP_OFF(struct blkif_request_discard, sector_number),
    XCP_OFF(struct blkif_request_discard, nr_sectors),
    XCP_SIZE(struct blkif_request_indirect),
    XCP_OFF(struct blkif_request_indirect, indirect_op),
    XCP_OFF(struct blkif_request_indirect, nr_segments),
    XCP_OFF(struct blkif_request_indirect, id),
    XCP_OFF(struct blkif_request_indirect, sector_number),
    XCP_OFF(struct blkif_request_indirect, handle),
    XCP_OFF(struct blkif_request_indirect, indirect_grefs),
    XCP_OFF(struct blkif_request_indirect, pad),
    XCP_SIZE(struct blkif_response),
    XCP_OFF(struct blkif_response, id),
    XCP_OFF(struct blkif_response, operation),
    XCP_OFF(struct blkif_response, status),
    XCP_OFF(struct blkif_sring, ring),
    XCP_SIZE(union blkif_sring_entry),
};

const struct xcp_layout *xcp_layout32(size_t *n)
{
    *n = sizeof(layout32) / sizeof(layout32[0]);
    return layout32;
}

unsigned xcp_ring_size32(size_t bytes)
{
    return __CONST_RING_SIZE(blkif, bytes);
}

/*
 * A blkif front and back ring in the x86_32 layout, for exchanging requests
 * with the Rust rings built on `BlkifRequest32`/`BlkifResponse32`.
 */
#include <stdlib.h>

blkif_front_ring_t *xcp_front32_new(void *sring, size_t bytes, unsigned start)
{
    blkif_sring_t *s = sring;
    blkif_front_ring_t *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    SHARED_RING_INIT(s);
    s->req_prod = s->rsp_prod = start;
    s->req_event = s->rsp_event = start + 1;
    FRONT_RING_ATTACH(f, s, start, bytes);
    return f;
}

void xcp_ring32_free(void *r) { free(r); }

/* Queue a request with every field derived from `seq`; 0 if full. */
int xcp_front32_queue(blkif_front_ring_t *f, uint64_t id, uint64_t seq)
{
    blkif_request_t r;
    unsigned i;
    if (RING_FULL(f))
        return 0;
    memset(&r, 0, sizeof(r));
    r.operation = seq & 1;
    r.nr_segments = seq % 12;
    r.handle = 0x32;
    r.id = id;
    r.sector_number = seq * 8;
    for (i = 0; i < BLKIF_MAX_SEGMENTS_PER_REQUEST; i++) {
        r.seg[i].gref = (uint32_t)seq * 31 + i;
        r.seg[i].first_sect = i;
        r.seg[i].last_sect = 7;
    }
    memcpy(RING_GET_REQUEST(f, f->req_prod_pvt), &r, sizeof(r));
    f->req_prod_pvt++;
    return 1;
}

int xcp_front32_push_notify(blkif_front_ring_t *f)
{
    int notify;
    RING_PUSH_REQUESTS_AND_CHECK_NOTIFY(f, notify);
    return notify;
}

/* 1 and the response's id and status if there was one. */
int xcp_front32_consume(blkif_front_ring_t *f, uint64_t *id, int16_t *status)
{
    blkif_response_t r;
    if (!RING_HAS_UNCONSUMED_RESPONSES(f))
        return 0;
    rmb();
    RING_COPY_RESPONSE(f, f->rsp_cons, &r);
    f->rsp_cons++;
    *id = r.id;
    *status = r.status;
    return 1;
}

blkif_back_ring_t *xcp_back32_new(void *sring, size_t bytes, unsigned start)
{
    blkif_back_ring_t *b = calloc(1, sizeof(*b));
    if (b)
        BACK_RING_ATTACH(b, (blkif_sring_t *)sring, start, bytes);
    return b;
}

/* Consume one request and answer it at once with status = -(seq & 1). */
int xcp_back32_serve_one(blkif_back_ring_t *b, uint64_t *id, uint64_t *sector)
{
    blkif_request_t req;
    blkif_response_t rsp;
    if (!RING_HAS_UNCONSUMED_REQUESTS(b))
        return 0;
    rmb();
    RING_COPY_REQUEST(b, b->req_cons, &req);
    b->req_cons++;
    memset(&rsp, 0, sizeof(rsp));
    rsp.id = req.id;
    rsp.operation = req.operation;
    rsp.status = -(int16_t)(req.sector_number / 8 & 1);
    memcpy(RING_GET_RESPONSE(b, b->rsp_prod_pvt), &rsp, sizeof(rsp));
    b->rsp_prod_pvt++;
    *id = req.id;
    *sector = req.sector_number;
    return 1;
}

int xcp_back32_push_notify(blkif_back_ring_t *b)
{
    int notify;
    RING_PUSH_RESPONSES_AND_CHECK_NOTIFY(b, notify);
    return notify;
}
