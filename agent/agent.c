/* agent/agent.c - the daemon's object: start-up, wiring, periodic tasks, reload, stop
 * (see agent.h). */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <glib-unix.h>
#include <glib/gstdio.h>
#include <systemd/sd-daemon.h>

#include "agent/agent.h"
#include "agent/dispatcher.h"
#include "agent/base/log.h"
#include "agent/metrics.h"
#include "agent/ops/migration.h"
#include "agent/ops/ports.h"
#include "agent/ops/volumes.h"
#include "agent/reconcile.h"
#include "agent/virt/host.h"
#include "agent/virt/virt.h"
#include "api/json.h"
#include "api/status_server.h"

#define BINARY "virtnode-compute"

VnConfig *vn_agent_config(VnAgent *a)
{
    VnConfig *c;

    g_mutex_lock(&a->cfg_lock);
    c = vn_config_ref(a->cfg);
    g_mutex_unlock(&a->cfg_lock);
    return c;
}

char *vn_agent_instance_dir(VnAgent *a, const char *uuid)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);

    return g_build_filename(cfg->instances_path, uuid, NULL);
}

static void rpc_reply_sink(gpointer data, const char *reply_q, const char *msg_id,
                           json_object *result, const VnRpcFailure *failure)
{
    VnAgent *a = data;

    if (a->rpc)
        vn_rpc_reply_to(a->rpc, reply_q, msg_id, result, failure);
}

void vn_agent_reply(VnAgent *a, const char *reply_q, const char *msg_id, json_object *result,
                    const VnRpcFailure *failure)
{
    if (a->reply && reply_q && msg_id)
        a->reply(a->reply_data, reply_q, msg_id, result, failure);
}

/* ------------------------------------------------------------------ notifications */

static json_object *payload(const char *name, json_object *data)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "virtnode_object.name", json_object_new_string(name));
    json_object_object_add(o, "virtnode_object.namespace", json_object_new_string("virtnode"));
    json_object_object_add(o, "virtnode_object.version", json_object_new_string("1.0"));
    json_object_object_add(o, "virtnode_object.data", data);
    return o;
}

static void publish(VnAgent *a, const char *event_type, json_object *p)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autofree char *text = NULL;
    const char *prio = g_str_has_suffix(event_type, ".error") ? "ERROR" : "INFO";
    gint64 id;

    if (!a->rpc || !cfg->amqp_notifications)
        return;
    /* kept in the journal until the broker confirms it: a crash does not lose it */
    text = vn_json_to_string(p);
    id = vn_journal_outbox_add(a->journal, event_type, prio, text, NULL);
    vn_rpc_notify(a->rpc, id > 0 ? id : 0, event_type, prio, p);
}

void vn_agent_notify_instance(VnAgent *a, const char *event_type, const VnInstanceRecord *rec,
                              const char *fault)
{
    g_autoptr(json_object) p = NULL;
    json_object *d;

    if (!rec)
        return;
    d = json_object_new_object();
    json_object_object_add(d, "uuid", json_object_new_string(rec->uuid));
    json_object_object_add(d, "display_name", json_object_new_string(rec->name ? rec->name : ""));
    json_object_object_add(d, "host", rec->host ? json_object_new_string(rec->host) : NULL);
    json_object_object_add(d, "state", json_object_new_string(vn_vm_state_name(rec->vm_state)));
    json_object_object_add(
        d, "task_state",
        rec->task_state ? json_object_new_string(vn_task_state_name(rec->task_state)) : NULL);
    json_object_object_add(d, "power_state", json_object_new_int(rec->power_state));
    json_object_object_add(d, "tenant_id",
                           json_object_new_string(rec->project_id ? rec->project_id : ""));
    json_object_object_add(d, "user_id", json_object_new_string(rec->user_id ? rec->user_id : ""));
    json_object_object_add(d, "image_uuid",
                           json_object_new_string(rec->image.id ? rec->image.id : ""));
    json_object_object_add(d, "flavor", vn_flavor_to_json(&rec->flavor));
    /* the volumes (never their connection info); the controller asks the volume service to
     * delete those marked delete_on_termination once instance.delete.end arrives */
    json_object *bds = json_object_new_array();
    for (guint i = 0; rec->volumes && i < rec->volumes->len; i++) {
        const VnVolumeSpec *v = g_ptr_array_index(rec->volumes, i);
        json_object *b = json_object_new_object();
        json_object_object_add(b, "volume_id", json_object_new_string(v->volume_id));
        json_object_object_add(b, "device_name",
                               v->device_name ? json_object_new_string(v->device_name) : NULL);
        json_object_object_add(b, "boot_index", json_object_new_int(v->boot_index));
        json_object_object_add(b, "delete_on_termination",
                               json_object_new_boolean(v->delete_on_termination));
        json_object_array_add(bds, b);
    }
    json_object_object_add(d, "block_devices", bds);
    json_object_object_add(d, "request_id",
                           rec->request_id ? json_object_new_string(rec->request_id) : NULL);
    if (fault) {
        json_object *f = json_object_new_object();
        json_object_object_add(f, "message", json_object_new_string(fault));
        json_object_object_add(f, "exception",
                               json_object_new_string(rec->fault_class ? rec->fault_class : ""));
        json_object_object_add(d, "fault", f);
    } else {
        json_object_object_add(d, "fault", NULL);
    }
    p = payload("InstanceActionPayload", d);
    publish(a, event_type, p);
}

void vn_agent_notify_service(VnAgent *a, const char *event_type)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(json_object) p = NULL;
    json_object *d = json_object_new_object();

    json_object_object_add(d, "host", json_object_new_string(cfg->host));
    json_object_object_add(d, "binary", json_object_new_string(BINARY));
    json_object_object_add(d, "topic", json_object_new_string(cfg->amqp_topic));
    json_object_object_add(d, "version", json_object_new_string(VIRTNODE_VERSION));
    json_object_object_add(d, "ready", json_object_new_boolean(g_atomic_int_get(&a->ready)));
    json_object_object_add(d, "stopping", json_object_new_boolean(g_atomic_int_get(&a->stopping)));
    p = payload("ServiceStatusPayload", d);
    publish(a, event_type, p);
}

