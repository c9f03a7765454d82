/* agent/metrics.c - Prometheus exposition of the agent's counters and gauges. */
#include <malloc.h>

#include "agent/metrics.h"
#include "api/instance.h"

static void metric(GString *out, const char *name, const char *type, const char *help,
                   const char *labels, double value)
{
    g_string_append_printf(out, "# HELP %s %s\n# TYPE %s %s\n%s%s %.17g\n", name, help, name, type,
                           name, labels ? labels : "", value);
}

static void sample(GString *out, const char *name, const char *labels, double value)
{
    g_string_append_printf(out, "%s%s %.17g\n", name, labels, value);
}

/* upper bounds in seconds: queries take milliseconds, builds seconds, migrations minutes */
static const double bounds[VN_DURATION_BUCKETS] = { 0.005, 0.025, 0.1, 0.25, 0.5, 1,
                                                    2.5,   5,     10,  30,   60,  300 };

void vn_agent_observe_duration(VnAgent *a, VnMethod method, double seconds)
{
    int b = 0;

    if (method >= VN_METHOD_LAST)
        return;
    while (b < VN_DURATION_BUCKETS && seconds > bounds[b])
        b++;
    g_mutex_lock(&a->durations_lock);
    a->durations[method][b]++;
    a->durations_sum[method] += seconds;
    g_mutex_unlock(&a->durations_lock);
}

gboolean vn_agent_serving(VnAgent *a)
{
    VnRpcStats rs = { 0 };

    if (a->rpc)
        vn_rpc_get_stats(a->rpc, &rs);
    return g_atomic_int_get(&a->ready) && !g_atomic_int_get(&a->stopping) && a->virt &&
           vn_virt_conn_is_alive(a->virt) && rs.connected;
}

static void durations(GString *out, VnAgent *a)
{
    g_string_append(out, "# HELP virtnode_operation_duration_seconds Time from a request's "
                         "arrival to its result, by method\n"
                         "# TYPE virtnode_operation_duration_seconds histogram\n");
    g_mutex_lock(&a->durations_lock);
    for (int m = 0; m < VN_METHOD_LAST; m++) {
        const char *name = vn_method_info(m)->name;
        guint64 total = 0;
        for (int b = 0; b <= VN_DURATION_BUCKETS; b++)
            total += a->durations[m][b];
        if (!total)
            continue;
        guint64 cum = 0;
        for (int b = 0; b < VN_DURATION_BUCKETS; b++) {
            cum += a->durations[m][b];
            g_string_append_printf(out,
                                   "virtnode_operation_duration_seconds_bucket{method=\"%s\","
                                   "le=\"%g\"} %" G_GUINT64_FORMAT "\n",
                                   name, bounds[b], cum);
        }
        g_string_append_printf(out,
                               "virtnode_operation_duration_seconds_bucket{method=\"%s\","
                               "le=\"+Inf\"} %" G_GUINT64_FORMAT "\n"
                               "virtnode_operation_duration_seconds_sum{method=\"%s\"} %.6f\n"
                               "virtnode_operation_duration_seconds_count{method=\"%s\"} "
                               "%" G_GUINT64_FORMAT "\n",
                               name, total, name, a->durations_sum[m], name, total);
    }
    g_mutex_unlock(&a->durations_lock);
}

