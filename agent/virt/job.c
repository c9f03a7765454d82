/* agent/virt/job.c - typed parameters of a domain job into VnJobStats. */
#include <string.h>

#include "agent/virt/job.h"

static gint64 get_ll(virTypedParameterPtr params, int n, const char *name)
{
    unsigned long long v = 0;

    if (virTypedParamsGetULLong(params, n, name, &v) == 1)
        return v > G_MAXINT64 ? G_MAXINT64 : (gint64)v;
    return 0;
}

void vn_job_stats_from_params(virTypedParameterPtr params, int n, VnJobStats *out)
{
    memset(out, 0, sizeof(*out));
    out->downtime_ms = -1;
    out->elapsed_ms = get_ll(params, n, VIR_DOMAIN_JOB_TIME_ELAPSED);
    if (virTypedParamsGetULLong(params, n, VIR_DOMAIN_JOB_DOWNTIME, NULL) == 1)
        out->downtime_ms = get_ll(params, n, VIR_DOMAIN_JOB_DOWNTIME);
    out->data_total = get_ll(params, n, VIR_DOMAIN_JOB_DATA_TOTAL);
    out->data_processed = get_ll(params, n, VIR_DOMAIN_JOB_DATA_PROCESSED);
    out->data_remaining = get_ll(params, n, VIR_DOMAIN_JOB_DATA_REMAINING);
    out->memory_total = get_ll(params, n, VIR_DOMAIN_JOB_MEMORY_TOTAL);
    out->memory_processed = get_ll(params, n, VIR_DOMAIN_JOB_MEMORY_PROCESSED);
    out->memory_remaining = get_ll(params, n, VIR_DOMAIN_JOB_MEMORY_REMAINING);
    out->memory_bps = get_ll(params, n, VIR_DOMAIN_JOB_MEMORY_BPS);
    out->memory_dirty_rate = get_ll(params, n, VIR_DOMAIN_JOB_MEMORY_DIRTY_RATE);
    out->memory_iteration = get_ll(params, n, VIR_DOMAIN_JOB_MEMORY_ITERATION);
    out->disk_total = get_ll(params, n, VIR_DOMAIN_JOB_DISK_TOTAL);
    out->disk_processed = get_ll(params, n, VIR_DOMAIN_JOB_DISK_PROCESSED);
    out->disk_remaining = get_ll(params, n, VIR_DOMAIN_JOB_DISK_REMAINING);
    out->postcopy_requests = get_ll(params, n, VIR_DOMAIN_JOB_MEMORY_POSTCOPY_REQS);
    {
        int t = 0;
        if (virTypedParamsGetInt(params, n, VIR_DOMAIN_JOB_AUTO_CONVERGE_THROTTLE, &t) == 1)
            out->auto_converge_throttle = t;
    }
}
