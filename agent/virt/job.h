/* agent/virt/job.h - statistics of a domain job (a migration), as libvirt reports them live
 * (virDomainGetJobStats) and at the end (the JOB_COMPLETED event). */
#pragma once

#include <glib.h>
#include <libvirt/libvirt.h>

typedef enum {
    VN_JOB_NONE,
    VN_JOB_RUNNING,
    VN_JOB_COMPLETED,
    VN_JOB_FAILED,
    VN_JOB_CANCELLED,
} VnJobState;

typedef struct {
    VnJobState state;
    gint64 elapsed_ms;
    gint64 downtime_ms; /* -1 when unknown */
    gint64 data_total;
    gint64 data_processed;
    gint64 data_remaining;
    gint64 memory_total;
    gint64 memory_processed;
    gint64 memory_remaining;
    gint64 memory_bps;
    gint64 memory_dirty_rate; /* pages per second */
    gint64 memory_iteration;
    gint64 disk_total;
    gint64 disk_processed;
    gint64 disk_remaining;
    gint64 postcopy_requests;
    gint64 auto_converge_throttle; /* percent */
} VnJobStats;

/* Fills @out from typed parameters; missing fields are 0 (downtime -1). */
void vn_job_stats_from_params(virTypedParameterPtr params, int n, VnJobStats *out);