/* ------------------------------------------------------------------ reporter hooks */

void vn_agent_capacity_changed(VnAgent *a)
{
    if (a->reporter)
        vn_reporter_capacity_changed(a->reporter);
}

VnInstanceRow *vn_agent_instance_row(const VnInstanceRecord *r)
{
    VnInstanceRow *row = g_new0(VnInstanceRow, 1);
    g_autoptr(json_object) flavor = vn_flavor_to_json(&r->flavor);
    g_autoptr(json_object) image = vn_image_ref_to_json(&r->image);
    const char *task = vn_task_state_name(r->task_state);

    row->uuid = g_strdup(r->uuid);
    row->host = g_strdup(r->host);
    row->name = g_strdup(r->name);
    row->project_id = g_strdup(r->project_id);
    row->user_id = g_strdup(r->user_id);
    row->vm_state = g_strdup(vn_vm_state_name(r->vm_state));
    row->task_state = g_strdup(task);
    row->power_state = r->power_state;
    row->flavor = vn_json_to_string(flavor);
    row->image = vn_json_to_string(image);
    row->fault = g_strdup(r->fault_message);
    row->launched_at = r->launched_at;
    row->terminated_at = r->terminated_at;
    row->generation = r->generation;
    return row;
}

static void on_instance_changed(const VnInstanceRecord *rec, gpointer user_data)
{
    VnAgent *a = user_data;

    if (a->reporter)
        vn_reporter_instance(a->reporter, vn_agent_instance_row(rec));
}

static VnCapacity *hook_capacity(gpointer data)
{
    VnAgent *a = data;

    vn_tracker_set_cache_bytes(a->tracker, vn_image_cache_usage(a->images));
    vn_tracker_set_workload(a->tracker, g_atomic_int_get(&a->counters.ops_running),
                            (guint64)g_atomic_int_get(&a->counters.builds_failed));
    return vn_tracker_capacity(a->tracker);
}

static GPtrArray *hook_all_instances(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(GPtrArray) recs = vn_instance_store_list(a->store, TRUE);
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    GPtrArray *rows = g_ptr_array_new_with_free_func((GDestroyNotify)vn_instance_row_free);

    for (guint i = 0; i < recs->len; i++) {
        VnInstanceRecord *r = g_ptr_array_index(recs, i);
        /* a record this host handed over by migration is not ours to report */
        if (g_strcmp0(r->host, cfg->host) == 0)
            g_ptr_array_add(rows, vn_agent_instance_row(r));
    }
    return rows;
}

static GPtrArray *hook_pending_actions(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(GPtrArray) acts = vn_journal_actions_unreported(a->journal, 500, NULL);
    GPtrArray *rows = g_ptr_array_new_with_free_func((GDestroyNotify)vn_action_row_free);

    for (guint i = 0; acts && i < acts->len; i++) {
        VnJournalAction *j = g_ptr_array_index(acts, i);
        VnActionRow *r = g_new0(VnActionRow, 1);
        r->journal_id = g_strdup(vn_journal_id(a->journal));
        r->local_id = j->id;
        r->instance_uuid = g_strdup(j->instance_uuid);
        r->request_id = g_strdup(j->request_id);
        r->action = g_strdup(j->action);
        r->start = j->start;
        r->finish = j->finish;
        r->result = g_strdup(j->result);
        r->message = g_strdup(j->message);
        g_ptr_array_add(rows, r);
    }
    return rows;
}

static void hook_actions_written(GPtrArray *rows, gpointer data)
{
    VnAgent *a = data;
    g_autofree VnJournalAction *done = g_new0(VnJournalAction, rows->len);
    g_autofree const VnJournalAction **each = g_new(const VnJournalAction *, rows->len);
    g_autoptr(GError) e = NULL;

    for (guint i = 0; i < rows->len; i++) {
        VnActionRow *r = g_ptr_array_index(rows, i);
        done[i].id = r->local_id;
        done[i].finish = r->finish;
        each[i] = &done[i];
    }
    if (!vn_journal_actions_mark_reported(a->journal, each, rows->len, &e))
        vn_warn_error(&e, "journal: marking %u actions reported", rows->len);
}

/* ------------------------------------------------------------------ AMQP hooks */

static VnRpcVerdict on_request(VnRpcMessage *msg, gpointer data)
{
    VnAgent *a = data;

    return vn_dispatcher_submit(a->dispatcher, msg);
}

static gboolean on_round_end(gpointer data)
{
    VnAgent *a = data;

    return vn_dispatcher_end_round(a->dispatcher);
}

static void on_link_state(gboolean up, gpointer data)
{
    (void)data;
    if (!up)
        g_info("amqp: link down; replies and notifications wait for it");
}

static void on_confirmed(const gint64 *ids, guint n, gpointer data)
{
    VnAgent *a = data;
    g_autoptr(GError) e = NULL;

    if (!vn_journal_outbox_remove(a->journal, ids, n, &e))
        vn_warn_error(&e, "journal: removing %u confirmed notifications", n);
}

/* ------------------------------------------------------------------ libvirt hooks */

/* One instance's power sync, or with "" (MOVED_CHECK) the check for guests that live on
 * another host now. */
#define MOVED_CHECK ""

static void sync_worker(gpointer data, gpointer user_data)
{
    char *uuid = data;

    if (*uuid)
        vn_reconcile_sync_one(user_data, uuid);
    else
        vn_reconcile_moved(user_data);
    g_free(uuid);
}