char *vn_agent_metrics(VnAgent *a)
{
    GString *out = g_string_new(NULL);
    VnAgentCounters *c = &a->counters;
    int by_state[VN_VM_LAST] = { 0 };
    g_autoptr(GPtrArray) recs = a->store ? vn_instance_store_list(a->store, FALSE) : NULL;

    metric(out, "virtnode_build_info", "gauge", "The agent's version, always 1",
           "{version=\"" VIRTNODE_VERSION "\"}", 1);
    metric(out, "virtnode_ready", "gauge",
           "1 when the agent serves requests (as /readyz: started, not stopping, libvirt and "
           "the broker connected)",
           NULL, vn_agent_serving(a));
    metric(out, "virtnode_start_time_seconds", "gauge", "Unix time the agent started", NULL,
           (double)a->started_at);
    metric(out, "virtnode_requests_total", "counter", "RPC requests received", NULL,
           g_atomic_int_get(&c->requests_total));
    metric(out, "virtnode_requests_failed_total", "counter", "RPC requests answered with a failure",
           NULL, g_atomic_int_get(&c->requests_failed));
    metric(out, "virtnode_duplicate_requests_total", "counter",
           "Requests recognised by their _unique_id and not applied again", NULL,
           g_atomic_int_get(&c->duplicates));
    g_string_append(out, "# HELP virtnode_builds_total Builds by result\n"
                         "# TYPE virtnode_builds_total counter\n");
    sample(out, "virtnode_builds_total", "{result=\"ok\"}", g_atomic_int_get(&c->builds_ok));
    sample(out, "virtnode_builds_total", "{result=\"failed\"}",
           g_atomic_int_get(&c->builds_failed));
    g_string_append(out,
                    "# HELP virtnode_live_migrations_total Outgoing live migrations by result\n"
                    "# TYPE virtnode_live_migrations_total counter\n");
    sample(out, "virtnode_live_migrations_total", "{result=\"ok\"}",
           g_atomic_int_get(&c->migrations_ok));
    sample(out, "virtnode_live_migrations_total", "{result=\"failed\"}",
           g_atomic_int_get(&c->migrations_failed));
    metric(out, "virtnode_operations_running", "gauge", "Operations running now", NULL,
           g_atomic_int_get(&c->ops_running));
    metric(out, "virtnode_power_state_syncs_total", "counter",
           "Instance states changed to follow the hypervisor", NULL,
           g_atomic_int_get(&c->power_syncs));
    metric(out, "virtnode_moved_copies_removed_total", "counter",
           "Copies removed of guests the central database places on another host", NULL,
           g_atomic_int_get(&c->moved_removed));
    for (guint i = 0; recs && i < recs->len; i++) {
        VnInstanceRecord *r = g_ptr_array_index(recs, i);
        if (r->vm_state < VN_VM_LAST)
            by_state[r->vm_state]++;
    }
    g_string_append(out, "# HELP virtnode_instances Instances of this host by vm_state\n"
                         "# TYPE virtnode_instances gauge\n");
    for (int s = 0; s < VN_VM_LAST; s++) {
        g_autofree char *l = g_strdup_printf("{vm_state=\"%s\"}", vn_vm_state_name(s));
        if (s != VN_VM_DELETED)
            sample(out, "virtnode_instances", l, by_state[s]);
    }
    if (a->rpc) {
        VnRpcStats rs;
        vn_rpc_get_stats(a->rpc, &rs);
        metric(out, "virtnode_amqp_connected", "gauge", "1 when the broker link is up", NULL,
               rs.connected);
        metric(out, "virtnode_amqp_reconnects_total", "counter", "Broker reconnections", NULL,
               (double)rs.reconnects);
        metric(out, "virtnode_amqp_rejected_total", "counter",
               "Messages rejected as malformed or invalid", NULL, (double)rs.rejected);
        metric(out, "virtnode_amqp_outbox", "gauge", "Messages waiting for the broker", NULL,
               rs.outbox);
        metric(out, "virtnode_amqp_keepalives_total", "counter",
               "Call-monitor keep-alive replies sent", NULL, (double)rs.keepalives_sent);
        metric(out, "virtnode_notifications_total", "counter", "Notifications confirmed", NULL,
               (double)rs.notifications_sent);
        gint ok_s = g_atomic_int_get(&a->probe_ok_s);
        metric(out, "virtnode_command_path_probe_age_seconds", "gauge",
               "Seconds since a ping through this host's own queue last came back (-1: none yet)",
               NULL, ok_s ? (double)(g_get_monotonic_time() / G_USEC_PER_SEC - ok_s) : -1.0);
    }
    if (a->reporter) {
        VnReporterStats ds;
        vn_reporter_get_stats(a->reporter, &ds);
        metric(out, "virtnode_database_connected", "gauge", "1 when the database is reachable",
               NULL, ds.connected);
        metric(out, "virtnode_database_writes_total", "counter", "Rows written", NULL,
               (double)ds.writes);
        metric(out, "virtnode_database_outages_total", "counter", "Database outages", NULL,
               (double)ds.outages);
        metric(out, "virtnode_database_last_heartbeat_timestamp_seconds", "gauge",
               "Unix time of the last heartbeat written", NULL, (double)ds.last_heartbeat);
    }
    if (a->virt)
        metric(out, "virtnode_libvirt_connected", "gauge", "1 when libvirtd answers", NULL,
               vn_virt_conn_is_alive(a->virt));
    if (a->images)
        metric(out, "virtnode_image_cache_bytes", "gauge", "Bytes of cached images", NULL,
               (double)vn_image_cache_usage(a->images));
    /* where the process's memory goes: the allocator's live and held-but-free bytes, and
     * the journal's page cache and statements */
    struct mallinfo2 mi = mallinfo2();
    g_string_append(out, "# HELP virtnode_heap_bytes The allocator's memory: in use by the agent "
                         "and the libraries in its process, or free but kept for reuse\n"
                         "# TYPE virtnode_heap_bytes gauge\n");
    sample(out, "virtnode_heap_bytes", "{state=\"in_use\"}", (double)(mi.uordblks + mi.hblkhd));
    sample(out, "virtnode_heap_bytes", "{state=\"free\"}", (double)mi.fordblks);
    metric(out, "virtnode_journal_memory_bytes", "gauge",
           "Memory of the journal's SQLite (page cache, statements), part of the heap", NULL,
           (double)vn_journal_memory_used());
    if (a->journal) {
        metric(out, "virtnode_journal_flushes_total", "counter",
               "Flushes of the journal's log to disk (durable writes made together share one)",
               NULL, (double)vn_journal_syncs(a->journal));
        metric(out, "virtnode_journal_durable_writes_total", "counter",
               "Journal writes made durable (on disk before the call returned)", NULL,
               (double)vn_journal_durable_writes(a->journal));
    }
    durations(out, a);
    return g_string_free(out, FALSE);
}
