/* agent/ops/migration_policy.c - the live-migration monitor's decisions (see
 * migration_policy.h). */
#include "agent/ops/migration_policy.h"

#define EWMA_ALPHA      0.4
#define PROGRESS_MARGIN 0.05

double vn_lm_data_gb(int memory_mb, const guint64 *disk_bytes, int n_disks)
{
    double gb = MAX(memory_mb / 1024.0, 2.0);

    for (int i = 0; i < n_disks; i++)
        gb += MAX(disk_bytes[i] / (1024.0 * 1024.0 * 1024.0), 2.0);
    return gb;
}

void vn_lm_policy_init(VnLmPolicy *p, const VnLmPolicyConfig *cfg, double data_gb)
{
    *p = (VnLmPolicy){ 0 };
    p->cfg = *cfg;
    if (p->cfg.steps < 1)
        p->cfg.steps = 1;
    p->data_gb = data_gb > 0 ? data_gb : 2.0;
    p->ewma = -1;
}

int vn_lm_downtime_at(const VnLmPolicy *p, int i, double *at_s)
{
    double base = (double)p->cfg.downtime_ms / p->cfg.steps;
    double offset = (p->cfg.downtime_ms - base) / p->cfg.steps;

    if (at_s)
        *at_s = (double)p->cfg.delay_s * p->data_gb * i;
    return (int)(base + offset * i);
}

static VnLmAction act(VnLmActionKind kind, int ms, const char *reason)
{
    VnLmAction a = { kind, ms, reason };

    return a;
}

/* The configured action when the migration takes too long or stalls. */
static VnLmAction escalate(VnLmPolicy *p, const char *why_abort, const char *why_force)
{
    if (p->postcopy)
        return act(VN_LM_CONTINUE, 0, NULL);
    if (p->cfg.action == VN_LM_ACTION_ABORT)
        return act(VN_LM_ABORT, 0, why_abort);
    if (p->cfg.permit_post_copy) {
        p->postcopy = TRUE;
        return act(VN_LM_POSTCOPY, 0, why_force);
    }
    if (!p->paused) {
        p->paused = TRUE;
        return act(VN_LM_PAUSE, 0, why_force);
    }
    return act(VN_LM_CONTINUE, 0, NULL); /* paused: no more dirtying, the copy converges */
}

static void track_progress(VnLmPolicy *p, double elapsed_s, const VnJobStats *s)
{
    double remaining = (double)(s->data_remaining > 0 ? s->data_remaining : s->memory_remaining);

    if (s->data_total == 0 && s->memory_total == 0)
        return; /* no statistics yet */
    if (p->ewma < 0) {
        p->ewma = remaining;
        p->best = remaining;
        p->last_progress_s = elapsed_s;
        return;
    }
    p->ewma = EWMA_ALPHA * remaining + (1 - EWMA_ALPHA) * p->ewma;
    if (p->ewma < p->best * (1 - PROGRESS_MARGIN)) {
        p->best = p->ewma;
        p->last_progress_s = elapsed_s;
    }
}

VnLmAction vn_lm_policy_step(VnLmPolicy *p, double elapsed_s, const VnJobStats *stats,
                             gboolean postcopy, gboolean abort_requested, gboolean force_requested)
{
    double at;

    if (postcopy)
        p->postcopy = TRUE;
    if (abort_requested && !p->postcopy)
        return act(VN_LM_ABORT, 0, "cancelled on request");
    if (force_requested && !p->forced) {
        p->forced = TRUE;
        if (p->cfg.permit_post_copy && !p->postcopy) {
            p->postcopy = TRUE;
            return act(VN_LM_POSTCOPY, 0, "forced to complete on request: post-copy");
        }
        if (!p->paused && !p->postcopy) {
            p->paused = TRUE;
            return act(VN_LM_PAUSE, 0, "forced to complete on request: guest paused");
        }
    }
    /* the downtime schedule */
    if (p->step <= p->cfg.steps) {
        int ms = vn_lm_downtime_at(p, p->step, &at);
        if (elapsed_s >= at) {
            p->step++;
            return act(VN_LM_SET_DOWNTIME, ms, "downtime step");
        }
    }
    if (stats)
        track_progress(p, elapsed_s, stats);
    if (p->cfg.completion_timeout_s > 0 && !p->forced &&
        elapsed_s > p->cfg.completion_timeout_s * p->data_gb) {
        p->forced = TRUE;
        return escalate(p, "completion timeout reached: aborted",
                        p->cfg.permit_post_copy ? "completion timeout reached: post-copy"
                                                : "completion timeout reached: guest paused");
    }
    if (p->cfg.stall_timeout_s > 0 && p->ewma >= 0 && !p->forced &&
        elapsed_s - p->last_progress_s > p->cfg.stall_timeout_s) {
        p->forced = TRUE;
        return escalate(p, "no progress (migration stalled): aborted",
                        p->cfg.permit_post_copy ? "no progress (stalled): post-copy"
                                                : "no progress (stalled): guest paused");
    }
    return act(VN_LM_CONTINUE, 0, NULL);
}