static void on_lifecycle(const char *uuid, int event, int detail, gpointer data)
{
    VnAgent *a = data;

    g_debug("libvirt event %d/%d for %s", event, detail, uuid);
    if (a->migrations)
        vn_migrations_lifecycle(a->migrations, uuid, event, detail);
    /* a guest under a task (its build among them) is the task's to report: the sync
     * would find it so and do nothing, after a hand-over to its thread and a copy of the
     * record; the task's end and the periodic sync see its state */
    if (a->sync_pool && !g_atomic_int_get(&a->stopping) &&
        !vn_instance_store_in_task(a->store, uuid))
        g_thread_pool_push(a->sync_pool, g_strdup(uuid), NULL);
}

static void on_job_completed(const char *uuid, const VnJobStats *stats, gpointer data)
{
    VnAgent *a = data;

    if (a->migrations)
        vn_migrations_job_completed(a->migrations, uuid, stats);
}

/* ------------------------------------------------------------------ readiness, metrics */

static char *ready_body(gpointer data, gboolean *ready)
{
    VnAgent *a = data;
    g_autoptr(json_object) o = json_object_new_object();
    VnRpcStats rs = { 0 };
    VnReporterStats ds = { 0 };
    gboolean virt = a->virt && vn_virt_conn_is_alive(a->virt);

    if (a->rpc)
        vn_rpc_get_stats(a->rpc, &rs);
    if (a->reporter)
        vn_reporter_get_stats(a->reporter, &ds);
    *ready = vn_agent_serving(a);
    json_object_object_add(o, "ready", json_object_new_boolean(*ready));
    json_object_object_add(o, "started", json_object_new_boolean(g_atomic_int_get(&a->ready)));
    json_object_object_add(o, "stopping", json_object_new_boolean(g_atomic_int_get(&a->stopping)));
    json_object_object_add(o, "libvirt", json_object_new_boolean(virt));
    json_object_object_add(o, "amqp", json_object_new_boolean(rs.connected));
    /* the database is not needed to serve requests: shown, not required */
    json_object_object_add(o, "database",
                           a->reporter ? json_object_new_boolean(ds.connected) : NULL);
    return vn_json_to_string(o);
}

/* /healthz: the main loop (signals, the watchdog) turned within the last 5 s */
#define MAIN_LOOP_STALL_S 5

static gboolean main_loop_healthy(gpointer data)
{
    VnAgent *a = data;
    gint64 beat = g_atomic_int_get(&a->loop_beat);

    return g_get_monotonic_time() / G_USEC_PER_SEC - beat <= MAIN_LOOP_STALL_S;
}

static gboolean tick_loop_beat(gpointer data)
{
    VnAgent *a = data;

    g_atomic_int_set(&a->loop_beat, (gint)(g_get_monotonic_time() / G_USEC_PER_SEC));
    return G_SOURCE_CONTINUE;
}

static char *metrics_body(gpointer data)
{
    return vn_agent_metrics(data);
}

/* ------------------------------------------------------------------ periodic tasks */

static void add_uuid(const VnInstanceRecord *r, gpointer data)
{
    g_ptr_array_add(data, g_strdup(r->uuid));
}

static gboolean tick_power_sync(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(GPtrArray) uuids = NULL;

    if (!g_atomic_int_get(&a->ready) || g_atomic_int_get(&a->stopping))
        return G_SOURCE_CONTINUE;
    /* the uuids alone, not a copy of every record: the sync reads each record itself */
    uuids = g_ptr_array_new();
    vn_instance_store_foreach(a->store, add_uuid, uuids);
    g_thread_pool_push(a->sync_pool, g_strdup(MOVED_CHECK), NULL);
    for (guint i = 0; i < uuids->len; i++)
        g_thread_pool_push(a->sync_pool, g_ptr_array_index(uuids, i), NULL); /* taken */
    return G_SOURCE_CONTINUE;
}

static gpointer age_images(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(GHashTable) in_use = vn_reconcile_bases_in_use(cfg->instances_path);
    g_autoptr(GPtrArray) recs = vn_instance_store_list(a->store, FALSE);
    g_autoptr(GError) err = NULL;
    VnImageAgeReport r;

    for (guint i = 0; i < recs->len; i++) {
        VnInstanceRecord *rec = g_ptr_array_index(recs, i);
        if (rec->image.id)
            g_hash_table_add(in_use, vn_image_cache_path(a->images, rec->image.id));
    }
    if (!vn_image_cache_age(a->images, in_use, cfg->remove_unused_original_minimum_age_seconds, &r,
                            &err))
        g_warning("image cache: %s", err->message);
    else if (r.removed)
        g_message("image cache: removed %u unused images (%" G_GUINT64_FORMAT " bytes), kept %u "
                  "in use and %u recently used",
                  r.removed, r.bytes_freed, r.kept_in_use, r.kept_young);
    vn_agent_capacity_changed(a);
    g_atomic_int_set(&a->aging, 0);
    return NULL;
}

/* Runs @func(@a) in a thread of its own unless the agent stops or the one before (flagged
 * by @busy) still runs; @func clears @busy as its last step.  vn_agent_free waits for
 * every @busy flag. */
static void run_detached(VnAgent *a, gint *busy, const char *name, GThreadFunc func)
{
    if (!g_atomic_int_get(&a->stopping) && g_atomic_int_compare_and_exchange(busy, 0, 1))
        g_thread_unref(g_thread_new(name, func, a));
}

static gboolean tick_image_cache(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);

    if (g_atomic_int_get(&a->ready) && cfg->remove_unused_base_images)
        run_detached(a, &a->aging, "image-aging", age_images);
    return G_SOURCE_CONTINUE;
}

static gpointer housekeeping(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    gint64 now = g_get_real_time() / G_USEC_PER_SEC;
    g_autoptr(GError) err = NULL;

    if (vn_journal_prune(a->journal, now - cfg->amqp_duplicate_window, &err) < 0) {
        g_warning("journal: pruning: %s", err->message);
        g_clear_error(&err);
    }
    vn_instance_store_purge_deleted(a->store, now - 3600);
    if (a->virt && !vn_tracker_refresh(a->tracker, a->virt, &err))
        g_debug("host facts: %s", err->message);
    vn_vols_reconcile(a, FALSE);
    g_atomic_int_set(&a->housekeeping, 0);
    return NULL;
}

