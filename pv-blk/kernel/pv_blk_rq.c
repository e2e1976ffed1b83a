// SPDX-License-Identifier: GPL-2.0
/*
 * What the pv_blk module's Rust needs of blk-mq that 7.3's Rust block
 * layer does not offer: a request's operation, position and data segments,
 * ending it with an error (the Rust side can only end it successfully),
 * and the queue limits beyond the block sizes (write cache, discard,
 * write-zeroes, segments).
 */
#include <linux/blk-mq.h>
#include <linux/blkdev.h>

/* Operations, as the Rust side names them. */
#define PV_RQ_READ 0
#define PV_RQ_WRITE 1
#define PV_RQ_FLUSH 2
#define PV_RQ_DISCARD 3
#define PV_RQ_WRITE_ZEROES 4
#define PV_RQ_OTHER 255

struct pv_seg {
	void *ptr;
	u32 len;
};

u32 pv_rq_op(struct request *rq);
u64 pv_rq_sector(struct request *rq);
u32 pv_rq_bytes(struct request *rq);
u32 pv_rq_segments(struct request *rq, struct pv_seg *segs, u32 max);
void pv_rq_end(struct request *rq, int err);
int pv_blk_set_limits(struct blk_mq_tag_set *set, unsigned int depth,
		      bool write_cache, u32 max_discard, u32 max_write_zeroes,
		      u32 max_segments);

u32 pv_rq_op(struct request *rq)
{
	switch (req_op(rq)) {
	case REQ_OP_READ:
		return PV_RQ_READ;
	case REQ_OP_WRITE:
		return PV_RQ_WRITE;
	case REQ_OP_FLUSH:
		return PV_RQ_FLUSH;
	case REQ_OP_DISCARD:
		return PV_RQ_DISCARD;
	case REQ_OP_WRITE_ZEROES:
		return PV_RQ_WRITE_ZEROES;
	default:
		return PV_RQ_OTHER;
	}
}

u64 pv_rq_sector(struct request *rq)
{
	return blk_rq_pos(rq);
}

u32 pv_rq_bytes(struct request *rq)
{
	return blk_rq_bytes(rq);
}

/*
 * The request's data as kernel virtual ranges (x86-64: every page is in
 * the direct map), one per single-page segment. Returns the count, or
 * max + 1 when they do not fit.
 */
u32 pv_rq_segments(struct request *rq, struct pv_seg *segs, u32 max)
{
	struct req_iterator iter;
	struct bio_vec bv;
	u32 n = 0;

	rq_for_each_segment(bv, rq, iter) {
		if (n == max)
			return max + 1;
		segs[n].ptr = bvec_virt(&bv);
		segs[n].len = bv.bv_len;
		n++;
	}
	return n;
}

/* Ends the request with the status of -err (0: success). */
void pv_rq_end(struct request *rq, int err)
{
	blk_mq_end_request(rq, errno_to_blk_status(err));
}

/*
 * Sets the limits of the one disk on @set (the Rust TagSet's blk_mq_tag_set,
 * checked against the @depth and single hardware queue it was made with).
 * 0 for max_discard or max_write_zeroes leaves the operation off.
 */
int pv_blk_set_limits(struct blk_mq_tag_set *set, unsigned int depth,
		      bool write_cache, u32 max_discard, u32 max_write_zeroes,
		      u32 max_segments)
{
	struct request_queue *q;
	struct queue_limits lim;

	if (set->queue_depth != depth || set->nr_hw_queues != 1)
		return -EINVAL;
	mutex_lock(&set->tag_list_lock);
	q = list_first_entry_or_null(&set->tag_list, struct request_queue,
				     tag_set_list);
	mutex_unlock(&set->tag_list_lock);
	if (!q)
		return -ENODEV;
	lim = queue_limits_start_update(q);
	if (write_cache)
		lim.features |= BLK_FEAT_WRITE_CACHE;
	if (max_discard) {
		lim.max_hw_discard_sectors = max_discard;
		lim.max_discard_segments = 1;
		lim.discard_granularity = lim.logical_block_size;
	}
	lim.max_write_zeroes_sectors = max_write_zeroes;
	if (max_segments)
		lim.max_segments = min_t(u32, lim.max_segments, max_segments);
	return queue_limits_commit_update_frozen(q, &lim);
}
