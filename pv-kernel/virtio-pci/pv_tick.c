// SPDX-License-Identifier: GPL-2.0
/*
 * A periodic call into a module's Rust, on a delayed work item: the
 * fallback that keeps a virtio driver moving when an interrupt is late or
 * lost (an INTx level dropped by an ISR read elsewhere, a notification
 * raised before the handler was registered). The Rust side is
 * pv_virtio_pci::Tick, which owns the item and stops it on drop.
 *
 * In C because the kernel's Rust workqueue has no cancel: a module must
 * know the callback has finished before it frees what the callback uses.
 */
#include <linux/jiffies.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

struct pv_tick {
	struct delayed_work work;
	void (*fn)(const void *ctx);
	const void *ctx;
	unsigned long period;
};

struct pv_tick *pv_tick_start(void (*fn)(const void *ctx), const void *ctx,
			      unsigned int period_ms);
void pv_tick_stop(struct pv_tick *t);
void pv_tick_kick(struct pv_tick *t);

static void pv_tick_run(struct work_struct *w)
{
	struct pv_tick *t = container_of(to_delayed_work(w), struct pv_tick, work);

	t->fn(t->ctx);
	/* Re-armed here; cancel_delayed_work_sync() copes with self-requeueing. */
	queue_delayed_work(system_dfl_wq, &t->work, t->period);
}

/* NULL when out of memory. The first call is one period from now. */
struct pv_tick *pv_tick_start(void (*fn)(const void *ctx), const void *ctx,
			      unsigned int period_ms)
{
	struct pv_tick *t = kzalloc(sizeof(*t), GFP_KERNEL);

	if (!t)
		return NULL;
	INIT_DELAYED_WORK(&t->work, pv_tick_run);
	t->fn = fn;
	t->ctx = ctx;
	t->period = max(1UL, msecs_to_jiffies(period_ms));
	queue_delayed_work(system_dfl_wq, &t->work, t->period);
	return t;
}

/* Runs the call as soon as possible (any context, even atomic). */
void pv_tick_kick(struct pv_tick *t)
{
	mod_delayed_work(system_dfl_wq, &t->work, 0);
}

/* Returns once no call is running or will run; frees the item. */
void pv_tick_stop(struct pv_tick *t)
{
	cancel_delayed_work_sync(&t->work);
	kfree(t);
}