/* The journal, the records and libvirt can each block: the work runs in a thread of its
 * own, never on the main loop, which must keep answering signals and the watchdog. */
static gboolean tick_housekeeping(gpointer data)
{
    VnAgent *a = data;

    run_detached(a, &a->housekeeping, "housekeeping", housekeeping);
    return G_SOURCE_CONTINUE;
}

static gpointer reconnect_libvirt(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(GError) err = NULL;
    virConnectPtr conn = vn_virt_conn_get(a->virt, &err); /* failures are logged there */

    if (conn)
        virConnectClose(conn);
    g_atomic_int_set(&a->reconnecting, 0);
    return NULL;
}

/* An agent whose libvirtd went away reconnects on its own, not only when the next request
 * needs it: readiness and the capacity report follow libvirtd back within seconds. */
static gboolean tick_libvirt(gpointer data)
{
    VnAgent *a = data;

    if (!g_atomic_int_get(&a->ready) || g_atomic_int_get(&a->stopping) || !a->virt ||
        vn_virt_conn_is_alive(a->virt))
        return G_SOURCE_CONTINUE;
    run_detached(a, &a->reconnecting, "libvirt-reconnect", reconnect_libvirt);
    return G_SOURCE_CONTINUE;
}

/* Events were lost while libvirtd was away: sync every guest's power state now. */
static void on_virt_connection(gboolean up, gpointer data)
{
    VnAgent *a = data;

    if (up)
        tick_power_sync(a);
}

/* After a burst of operations, the pages the allocator holds free go back to the system
 * (malloc_trim also returns free pages inside the heap, which glibc otherwise keeps): a
 * hundred builds leave megabytes of freed request, record and XML buffers between the
 * guests' live data.  Once per burst, when nothing runs; a few milliseconds. */
static gboolean tick_trim(gpointer data)
{
    VnAgent *a = data;

    if (g_atomic_int_get(&a->counters.ops_running) == 0 &&
        g_atomic_int_compare_and_exchange(&a->trim_due, 1, 0))
        malloc_trim(0);
    return G_SOURCE_CONTINUE;
}

static gboolean tick_watchdog(gpointer data)
{
    (void)data;
    sd_notify(0, "WATCHDOG=1");
    return G_SOURCE_CONTINUE;
}

static gpointer volume_health(gpointer data)
{
    VnAgent *a = data;

    vn_vol_health_pass(a);
    g_atomic_int_set(&a->vol_probing, 0);
    return NULL;
}

/* A probe may take its whole time limit: the pass runs in a thread of its own. */
static gboolean tick_volume_health(gpointer data)
{
    VnAgent *a = data;

    run_detached(a, &a->vol_probing, "volume-health", volume_health);
    return G_SOURCE_CONTINUE;
}

/* The command path's proof: a ping through this agent's own compute.<host> queue, answered
 * by its own dispatcher over the reply queue, as a controller's call travels.  Each that
 * comes back within its time goes into the next heartbeat (services.last_probe_at), so a
 * scheduler stops placing on a host whose consumer died though the process lives. */
#define PROBE_TIMEOUT_S 5

static gpointer probe_command_path(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(json_object) args = json_object_new_object();
    g_autoptr(json_object) res = NULL;
    g_autoptr(GError) err = NULL;

    json_object_object_add(args, "arg", json_object_new_string("command-path probe"));
    if (vn_rpc_call(a->rpc, cfg->host, "ping", args, "1.0", NULL, PROBE_TIMEOUT_S, 0, &res, &err)) {
        g_atomic_int_set(&a->probe_ok_s, (gint)(g_get_monotonic_time() / G_USEC_PER_SEC));
        if (a->reporter)
            vn_reporter_probe_returned(a->reporter);
    } else {
        g_debug("command-path probe: %s", err->message);
    }
    g_atomic_int_set(&a->probing, 0);
    return NULL;
}

static gboolean tick_probe(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    gint64 now = g_get_monotonic_time();

    /* every heartbeat_interval (a reload takes effect at the next tick) */
    if (!a->rpc || !g_atomic_int_get(&a->ready) ||
        now - a->probe_sent_us < (gint64)cfg->heartbeat_interval * G_USEC_PER_SEC)
        return G_SOURCE_CONTINUE;
    a->probe_sent_us = now;
    run_detached(a, &a->probing, "probe", probe_command_path);
    return G_SOURCE_CONTINUE;
}

static void add_timer(VnAgent *a, guint seconds, GSourceFunc fn)
{
    if (seconds > 0)
        g_ptr_array_add(a->timers, GUINT_TO_POINTER(g_timeout_add_seconds(seconds, fn, a)));
}

static void start_timers(VnAgent *a)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    guint64 wd = 0;

    for (guint i = 0; i < a->timers->len; i++)
        g_source_remove(GPOINTER_TO_UINT(g_ptr_array_index(a->timers, i)));
    g_ptr_array_set_size(a->timers, 0);
    add_timer(a, (guint)cfg->sync_power_state_interval, tick_power_sync);
    add_timer(a, (guint)cfg->image_cache_manager_interval, tick_image_cache);
    add_timer(a, 300, tick_housekeeping);
    add_timer(a, (guint)cfg->volume_probe_interval, tick_volume_health);
    add_timer(a, 2, tick_libvirt);
    add_timer(a, 5, tick_trim);
    add_timer(a, 1, tick_probe);
    add_timer(a, 1, tick_loop_beat);
    tick_loop_beat(a);
    if (sd_watchdog_enabled(0, &wd) > 0 && wd > 0)
        g_ptr_array_add(a->timers, GUINT_TO_POINTER(g_timeout_add((guint)MAX(wd / 2000, 100),
                                                                  tick_watchdog, a)));
}

