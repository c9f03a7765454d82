/* agent/ops/migration_policy.h - what a live migration's monitor does next, decided from the
 * job statistics alone (pure: no I/O, unit-tested step by step).
 *
 *   - stepped maximum downtime, Nova's schedule: @steps + 1 steps from downtime/steps up to
 *     downtime, delay * data_gb seconds apart (data_gb = max(RAM GiB, 2) + sum over copied
 *     disks of max(disk GiB, 2));
 *   - completion timeout: completion_timeout * data_gb seconds;
 *   - stall detection on the remaining data, smoothed (EWMA, alpha 0.4) so QEMU's
 *     saw-tooth of dirty-page passes does not look like progress or like a stall: no new
 *     low (5 % below the best so far) for stall_timeout seconds is a stall;
 *   - on timeout or stall: the configured action.  force_complete switches to post-copy
 *     when permitted, else pauses the guest so the copy can finish; abort cancels.  A
 *     migration in post-copy is never aborted: the guest's memory is split between the
 *     hosts and only completion keeps it whole. */
#pragma once

#include <glib.h>

#include "agent/base/config.h"
#include "agent/virt/job.h"

typedef struct {
    int downtime_ms;
    int steps;
    int delay_s;              /* per GiB */
    int completion_timeout_s; /* per GiB; 0 = none */
    int stall_timeout_s;      /* 0 = none */
    VnLmTimeoutAction action;
    gboolean permit_post_copy;
} VnLmPolicyConfig;

typedef enum {
    VN_LM_CONTINUE,
    VN_LM_SET_DOWNTIME,
    VN_LM_POSTCOPY,
    VN_LM_PAUSE,
    VN_LM_ABORT,
} VnLmActionKind;

typedef struct {
    VnLmActionKind kind;
    int downtime_ms;    /* SET_DOWNTIME */
    const char *reason; /* static text for logs and the migration record */
} VnLmAction;

typedef struct {
    VnLmPolicyConfig cfg;
    double data_gb;
    int step;    /* next downtime step to apply */
    double ewma; /* smoothed remaining bytes, < 0 before the first sample */
    double best;
    double last_progress_s;
    gboolean forced; /* a force-complete action was taken */
    gboolean paused;
    gboolean postcopy;
} VnLmPolicy;

/* The data a migration moves, in GiB, for the schedule (Nova's rule). */
double vn_lm_data_gb(int memory_mb, const guint64 *disk_bytes, int n_disks);

void vn_lm_policy_init(VnLmPolicy *p, const VnLmPolicyConfig *cfg, double data_gb);

/* The downtime (ms) of schedule step @i (0-based) and when it applies (s from the start). */
int vn_lm_downtime_at(const VnLmPolicy *p, int i, double *at_s);

/* The next action after a job sample at @elapsed_s seconds.  @postcopy: the job is in its
 * post-copy phase; @abort_requested / @force_requested: an operator asked for it.  Call
 * again until CONTINUE to get all actions due now (each is returned once). */
VnLmAction vn_lm_policy_step(VnLmPolicy *p, double elapsed_s, const VnJobStats *stats,
                             gboolean postcopy, gboolean abort_requested, gboolean force_requested);