/* ------------------------------------------------------------------ start-up */

VnAgent *vn_agent_new(VnConfig *cfg, const char *config_path)
{
    VnAgent *a = g_new0(VnAgent, 1);

    g_mutex_init(&a->cfg_lock);
    g_mutex_init(&a->durations_lock);
    g_mutex_init(&a->host_lock);
    a->cfg = vn_config_ref(cfg);
    a->config_path = g_strdup(config_path);
    a->lock_fd = -1;
    a->reply = rpc_reply_sink;
    a->reply_data = a;
    a->timers = g_ptr_array_new();
    a->started_at = g_get_real_time() / G_USEC_PER_SEC;
    return a;
}

static gboolean take_lock(VnAgent *a, const char *state_path, GError **error)
{
    g_autofree char *path = g_build_filename(state_path, "virtnoded.lock", NULL);

    a->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (a->lock_fd < 0 || flock(a->lock_fd, LOCK_EX | LOCK_NB) < 0) {
        g_set_error(error, G_IO_ERROR, G_IO_ERROR_BUSY,
                    "%s: another virtnoded uses this state_path (%s)", path, g_strerror(errno));
        return FALSE;
    }
    return TRUE;
}

static VnImageCacheConfig cache_config(const VnConfig *cfg)
{
    VnImageCacheConfig c = { (guint64)cfg->image_max_size_gb << 30, cfg->image_download_timeout,
                             cfg->image_download_low_speed_timeout, cfg->image_ca_file,
                             cfg->remove_unused_original_minimum_age_seconds };
    return c;
}

/* Makes @path (mode @mode, whatever the umask) if missing and gives it @mode. */
static gboolean own_dir(const char *path, mode_t mode, const char *key, GError **error)
{
    if (g_mkdir_with_parents(path, (int)mode) == 0 && chmod(path, mode) == 0)
        return TRUE;
    g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "%s: preparing '%s': %s", key,
                path, g_strerror(errno));
    return FALSE;
}

/* @dir and every folder above it searchable by others, or the guests' QEMU identities
 * cannot reach what is below: refused with the folder named and @fix to repair it. */
static gboolean searchable_by_guests(const char *dir, const char *what, const char *fix,
                                     GError **error)
{
    g_autofree char *up = g_strdup(dir);

    for (;;) {
        struct stat st;
        char *parent;
        if (stat(up, &st) < 0) {
            g_set_error(error, G_IO_ERROR, g_io_error_from_errno(errno), "%s: '%s': %s", what, up,
                        g_strerror(errno));
            return FALSE;
        }
        if (!(st.st_mode & S_IXOTH)) {
            g_set_error(error, G_IO_ERROR, G_IO_ERROR_PERMISSION_DENIED,
                        "%s: '%s' (mode %04o) cannot be entered by the guests' QEMU identities: "
                        "%s",
                        what, up, (unsigned)(st.st_mode & 07777), fix);
            return FALSE;
        }
        if (strcmp(up, "/") == 0)
            return TRUE;
        parent = g_path_get_dirname(up);
        g_free(up);
        up = parent;
    }
}

/* The agent's folders, with the modes guests under their own identities need:
 * state_path and instances_path 0711 (QEMU may pass through, nobody may list them; what
 * is inside is 0600 or, per instance, 0750 root:guest), and every folder above
 * instances_path searchable by others, or guests cannot open their disks: refused here
 * with the folder named rather than at every build. */
static gboolean prepare_paths(const VnConfig *cfg, GError **error)
{
    g_autofree char *up = NULL;

    if (!own_dir(cfg->state_path, 0711, "state_path", error) ||
        !own_dir(cfg->instances_path, 0711, "instances_path", error))
        return FALSE;
    up = g_path_get_dirname(cfg->instances_path);
    return searchable_by_guests(up, "instances_path",
                                "allow search (chmod o+x) or choose another instances_path", error);
}

/* libvirtd's own per-guest folders (the QEMU driver's master keys, monitor sockets) live
 * in /var/lib/libvirt/qemu, which Debian makes 0750 libvirt-qemu: no guest with an
 * identity of its own could start.  Checked when libvirtd is this host's system daemon. */
static gboolean libvirt_paths_ok(VnAgent *a, const VnConfig *cfg, GError **error)
{
    const char *dir = "/var/lib/libvirt/qemu";

    if (!a->dac_available || strcmp(cfg->libvirt_uri, "qemu:///system") != 0 ||
        !g_file_test(dir, G_FILE_TEST_IS_DIR))
        return TRUE;
    return searchable_by_guests(dir, "libvirt",
                                "make it 0751 (dpkg-statoverride --update --add libvirt-qemu "
                                "libvirt-qemu 0751 /var/lib/libvirt/qemu, as the virtnode "
                                "package does)",
                                error);
}

/* This host's iSCSI initiator name: configured, else open-iscsi's, else one of ours. */
static char *initiator_name(const VnConfig *cfg)
{
    g_autofree char *text = NULL;

    if (*cfg->iscsi_initiator_name)
        return g_strdup(cfg->iscsi_initiator_name);
    if (g_file_get_contents("/etc/iscsi/initiatorname.iscsi", &text, NULL, NULL)) {
        g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
        for (char **l = lines; *l; l++) {
            if (g_str_has_prefix(*l, "InitiatorName="))
                return g_strdup(g_strstrip(*l + strlen("InitiatorName=")));
        }
    }
    return g_strdup_printf("iqn.2010-10.org.virtnode:%s", cfg->host);
}

static gboolean open_volumes(VnAgent *a, const VnConfig *cfg, GError **error)
{
    g_autofree char *state = g_build_filename(cfg->state_path, "volumes", NULL);
    g_autofree char *initiator = initiator_name(cfg);
    VnVolumesConfig vc = {
        .state_dir = state,
        .nfs_mount_point_base = cfg->nfs_mount_point_base,
        .nfs_mount_options = cfg->nfs_mount_options,
        .nfs_driver = cfg->nfs_driver == 1 ? VN_VOL_DRIVER_QEMU : VN_VOL_DRIVER_KERNEL,
        .iscsi_driver = cfg->iscsi_driver == 1 ? VN_VOL_DRIVER_QEMU : VN_VOL_DRIVER_KERNEL,
        .use_multipath = cfg->use_multipath,
        .initiator_name = initiator,
        .sys_root = "/",
        .command_timeout = cfg->volume_command_timeout,
        .attach_timeout = cfg->volume_attach_timeout,
        .attempts = cfg->volume_attempts,
    };

    a->volumes = vn_volumes_new(&vc, error);
    if (!a->volumes) {
        g_prefix_error(error, "[storage] ");
        return FALSE;
    }
    return TRUE;
}

gboolean vn_agent_open_local(VnAgent *a, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autofree char *journal = g_build_filename(cfg->state_path, "journal.db", NULL);
    g_autofree char *cache_dir =
        g_build_filename(cfg->instances_path, cfg->image_cache_subdirectory_name, NULL);
    VnVirtHandlers vh = { on_lifecycle, on_job_completed, on_virt_connection, a };
    VnImageCacheConfig icfg = cache_config(cfg);

    if (!prepare_paths(cfg, error))
        return FALSE;
    a->journal = vn_journal_open(journal, error);
    if (!a->journal)
        return FALSE;
    a->store = vn_instance_store_new(a->journal, cfg->host, error);
    if (!a->store)
        return FALSE;
    vn_instance_store_set_listener(a->store, on_instance_changed, a);
    a->images = vn_image_cache_new(cache_dir, &icfg, error);
    if (!a->images)
        return FALSE;
    a->net = vn_net_host_new(cfg->net_physical_interface_mappings, cfg->net_default_mtu, error);
    if (!a->net) {
        g_prefix_error(error, "[network] ");
        return FALSE;
    }
    if (!open_volumes(a, cfg, error))
        return FALSE;
    a->vol_health = vn_vol_health_new();
    a->tracker = vn_tracker_new(cfg->host, cfg->instances_path, a->store);
    vn_tracker_set_config(a->tracker, cfg);
    vn_tracker_load(a->tracker);
    a->virt =
        vn_virt_conn_new(cfg->libvirt_uri, cfg->keepalive_interval, cfg->keepalive_count, &vh);
    a->dispatcher = vn_dispatcher_new(a);
    a->migrations = vn_migrations_new(a);
    vn_migrations_load(a->migrations);
    a->sync_pool = g_thread_pool_new(sync_worker, a, 1, FALSE, NULL);
    return TRUE;
}

/* The host's security models decide how guests are confined. */
static gboolean detect_security(VnAgent *a, GError **error)
{
    g_auto(GStrv) models = vn_host_security_models(a->virt, error);

    if (!models) {
        g_prefix_error(error, "reading the host's security models: ");
        return FALSE;
    }
    g_free(a->mac_model);
    a->mac_model = NULL;
    if (g_strv_contains((const char *const *)models, "selinux"))
        a->mac_model = g_strdup("selinux");
    else if (g_strv_contains((const char *const *)models, "apparmor"))
        a->mac_model = g_strdup("apparmor");
    a->dac_available = g_strv_contains((const char *const *)models, "dac");
    g_message("libvirt security: %s%s%s", a->mac_model ? a->mac_model : "no MAC model",
              a->dac_available ? ", per-guest DAC identities" : "",
              !a->mac_model && !a->dac_available ? " (guests cannot be confined)" : "");
    return TRUE;
}

/* Waits (up to @timeout_s) for libvirt, then reads the host and reconciles.  libvirtd
 * going away meanwhile (restarted by the deployment that also starts the agent) is waited
 * out the same way: each attempt starts over with a new connection. */
static gboolean connect_libvirt(VnAgent *a, int timeout_s, GError **error)
{
    gint64 end = g_get_monotonic_time() + (gint64)timeout_s * G_TIME_SPAN_SECOND;
    gboolean told = FALSE;
    g_autoptr(GError) err = NULL;

    for (;;) {
        g_autoptr(virConnect) conn = vn_virt_conn_get(a->virt, &err);
        if (conn && detect_security(a, &err) && vn_tracker_refresh(a->tracker, a->virt, &err))
            return TRUE;
        if (g_get_monotonic_time() >= end) {
            g_propagate_error(error, g_steal_pointer(&err));
            return FALSE;
        }
        if (!told)
            g_message("waiting up to %d s for libvirt: %s", timeout_s, err->message);
        told = TRUE;
        g_clear_error(&err);
        g_usleep(G_USEC_PER_SEC);
    }
}

static gboolean start_reporter(VnAgent *a, const VnConfig *cfg, GError **error)
{
    g_autofree char *password = NULL;
    VnReporterHooks hooks = { hook_capacity, hook_all_instances, hook_pending_actions,
                              hook_actions_written, a };

    if (!*cfg->db_connection) {
        g_warning("[database] connection is empty: capacity and state are not reported");
        return TRUE;
    }
    if (*cfg->db_password_file) {
        g_autofree char *text = NULL;
        if (!g_file_get_contents(cfg->db_password_file, &text, NULL, error)) {
            g_prefix_error(error, "[database] password_file: ");
            return FALSE;
        }
        char *nl = strchr(text, '\n');
        if (nl)
            *nl = '\0';
        password = g_steal_pointer(&text);
    }
    VnReporterConfig rc = { cfg->db_connection,
                            password,
                            cfg->db_connect_timeout,
                            cfg->db_retry_interval,
                            cfg->db_retry_interval_max,
                            cfg->host,
                            BINARY,
                            cfg->amqp_topic,
                            VIRTNODE_VERSION,
                            cfg->report_interval,
                            cfg->heartbeat_interval,
                            200,
                            FALSE };
    a->reporter = vn_reporter_new(&rc, &hooks, error);
    if (password)
        memset(password, 0, strlen(password));
    if (!a->reporter)
        return FALSE;
    vn_reporter_start(a->reporter);
    return TRUE;
}

static gboolean start_rpc(VnAgent *a, const VnConfig *cfg, GError **error)
{
    g_autofree char *name = g_strdup_printf("virtnoded %s", cfg->host);
    VnRpcConfig rc = { 0 };
    VnRpcHandlers h = { .request = on_request,
                        .state = on_link_state,
                        .confirmed = on_confirmed,
                        .round_end = on_round_end,
                        .user_data = a };
    g_autoptr(GPtrArray) pending = NULL;

    rc.urls = cfg->amqp_transport_url;
    rc.exchange = cfg->amqp_control_exchange;
    rc.topic = cfg->amqp_topic;
    rc.server = cfg->host;
    rc.connection_name = name;
    rc.heartbeat = cfg->amqp_heartbeat_timeout;
    rc.prefetch = cfg->amqp_prefetch_count;
    rc.durable = cfg->amqp_durable_queues;
    rc.quorum = cfg->amqp_quorum_queues;
    rc.transient_ttl = cfg->amqp_transient_queues_ttl;
    rc.dead_letter_exchange = cfg->amqp_dead_letter_exchange;
    rc.max_message_bytes = (gsize)cfg->amqp_max_message_bytes;
    rc.connect_timeout = cfg->amqp_connect_timeout;
    rc.reconnect_min = cfg->amqp_reconnect_interval;
    rc.reconnect_max = cfg->amqp_reconnect_interval_max;
    rc.reply_timeout = cfg->amqp_reply_timeout;
    rc.notification_topic = cfg->amqp_notifications ? cfg->amqp_notification_topic : NULL;
    rc.outbox_limit = cfg->amqp_outbox_limit;
    rc.ssl_ca_file = cfg->amqp_ssl_ca_file;
    rc.ssl_cert_file = cfg->amqp_ssl_cert_file;
    rc.ssl_key_file = cfg->amqp_ssl_key_file;
    rc.ssl_verify_hostname = cfg->amqp_ssl_verify_hostname;
    a->rpc = vn_rpc_new(&rc, &h, error);
    if (!a->rpc)
        return FALSE;
    /* notifications a crash kept from the broker go first */
    pending = vn_journal_outbox_pending(a->journal, NULL);
    for (guint i = 0; pending && i < pending->len; i++) {
        VnJournalNotification *n = g_ptr_array_index(pending, i);
        g_autoptr(json_object) p = json_tokener_parse(n->payload);
        if (p)
            vn_rpc_notify(a->rpc, n->id, n->event_type, n->priority, p);
        else {
            g_autoptr(GError) e = NULL;
            if (!vn_journal_outbox_remove(a->journal, &n->id, 1, &e))
                vn_warn_error(&e, "journal: removing notification %" G_GINT64_FORMAT, n->id);
        }
    }
    vn_rpc_start(a->rpc);
    return TRUE;
}

static gboolean start_http(VnAgent *a, const VnConfig *cfg, GError **error)
{
    VnStatusHandlers h = { main_loop_healthy, ready_body, metrics_body, a };

    if (!*cfg->api_listen)
        return TRUE;
    a->http = vn_status_server_start(cfg->api_listen, &h, error);
    return a->http != NULL;
}

gboolean vn_agent_start(VnAgent *a, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(GPtrArray) unfinished = NULL;

    if (!own_dir(cfg->state_path, 0711, "state_path", error))
        return FALSE;
    if (!take_lock(a, cfg->state_path, error) || !vn_agent_open_local(a, error))
        return FALSE;
    if (!connect_libvirt(a, 60, error)) {
        g_prefix_error(error, "libvirt: ");
        return FALSE;
    }
    if (!libvirt_paths_ok(a, cfg, error))
        return FALSE;
    vn_image_cache_remove_partials(a->images);
    unfinished = vn_journal_unfinished(a->journal, error);
    if (!unfinished || !vn_reconcile_startup(a, unfinished, error))
        return FALSE;
    vn_ports_reconcile(a);
    vn_vols_reconcile(a, TRUE);
    vn_host_state_load(a);
    if (!start_reporter(a, cfg, error) || !start_rpc(a, cfg, error) || !start_http(a, cfg, error))
        return FALSE;
    vn_host_state_publish(a);
    /* a guest evacuated while this host was down is removed here before anything acts on it */
    g_thread_pool_push(a->sync_pool, g_strdup(MOVED_CHECK), NULL);
    vn_dispatcher_replay(a->dispatcher, unfinished);
    start_timers(a);
    /* ready means serving: give the broker link its connect timeout to come up first (an
     * unreachable broker does not hold the start; the link keeps reconnecting) */
    if (a->rpc && !vn_rpc_wait_connected(a->rpc, cfg->amqp_connect_timeout))
        g_warning("amqp: not connected yet; ready anyway, requests arrive once it is");
    g_atomic_int_set(&a->ready, 1);
    vn_agent_capacity_changed(a);
    vn_agent_notify_service(a, "service.update");
    sd_notify(0, "READY=1\nSTATUS=serving");
    g_message("virtnoded %s ready: host '%s', %s, libvirt %s (%s)", VIRTNODE_VERSION, cfg->host,
              cfg->amqp_topic, cfg->libvirt_uri, vn_virt_type_name(cfg->virt_type));
    return TRUE;
}

/* ------------------------------------------------------------------ stop, reload */

static gboolean quit_loop(gpointer data)
{
    VnAgent *a = data;

    if (a->loop)
        g_main_loop_quit(a->loop);
    return G_SOURCE_REMOVE;
}

static gpointer stop_thread(gpointer data)
{
    VnAgent *a = data;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);

    if (a->rpc)
        vn_rpc_stop_consuming(a->rpc);
    vn_dispatcher_stop_accepting(a->dispatcher);
    if (!vn_dispatcher_drain(a->dispatcher, cfg->graceful_shutdown_timeout))
        g_warning("stopping with operations unfinished: they resume at the next start");
    vn_agent_notify_service(a, "service.update");
    if (a->rpc && !vn_rpc_flush(a->rpc, 5))
        g_warning("amqp: some replies or notifications could not be sent before exit");
    if (a->reporter && !vn_reporter_flush(a->reporter, 5))
        g_warning("database: some updates could not be written before exit");
    g_idle_add(quit_loop, a);
    return NULL;
}

void vn_agent_request_stop(VnAgent *a)
{
    if (!g_atomic_int_compare_and_exchange(&a->stopping, 0, 1))
        return;
    sd_notify(0, "STOPPING=1");
    g_message("stopping: no new work; waiting for running operations");
    g_thread_unref(g_thread_new("stop", stop_thread, a));
}

void vn_agent_reload(VnAgent *a)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(VnConfig) next = NULL;
    g_autoptr(VnConfig) prev = vn_agent_config(a);
    g_auto(GStrv) restart = NULL;

    if (!a->config_path) {
        g_message("reload: no configuration file to read");
        return;
    }
    sd_notify(0, "RELOADING=1");
    next = vn_config_load(a->config_path, &err);
    if (!next) {
        g_warning("reload refused, the running configuration stays:\n%s", err->message);
        sd_notify(0, "READY=1");
        return;
    }
    /* only what is marked reloadable changes now; the rest keeps its running value */
    restart = vn_config_reload_merge(next, prev);
    for (char **r = restart; *r; r++)
        g_warning("reload: %s changed; the running value stays until the next restart", *r);
    g_mutex_lock(&a->cfg_lock);
    vn_config_unref(a->cfg);
    a->cfg = vn_config_ref(next);
    g_mutex_unlock(&a->cfg_lock);
    vn_log_configure(prev->log_target, next->log_format, next->log_level);
    vn_tracker_set_config(a->tracker, next);
    vn_dispatcher_configure(a->dispatcher, next);
    if (a->reporter)
        vn_reporter_set_intervals(a->reporter, next->report_interval, next->heartbeat_interval);
    VnImageCacheConfig icfg = cache_config(next);
    vn_image_cache_set_config(a->images, &icfg);
    start_timers(a);
    vn_agent_capacity_changed(a);
    sd_notify(0, "READY=1");
    g_message("configuration reloaded from %s", a->config_path);
}

static gboolean on_sigterm(gpointer data)
{
    vn_agent_request_stop(data);
    return G_SOURCE_CONTINUE;
}

static gboolean on_sighup(gpointer data)
{
    vn_agent_reload(data);
    return G_SOURCE_CONTINUE;
}

int vn_agent_run(VnAgent *a)
{
    guint s1, s2, s3;

    a->loop = g_main_loop_new(NULL, FALSE);
    s1 = g_unix_signal_add(SIGTERM, on_sigterm, a);
    s2 = g_unix_signal_add(SIGINT, on_sigterm, a);
    s3 = g_unix_signal_add(SIGHUP, on_sighup, a);
    g_main_loop_run(a->loop);
    g_source_remove(s1);
    g_source_remove(s2);
    g_source_remove(s3);
    g_message("stopped");
    return a->exit_code;
}

/* The one stop order: stop accepting -> cancel and wait for every worker -> silence
 * libvirt's events -> wait for the helper threads -> stop the links -> free.  Each step
 * only frees what nothing still running can reach. */
void vn_agent_free(VnAgent *a)
{
    if (!a)
        return;
    g_atomic_int_set(&a->stopping, 1);
    for (guint i = 0; i < a->timers->len; i++)
        g_source_remove(GPOINTER_TO_UINT(g_ptr_array_index(a->timers, i)));
    g_ptr_array_free(a->timers, TRUE);
    vn_status_server_stop(a->http);
    /* 1. nothing new comes in */
    if (a->rpc)
        vn_rpc_stop_consuming(a->rpc);
    if (a->dispatcher)
        vn_dispatcher_stop_accepting(a->dispatcher);
    /* 2. every worker (operation flows and the migration monitors inside them) has
     *    returned; queued operations wait in the journal for the next start */
    if (a->dispatcher)
        vn_dispatcher_shutdown(a->dispatcher);
    /* 3. libvirt's event thread no longer calls in */
    if (a->virt)
        vn_virt_conn_silence(a->virt);
    if (a->sync_pool)
        g_thread_pool_free(a->sync_pool, TRUE, TRUE);
    while (g_atomic_int_get(&a->reconnecting) || g_atomic_int_get(&a->aging) ||
           g_atomic_int_get(&a->housekeeping) || g_atomic_int_get(&a->vol_probing) ||
           g_atomic_int_get(&a->probing))
        g_usleep(10 * 1000);
    /* 4. the links: the reporter's hooks read the tracker and the store, freed after */
    vn_rpc_free(a->rpc);
    a->rpc = NULL;
    vn_reporter_free(a->reporter);
    a->reporter = NULL;
    /* 5. the rest */
    vn_dispatcher_free(a->dispatcher);
    vn_migrations_free(a->migrations);
    vn_virt_conn_free(a->virt);
    vn_net_host_free(a->net);
    vn_volumes_free(a->volumes);
    vn_vol_health_free(a->vol_health);
    vn_tracker_free(a->tracker);
    vn_image_cache_free(a->images);
    vn_instance_store_free(a->store);
    vn_journal_free(a->journal);
    if (a->lock_fd >= 0)
        close(a->lock_fd);
    if (a->loop)
        g_main_loop_unref(a->loop);
    vn_config_unref(a->cfg);
    g_mutex_clear(&a->cfg_lock);
    g_mutex_clear(&a->durations_lock);
    g_mutex_clear(&a->host_lock);
    g_free(a->host_disabled_reason);
    g_free(a->config_path);
    g_free(a->mac_model);
    g_free(a);
}
