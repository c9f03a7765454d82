/* agent/ops/migration.c - live migration between agents (see migration.h). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>
#include <libvirt/libvirt.h>

#include "agent/base/log.h"
#include "agent/ops/guest.h"
#include "agent/ops/migration.h"
#include "agent/ops/migration_policy.h"
#include "agent/ops/ops.h"
#include "agent/ops/ports.h"
#include "agent/ops/volumes.h"
#include "agent/virt/secret.h"
#include "agent/virt/domain.h"
#include "agent/virt/domain_xml.h"
#include "agent/virt/migrate.h"
#include "agent/virt/virt.h"
#include "api/error.h"
#include "api/json.h"
#include "storage/disk.h"
#include "storage/stor_error.h"

#define API_VERSION         "1.1"
#define MONITOR_INTERVAL_US (500 * 1000)
#define LIVENESS_EVERY_S    3
#define LIVENESS_FAILURES   2

typedef struct {
    char *id;
    char *uuid;
    char *source;
    char *dest;
    char *status;
    gboolean block;
    VnJobStats stats;
    VnJobStats final;
    gboolean have_final;
    gboolean postcopy;
    int downtime_ms;
    gboolean abort_req;
    gboolean force_req;
    char *error;
    char *action;
    gint64 started_at;
    gint64 finished_at;
    double elapsed_s;
} Migration;

struct _VnMigrations {
    VnAgent *a;
    GMutex lock;
    GCond cond;
    GHashTable *by_uuid; /* uuid -> Migration* (running, or the last one) */
};

static void migration_free(Migration *m)
{
    g_free(m->id);
    g_free(m->uuid);
    g_free(m->source);
    g_free(m->dest);
    g_free(m->status);
    g_free(m->error);
    g_free(m->action);
    g_free(m);
}

VnMigrations *vn_migrations_new(VnAgent *a)
{
    VnMigrations *m = g_new0(VnMigrations, 1);

    m->a = a;
    g_mutex_init(&m->lock);
    g_cond_init(&m->cond);
    m->by_uuid =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)migration_free);
    return m;
}

void vn_migrations_free(VnMigrations *m)
{
    if (!m)
        return;
    g_hash_table_destroy(m->by_uuid);
    g_mutex_clear(&m->lock);
    g_cond_clear(&m->cond);
    g_free(m);
}

static gboolean running_status(const char *s)
{
    return g_strcmp0(s, "queued") == 0 || g_strcmp0(s, "preparing") == 0 ||
           g_strcmp0(s, "running") == 0 || g_strcmp0(s, "post-copy") == 0;
}

void vn_migrations_lifecycle(VnMigrations *m, const char *uuid, int event, int detail)
{
    g_mutex_lock(&m->lock);
    Migration *mig = g_hash_table_lookup(m->by_uuid, uuid);
    if (mig && running_status(mig->status) && event == VIR_DOMAIN_EVENT_SUSPENDED &&
        detail == VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY)
        mig->postcopy = TRUE;
    g_mutex_unlock(&m->lock);
}

void vn_migrations_job_completed(VnMigrations *m, const char *uuid, const VnJobStats *stats)
{
    g_mutex_lock(&m->lock);
    Migration *mig = g_hash_table_lookup(m->by_uuid, uuid);
    if (mig) {
        mig->final = *stats;
        mig->have_final = TRUE;
        g_cond_broadcast(&m->cond);
    }
    g_mutex_unlock(&m->lock);
}

static gboolean request(VnMigrations *m, const char *uuid, gboolean abort, GError **error)
{
    gboolean ok = FALSE;

    g_mutex_lock(&m->lock);
    Migration *mig = g_hash_table_lookup(m->by_uuid, uuid);
    if (mig && running_status(mig->status)) {
        if (abort)
            mig->abort_req = TRUE;
        else
            mig->force_req = TRUE;
        ok = TRUE;
    }
    g_mutex_unlock(&m->lock);
    if (!ok)
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID_STATE,
                    "instance %s has no live migration in progress on this host", uuid);
    return ok;
}

gboolean vn_migrations_request_abort(VnMigrations *m, const char *uuid, GError **error)
{
    return request(m, uuid, TRUE, error);
}

gboolean vn_migrations_request_force(VnMigrations *m, const char *uuid, GError **error)
{
    return request(m, uuid, FALSE, error);
}

static json_object *describe_locked(const Migration *mig)
{
    json_object *o = json_object_new_object();
    const VnJobStats *s = mig->have_final ? &mig->final : &mig->stats;

    json_object_object_add(o, "id", json_object_new_string(mig->id));
    json_object_object_add(o, "instance_uuid", json_object_new_string(mig->uuid));
    json_object_object_add(o, "source_host", json_object_new_string(mig->source));
    json_object_object_add(o, "dest_host", json_object_new_string(mig->dest));
    json_object_object_add(o, "status", json_object_new_string(mig->status));
    json_object_object_add(o, "block_migration", json_object_new_boolean(mig->block));
    json_object_object_add(o, "memory_total", json_object_new_int64(s->memory_total));
    json_object_object_add(o, "memory_processed", json_object_new_int64(s->memory_processed));
    json_object_object_add(o, "memory_remaining", json_object_new_int64(s->memory_remaining));
    json_object_object_add(o, "disk_total", json_object_new_int64(s->disk_total));
    json_object_object_add(o, "disk_processed", json_object_new_int64(s->disk_processed));
    json_object_object_add(o, "disk_remaining", json_object_new_int64(s->disk_remaining));
    json_object_object_add(o, "memory_bps", json_object_new_int64(s->memory_bps));
    json_object_object_add(o, "iterations", json_object_new_int64(s->memory_iteration));
    json_object_object_add(o, "downtime_step_ms", json_object_new_int(mig->downtime_ms));
    json_object_object_add(o, "downtime_ms",
                           mig->have_final && mig->final.downtime_ms >= 0
                               ? json_object_new_int64(mig->final.downtime_ms)
                               : NULL);
    json_object_object_add(o, "elapsed_s", json_object_new_double(mig->elapsed_s));
    json_object_object_add(o, "action", mig->action ? json_object_new_string(mig->action) : NULL);
    json_object_object_add(o, "error", mig->error ? json_object_new_string(mig->error) : NULL);
    return o;
}

/* What survives a restart of a migration: who, where, how it ended (not the live
 * statistics, which libvirt keeps while the job runs). */
static json_object *persisted_locked(const Migration *mig)
{
    json_object *o = json_object_new_object();

    json_object_object_add(o, "id", json_object_new_string(mig->id));
    json_object_object_add(o, "instance_uuid", json_object_new_string(mig->uuid));
    json_object_object_add(o, "source_host", json_object_new_string(mig->source));
    json_object_object_add(o, "dest_host", json_object_new_string(mig->dest));
    json_object_object_add(o, "status", json_object_new_string(mig->status));
    json_object_object_add(o, "block_migration", json_object_new_boolean(mig->block));
    json_object_object_add(o, "error", mig->error ? json_object_new_string(mig->error) : NULL);
    json_object_object_add(o, "started_at", json_object_new_int64(mig->started_at));
    json_object_object_add(o, "finished_at", json_object_new_int64(mig->finished_at));
    json_object_object_add(o, "downtime_ms",
                           json_object_new_int64(mig->have_final ? mig->final.downtime_ms : -1));
    return o;
}

/* Journals @mig; called with the lock held (the journal is self-locking and never calls
 * back).  A failure is logged: the migration goes on, only its restart view is older. */
static void save_locked(VnMigrations *m, const Migration *mig)
{
    g_autoptr(json_object) o = persisted_locked(mig);
    g_autoptr(GError) err = NULL;

    if (!vn_journal_save_migration(m->a->journal, mig->uuid, json_object_to_json_string(o), &err))
        g_warning("migration %s of %s: %s", mig->id, mig->uuid, err->message);
}

static char *jstr(json_object *o, const char *key)
{
    json_object *v = vn_json_member(o, key);

    return v && json_object_is_type(v, json_type_string) ? g_strdup(json_object_get_string(v))
                                                         : NULL;
}

void vn_migrations_load(VnMigrations *m)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(GPtrArray) rows = vn_journal_load_migrations(m->a->journal, &err);

    if (!rows) {
        g_warning("loading migrations: %s", err->message);
        return;
    }
    g_mutex_lock(&m->lock);
    for (guint i = 0; i < rows->len; i++) {
        g_autoptr(json_object) o = json_tokener_parse(g_ptr_array_index(rows, i));
        Migration *mig;
        if (!o)
            continue;
        mig = g_new0(Migration, 1);
        mig->id = jstr(o, "id");
        mig->uuid = jstr(o, "instance_uuid");
        mig->source = jstr(o, "source_host");
        mig->dest = jstr(o, "dest_host");
        mig->status = jstr(o, "status");
        mig->error = jstr(o, "error");
        mig->block = json_object_get_boolean(vn_json_member(o, "block_migration"));
        mig->started_at = json_object_get_int64(vn_json_member(o, "started_at"));
        mig->finished_at = json_object_get_int64(vn_json_member(o, "finished_at"));
        mig->final.downtime_ms = json_object_get_int64(vn_json_member(o, "downtime_ms"));
        mig->have_final = mig->final.downtime_ms >= 0;
        if (!mig->id || !mig->uuid || !mig->source || !mig->dest || !mig->status) {
            migration_free(mig);
            continue;
        }
        g_hash_table_replace(m->by_uuid, g_strdup(mig->uuid), mig);
    }
    g_mutex_unlock(&m->lock);
}

json_object *vn_migrations_describe(VnMigrations *m, const char *uuid)
{
    json_object *o = NULL;

    g_mutex_lock(&m->lock);
    Migration *mig = g_hash_table_lookup(m->by_uuid, uuid);
    if (mig)
        o = describe_locked(mig);
    g_mutex_unlock(&m->lock);
    return o;
}

/* ------------------------------------------------------------------ registry updates */

typedef struct {
    VnAgent *a;
    VnOp *op;
    char *uuid;
    char *dest;
    char *id;
    json_object *md; /* migrate_data as it grows */
    gboolean shared;
    gboolean block;
    gboolean dest_prepared;
    gboolean paused_by_us;
    gboolean aborted; /* cancelled on purpose (operator, policy, dead destination) */
    gboolean postcopy;
    gboolean handed_over; /* libvirt moved the guest: it runs on the destination now */
    char *abort_reason;
} Flow;

static void report(Flow *f)
{
    VnMigrationRow row = { 0 };

    if (!f->a->reporter)
        return;
    g_mutex_lock(&f->a->migrations->lock);
    Migration *mig = g_hash_table_lookup(f->a->migrations->by_uuid, f->uuid);
    if (mig) {
        const VnJobStats *s = mig->have_final ? &mig->final : &mig->stats;
        row.id = mig->id;
        row.instance_uuid = mig->uuid;
        row.source_host = mig->source;
        row.dest_host = mig->dest;
        row.status = mig->status;
        row.block_migration = mig->block;
        row.memory_total = s->memory_total;
        row.memory_processed = s->memory_processed;
        row.memory_remaining = s->memory_remaining;
        row.disk_total = s->disk_total;
        row.disk_processed = s->disk_processed;
        row.disk_remaining = s->disk_remaining;
        row.downtime_ms = mig->have_final ? mig->final.downtime_ms : -1;
        row.started_at = mig->started_at;
        row.finished_at = mig->finished_at;
        row.error_message = mig->error;
        vn_reporter_migration(f->a->reporter, vn_migration_row_copy(&row));
    }
    g_mutex_unlock(&f->a->migrations->lock);
}

static void set_status(Flow *f, const char *status, const char *error)
{
    g_mutex_lock(&f->a->migrations->lock);
    Migration *mig = g_hash_table_lookup(f->a->migrations->by_uuid, f->uuid);
    if (mig) {
        g_free(mig->status);
        mig->status = g_strdup(status);
        if (error) {
            g_free(mig->error);
            mig->error = g_strdup(error);
        }
        if (!running_status(status))
            mig->finished_at = g_get_real_time() / G_USEC_PER_SEC;
        mig->block = f->block;
        save_locked(f->a->migrations, mig);
    }
    g_mutex_unlock(&f->a->migrations->lock);
    report(f);
}

static void set_stats(Flow *f, const VnJobStats *s, double elapsed, int downtime_ms,
                      const char *action)
{
    g_mutex_lock(&f->a->migrations->lock);
    Migration *mig = g_hash_table_lookup(f->a->migrations->by_uuid, f->uuid);
    if (mig) {
        if (s && s->state == VN_JOB_RUNNING)
            mig->stats = *s;
        mig->elapsed_s = elapsed;
        if (downtime_ms > 0)
            mig->downtime_ms = downtime_ms;
        if (action) {
            g_free(mig->action);
            mig->action = g_strdup(action);
        }
    }
    g_mutex_unlock(&f->a->migrations->lock);
}

static void take_requests(Flow *f, gboolean *abort, gboolean *force, gboolean *postcopy)
{
    g_mutex_lock(&f->a->migrations->lock);
    Migration *mig = g_hash_table_lookup(f->a->migrations->by_uuid, f->uuid);
    *abort = mig && mig->abort_req;
    *force = mig && mig->force_req;
    *postcopy = mig && mig->postcopy;
    g_mutex_unlock(&f->a->migrations->lock);
}

/* ------------------------------------------------------------------ RPC to the peer */

static json_object *md_get(json_object *md, const char *key)
{
    return vn_json_member(md, key);
}

gboolean vn_md_bool(json_object *md, const char *key)
{
    json_object *v = md_get(md, key);

    return v && json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
}

const char *vn_md_str(json_object *md, const char *key)
{
    json_object *v = md_get(md, key);

    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

json_object *vn_peer_call(VnAgent *a, const char *host, const char *method, const char *uuid,
                          json_object *md, int timeout_s, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(json_object) args = json_object_new_object();
    json_object *result = NULL;

    if (!a->rpc) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED, "no AMQP link");
        return NULL;
    }
    json_object_object_add(args, "instance_uuid", json_object_new_string(uuid));
    json_object_object_add(args, "source_host", json_object_new_string(cfg->host));
    json_object_object_add(args, "migrate_data",
                           md ? json_object_get(md) : json_object_new_object());
    if (!vn_rpc_call(a->rpc, host, method, args, API_VERSION, NULL, timeout_s, 0, &result, error)) {
        g_prefix_error(error, "%s on %s: ", method, host);
        return NULL;
    }
    if (!result || !json_object_is_type(result, json_type_object)) {
        if (result)
            json_object_put(result);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                    "%s on %s returned no migrate_data", method, host);
        return NULL;
    }
    return result;
}

static void peer_cast(VnAgent *a, const char *host, const char *method, const char *uuid,
                      json_object *md)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(json_object) args = json_object_new_object();
    g_autoptr(GError) err = NULL;

    json_object_object_add(args, "instance_uuid", json_object_new_string(uuid));
    json_object_object_add(args, "source_host", json_object_new_string(cfg->host));
    json_object_object_add(args, "migrate_data",
                           md ? json_object_get(md) : json_object_new_object());
    if (!a->rpc || !vn_rpc_cast(a->rpc, host, method, args, API_VERSION, NULL, &err))
        g_warning("%s to %s: %s", method, host, err ? err->message : "no AMQP link");
}

static void md_merge(json_object *into, json_object *from)
{
    json_object_object_foreach(from, k, v)
    {
        json_object_object_add(into, k, v ? json_object_get(v) : NULL);
    }
}

/* ------------------------------------------------------------------ the source flow */

static const char *const disk_names[] = { VN_GUEST_ROOT_DISK, VN_GUEST_EPHEMERAL_DISK,
                                          VN_GUEST_SWAP_DISK };

/* Disk names and virtual sizes of the instance, for the destination's disks. */
static json_object *disk_sizes(VnAgent *a, const char *uuid)
{
    json_object *o = json_object_new_object();

    for (gsize i = 0; i < G_N_ELEMENTS(disk_names); i++) {
        g_autofree char *p = vn_guest_file(a, uuid, disk_names[i]);
        guint64 size = 0;
        if (vn_disk_virtual_size(p, &size, NULL))
            json_object_object_add(o, disk_names[i], json_object_new_int64((gint64)size));
    }
    return o;
}

/* The sizes disk_sizes recorded in @disks, into @bytes (room for every disk); their number. */
static int recorded_sizes(json_object *disks, guint64 *bytes)
{
    int n = 0;

    for (gsize i = 0; i < G_N_ELEMENTS(disk_names); i++) {
        json_object *v = vn_json_member(disks, disk_names[i]);
        if (v)
            bytes[n++] = (guint64)json_object_get_int64(v);
    }
    return n;
}

static gboolean prepare(Flow *f, const VnInstanceRecord *rec, int pref_block, GError **error)
{
    VnAgent *a = f->a;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(json_object) check = NULL;
    g_autoptr(json_object) pre = NULL;

    json_object_object_add(f->md, "migration_id", json_object_new_string(f->id));
    json_object_object_add(f->md, "source_host", json_object_new_string(cfg->host));
    json_object_object_add(f->md, "dest_host", json_object_new_string(f->dest));
    json_object_object_add(f->md, "instance", vn_instance_record_to_json(rec));
    json_object_object_add(f->md, "virt_type",
                           json_object_new_string(vn_virt_type_name(cfg->virt_type)));
    json_object_object_add(f->md, "block_migration",
                           pref_block < 0 ? NULL : json_object_new_boolean(pref_block));
    json_object_object_add(f->md, "disks", disk_sizes(a, f->uuid));
    /* the CHAP passwords of its volumes, for the destination's initiator (the request is
     * journaled there without them: every "secret" member is redacted) */
    json_object *secrets = json_object_new_object();
    for (guint i = 0; i < rec->volumes->len; i++) {
        const VnVolumeSpec *v = g_ptr_array_index(rec->volumes, i);
        g_autofree char *value =
            v->conn.auth_username ? vn_secret_get(a->virt, v->volume_id) : NULL;
        if (value) {
            json_object_object_add(secrets, v->volume_id, json_object_new_string(value));
            memset(value, 0, strlen(value));
        }
    }
    json_object_object_add(f->md, "volume_secrets", secrets);
    /* the guest's CPU, for the destination to compare with what its hypervisor offers */
    if (cfg->virt_type == VN_VIRT_TYPE_KVM) {
        g_autofree char *dom = vn_domain_get_xml(a->virt, f->uuid, TRUE, error);
        g_autofree char *cpu = dom ? vn_domain_xml_cpu(dom, strlen(dom), error) : NULL;
        json_object *ci;
        if (!cpu)
            return FALSE;
        ci = json_object_new_object();
        json_object_object_add(ci, "xml", json_object_new_string(cpu));
        json_object_object_add(f->md, "cpu_info", ci);
    }

    check =
        vn_peer_call(a, f->dest, "check_can_live_migrate_destination", f->uuid, f->md, 60, error);
    if (!check)
        return FALSE;
    md_merge(f->md, check);
    f->shared = vn_md_bool(f->md, "is_shared_instance_path");
    f->block = vn_md_bool(f->md, "block_migration");
    g_message("migration %s of %s to %s: %s storage, %s", f->id, f->uuid, f->dest,
              f->shared ? "shared" : "local", f->block ? "block migration" : "memory only");
    set_status(f, "preparing", NULL);
    pre = vn_peer_call(a, f->dest, "pre_live_migration", f->uuid, f->md, 900, error);
    if (!pre)
        return FALSE;
    f->dest_prepared = TRUE;
    md_merge(f->md, pre);
    return TRUE;
}

typedef struct {
    VnAgent *a;
    char *uuid;
    VnMigrateParams params;
    char *xml;
    char **disks;
    GError *error;
    gboolean ok;
    gboolean done;
    GMutex lock;
} MigrateThread;

static gpointer migrate_thread(gpointer data)
{
    MigrateThread *t = data;
    GError *err = NULL;
    gboolean ok = vn_migrate_run(t->a->virt, t->uuid, &t->params, &err);

    g_mutex_lock(&t->lock);
    t->ok = ok;
    t->error = err;
    t->done = TRUE;
    g_mutex_unlock(&t->lock);
    return NULL;
}

static gboolean thread_done(MigrateThread *t)
{
    gboolean d;

    g_mutex_lock(&t->lock);
    d = t->done;
    g_mutex_unlock(&t->lock);
    return d;
}

static void apply_action(Flow *f, const VnLmAction *act)
{
    VnAgent *a = f->a;
    g_autoptr(GError) err = NULL;

    switch (act->kind) {
    case VN_LM_SET_DOWNTIME:
        if (!vn_migrate_set_max_downtime(a->virt, f->uuid, act->downtime_ms, &err))
            g_debug("downtime: %s", err->message);
        else
            g_info("migration of %s: maximum downtime now %d ms", f->uuid, act->downtime_ms);
        break;
    case VN_LM_POSTCOPY:
        g_message("migration of %s: %s", f->uuid, act->reason);
        if (vn_migrate_start_postcopy(a->virt, f->uuid, &err)) {
            f->postcopy = TRUE;
            set_status(f, "post-copy", NULL);
        } else {
            g_warning("migration of %s: %s", f->uuid, err->message);
        }
        break;
    case VN_LM_PAUSE:
        g_message("migration of %s: %s", f->uuid, act->reason);
        if (vn_domain_pause(a->virt, f->uuid, &err))
            f->paused_by_us = TRUE;
        else
            g_warning("migration of %s: %s", f->uuid, err->message);
        break;
    case VN_LM_ABORT:
        g_message("migration of %s: %s", f->uuid, act->reason);
        f->aborted = TRUE;
        g_free(f->abort_reason);
        f->abort_reason = g_strdup(act->reason);
        if (!vn_migrate_abort(a->virt, f->uuid, &err))
            g_warning("migration of %s: %s", f->uuid, err->message);
        break;
    case VN_LM_CONTINUE:
        break;
    }
    if (act->kind != VN_LM_CONTINUE && act->kind != VN_LM_SET_DOWNTIME)
        set_stats(f, NULL, -1, 0, act->reason);
}

/* Is the destination agent still there?  A dead one gets the migration aborted. */
static gboolean dest_alive(Flow *f)
{
    g_autoptr(json_object) args = json_object_new_object();
    g_autoptr(GError) err = NULL;
    json_object *res = NULL;

    json_object_object_add(args, "arg", json_object_new_string(f->id));
    if (vn_rpc_call(f->a->rpc, f->dest, "ping", args, API_VERSION, NULL, LIVENESS_EVERY_S, 0, &res,
                    &err)) {
        if (res)
            json_object_put(res);
        return TRUE;
    }
    g_warning("migration of %s: the agent of %s does not answer: %s", f->uuid, f->dest,
              err->message);
    return FALSE;
}

/* Watches the running migration until libvirt returns; applies the policy. */
static void monitor(Flow *f, MigrateThread *t, const VnInstanceRecord *rec)
{
    VnAgent *a = f->a;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    VnLmPolicyConfig pc = {
        cfg->live_migration_downtime,        cfg->live_migration_downtime_steps,
        cfg->live_migration_downtime_delay,  cfg->live_migration_completion_timeout,
        cfg->live_migration_stall_timeout,   cfg->live_migration_timeout_action,
        cfg->live_migration_permit_post_copy
    };
    VnLmPolicy policy;
    guint64 sizes[G_N_ELEMENTS(disk_names)];
    int n = recorded_sizes(md_get(f->md, "disks"), sizes);
    gint64 start = g_get_monotonic_time();
    gint64 next_progress = start;
    gint64 next_ping = start + LIVENESS_EVERY_S * G_TIME_SPAN_SECOND;
    int ping_failures = 0;
    int downtime = 0;

    vn_lm_policy_init(&policy, &pc, vn_lm_data_gb(rec->flavor.memory_mb, sizes, f->block ? n : 0));
    while (!thread_done(t)) {
        double elapsed = (g_get_monotonic_time() - start) / 1e6;
        VnJobStats stats;
        gboolean abort_req, force_req, postcopy;
        g_autoptr(GError) err = NULL;

        if (!vn_migrate_job_stats(a->virt, f->uuid, &stats, &err))
            memset(&stats, 0, sizeof(stats));
        take_requests(f, &abort_req, &force_req, &postcopy);
        postcopy = postcopy || f->postcopy || vn_migrate_in_postcopy(a->virt, f->uuid);
        if (postcopy && !f->postcopy) {
            f->postcopy = TRUE;
            set_status(f, "post-copy", NULL);
        }
        for (;;) {
            VnLmAction act =
                vn_lm_policy_step(&policy, elapsed, stats.state == VN_JOB_RUNNING ? &stats : NULL,
                                  postcopy, abort_req && !f->aborted, force_req);
            if (act.kind == VN_LM_CONTINUE)
                break;
            if (act.kind == VN_LM_SET_DOWNTIME)
                downtime = act.downtime_ms;
            apply_action(f, &act);
            if (act.kind == VN_LM_ABORT)
                break;
        }
        if (!f->postcopy && !f->aborted && g_get_monotonic_time() >= next_ping) {
            next_ping = g_get_monotonic_time() + LIVENESS_EVERY_S * G_TIME_SPAN_SECOND;
            ping_failures = dest_alive(f) ? 0 : ping_failures + 1;
            if (ping_failures >= LIVENESS_FAILURES) {
                VnLmAction act = { VN_LM_ABORT, 0, "the destination agent stopped answering" };
                apply_action(f, &act);
            }
        }
        set_stats(f, &stats, elapsed, downtime, NULL);
        if (g_get_monotonic_time() >= next_progress) {
            next_progress += (gint64)cfg->live_migration_progress_interval * G_TIME_SPAN_SECOND;
            if (stats.state == VN_JOB_RUNNING)
                g_info("migration of %s: %.0f s, memory %" G_GINT64_FORMAT "/%" G_GINT64_FORMAT
                       " MiB left, disk %" G_GINT64_FORMAT " MiB left, %" G_GINT64_FORMAT
                       " MiB/s, pass %" G_GINT64_FORMAT ", downtime step %d ms",
                       f->uuid, elapsed, stats.memory_remaining >> 20, stats.memory_total >> 20,
                       stats.disk_remaining >> 20, stats.memory_bps >> 20, stats.memory_iteration,
                       downtime);
            report(f);
        }
        g_usleep(MONITOR_INTERVAL_US);
    }
}

#define POST_ATTEMPTS 3

/* After libvirt moved the guest: the destination takes over, the source lets go.  The
 * source forgets the guest either way (it no longer runs here), but the migration is a
 * success only once the destination's agent confirmed it took the guest over; otherwise
 * it fails with MigrationError, the guest running on the destination, whose agent adopts
 * it at its next start. */
static gboolean complete(Flow *f, GError **error)
{
    VnAgent *a = f->a;
    g_autoptr(json_object) post = NULL;
    g_autoptr(GError) err = NULL;
    gint64 end = g_get_monotonic_time() + 3 * G_TIME_SPAN_SECOND;

    f->handed_over = TRUE;
    /* the final statistics (downtime) come with libvirt's job-completed event */
    g_mutex_lock(&a->migrations->lock);
    Migration *mig = g_hash_table_lookup(a->migrations->by_uuid, f->uuid);
    while (mig && !mig->have_final &&
           g_cond_wait_until(&a->migrations->cond, &a->migrations->lock, end))
        ;
    g_mutex_unlock(&a->migrations->lock);

    for (int i = 1; i <= POST_ATTEMPTS && !post; i++) {
        g_clear_error(&err);
        post = vn_peer_call(a, f->dest, "post_live_migration_at_destination", f->uuid, f->md, 120,
                            &err);
        if (!post && i < POST_ATTEMPTS) {
            g_warning("migration of %s: %s did not confirm the take-over (%s); asking again",
                      f->uuid, f->dest, err->message);
            g_usleep((gulong)(2 * i) * G_USEC_PER_SEC);
        }
    }
    if (!f->shared) {
        g_autofree char *dir = vn_agent_instance_dir(a, f->uuid);
        g_autoptr(GError) rm = NULL;
        if (!vn_disk_remove_tree(dir, &rm))
            g_warning("removing the source disks of %s: %s", f->uuid, rm->message);
    }
    /* its taps left with it: the filters and bridge uses here go */
    {
        g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, f->uuid);
        if (rec) {
            vn_ports_unplug(a, rec->ports, rec->ports->len);
            vn_vols_disconnect_all(a, rec->volumes, rec->volumes->len);
        }
    }
    vn_tracker_drop(a->tracker, f->uuid);
    /* the instance is not here any more: forgotten, never reported from here */
    if (!vn_instance_store_forget(a->store, f->uuid, &err))
        g_warning("migration of %s: forgetting the record: %s", f->uuid, err->message);
    vn_agent_capacity_changed(a);
    if (!post) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                    "the guest of %s runs on %s, but that host's agent did not take it over "
                    "(%s); it adopts the guest when it restarts",
                    f->uuid, f->dest, err ? err->message : "no answer");
        return FALSE;
    }
    set_status(f, "completed", NULL);
    return TRUE;
}

/* The guest stays here: undo the destination's preparation, resume what we paused. */
static void roll_back(Flow *f, VnTaskState task, VnVmState vm)
{
    VnAgent *a = f->a;
    g_autoptr(GError) err = NULL;
    VnPowerState power = VN_POWER_NOSTATE;
    gboolean exists = FALSE;

    if (f->paused_by_us && !vn_domain_unpause(a->virt, f->uuid, &err)) {
        g_warning("migration of %s: resuming the guest: %s", f->uuid, err->message);
        g_clear_error(&err);
    }
    if (f->dest_prepared || md_get(f->md, "is_shared_instance_path"))
        peer_cast(a, f->dest, "rollback_live_migration_at_destination", f->uuid, f->md);
    if (vn_domain_exists(a->virt, f->uuid, &exists, NULL) && exists)
        vn_domain_power_state(a->virt, f->uuid, &power, NULL);
    if (!exists) {
        {
            g_autoptr(GError) e = NULL;
            if (!vn_instance_store_set_error(
                    a->store, f->uuid, "MigrationError",
                    "the guest was lost during a failed post-copy migration", &e))
                vn_warn_error(&e, "recording the fault of instance %s", f->uuid);
        }
        return;
    }
    {
        g_autoptr(GError) e = NULL;
        if (!vn_instance_store_end_task(a->store, f->uuid, task, vm, power, &e))
            vn_warn_error(&e, "ending the task of instance %s", f->uuid);
    }
}

/* The destination's own entry of an arriving migration (the source owns the central row):
 * so get_migration answers there too, before and after a restart. */
static void record_arrival(VnMigrations *m, const char *uuid, const char *id, const char *source,
                           const char *dest, gboolean block)
{
    Migration *mig = g_new0(Migration, 1);

    mig->id = g_strdup(id ? id : "unknown");
    mig->uuid = g_strdup(uuid);
    mig->source = g_strdup(source ? source : "?");
    mig->dest = g_strdup(dest);
    mig->status = g_strdup("arriving");
    mig->block = block;
    mig->started_at = g_get_real_time() / G_USEC_PER_SEC;
    mig->final.downtime_ms = -1;
    g_mutex_lock(&m->lock);
    g_hash_table_replace(m->by_uuid, g_strdup(uuid), mig);
    save_locked(m, mig);
    g_mutex_unlock(&m->lock);
}

/* Ends the entry of @uuid (if it still runs) with @status; TRUE when it changed. */
static gboolean record_end(VnMigrations *m, const char *uuid, const char *status, const char *error)
{
    gboolean changed = FALSE;

    g_mutex_lock(&m->lock);
    Migration *mig = g_hash_table_lookup(m->by_uuid, uuid);
    if (mig && (running_status(mig->status) || strcmp(mig->status, "arriving") == 0)) {
        g_free(mig->status);
        mig->status = g_strdup(status);
        if (error) {
            g_free(mig->error);
            mig->error = g_strdup(error);
        }
        mig->finished_at = g_get_real_time() / G_USEC_PER_SEC;
        save_locked(m, mig);
        changed = TRUE;
    }
    g_mutex_unlock(&m->lock);
    return changed;
}

static char *new_migration(VnMigrations *m, const char *uuid, const char *source, const char *dest,
                           GError **error)
{
    char *id = NULL;

    g_mutex_lock(&m->lock);
    Migration *old = g_hash_table_lookup(m->by_uuid, uuid);
    if (old && running_status(old->status)) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID_STATE,
                    "instance %s is already migrating (%s)", uuid, old->id);
    } else {
        Migration *mig = g_new0(Migration, 1);
        mig->id = g_uuid_string_random();
        mig->uuid = g_strdup(uuid);
        mig->source = g_strdup(source);
        mig->dest = g_strdup(dest);
        mig->status = g_strdup("queued");
        mig->started_at = g_get_real_time() / G_USEC_PER_SEC;
        mig->final.downtime_ms = -1;
        g_hash_table_replace(m->by_uuid, g_strdup(uuid), mig);
        save_locked(m, mig);
        id = g_strdup(mig->id);
    }
    g_mutex_unlock(&m->lock);
    return id;
}

static gboolean run_migration(Flow *f, const VnInstanceRecord *rec, GError **error)
{
    VnAgent *a = f->a;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autofree char *xml = NULL;
    g_autofree char *dest_xml = NULL;
    g_autofree char *src_dir = g_strdup(cfg->instances_path);
    const char *dest_dir = vn_md_str(f->md, "dest_instances_path");
    json_object *uid = md_get(f->md, "dest_guest_uid");
    MigrateThread t = { 0 };
    GThread *th;
    g_autoptr(GPtrArray) block_disks = g_ptr_array_new();
    json_object *disks = md_get(f->md, "disks");

    /* the local disks to copy, by their targets in the domain */
    if (disks && vn_json_member(disks, VN_GUEST_ROOT_DISK))
        g_ptr_array_add(block_disks, (gpointer) "vda");
    if (disks && vn_json_member(disks, VN_GUEST_EPHEMERAL_DISK))
        g_ptr_array_add(block_disks, (gpointer) "vdb");
    if (disks && vn_json_member(disks, VN_GUEST_SWAP_DISK))
        g_ptr_array_add(block_disks, (gpointer) "vdc");
    g_ptr_array_add(block_disks, NULL);

    xml = vn_domain_get_xml(a->virt, f->uuid, TRUE, error);
    if (!xml)
        return FALSE;
    dest_xml = vn_domain_xml_for_destination(xml, src_dir, dest_dir ? dest_dir : src_dir,
                                             uid ? json_object_get_int(uid) : 0, error);
    if (!dest_xml)
        return FALSE;
    t.a = a;
    t.uuid = f->uuid;
    t.params.dest_uri = vn_md_str(f->md, "dest_uri");
    t.params.dest_xml = dest_xml;
    t.params.inbound_addr = vn_md_str(f->md, "inbound_addr");
    t.params.bandwidth_mib = (guint64)cfg->live_migration_bandwidth;
    t.params.parallel = cfg->live_migration_parallel_connections;
    t.params.block = f->block;
    t.params.block_disks = (char **)block_disks->pdata;
    t.params.storage_proven_shared = f->shared;
    t.params.post_copy = cfg->live_migration_permit_post_copy;
    t.params.tls = cfg->live_migration_with_native_tls;
    t.params.auto_converge =
        cfg->live_migration_permit_auto_converge && !cfg->live_migration_permit_post_copy;
    g_mutex_init(&t.lock);
    if (!t.params.dest_uri) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                    "the destination did not say its libvirt URI");
        return FALSE;
    }
    set_status(f, "running", NULL);
    vn_agent_notify_instance(a, "instance.live_migration.start", rec, NULL);
    th = g_thread_new("migrate", migrate_thread, &t);
    monitor(f, &t, rec);
    g_thread_join(th);
    g_mutex_clear(&t.lock);
    if (!t.ok) {
        if (f->aborted)
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                        "live migration of %s cancelled: %s", f->uuid, f->abort_reason);
        else
            g_propagate_error(error, g_steal_pointer(&t.error));
        g_clear_error(&t.error);
        return FALSE;
    }
    return complete(f, error);
}

/* Closes the journaled entry and the central row of a migration a restart interrupted
 * (they stayed "running" for good before). */
static void close_recovered(VnAgent *a, const char *uuid, const char *status, const char *error)
{
    Flow f = { .a = a, .uuid = (char *)uuid };

    if (record_end(a->migrations, uuid, status, error))
        report(&f);
}

/* A live migration this agent was running when it stopped: finish the hand-over if
 * libvirt moved the guest meanwhile, else stop the job and undo the destination. */
static gboolean recover_source(VnOp *op, GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    const char *dest = op->req->dest_host;
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;
    gboolean exists = FALSE;

    if (!rec || rec->task_state != VN_TASK_MIGRATING) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERRUPTED,
                    "the agent restarted before the migration of %s began", uuid);
        return FALSE;
    }
    if (!vn_domain_exists(a->virt, uuid, &exists, error))
        return FALSE;
    if (!exists) {
        /* libvirt finished the migration while the agent was away */
        g_autoptr(json_object) post =
            vn_peer_call(a, dest, "post_live_migration_at_destination", uuid, NULL, 120, &err);
        if (!post)
            g_warning("recovering the migration of %s: %s", uuid, err->message);
        vn_ports_unplug(a, rec->ports, rec->ports->len);
        vn_vols_disconnect_all(a, rec->volumes, rec->volumes->len);
        vn_tracker_drop(a->tracker, uuid);
        {
            g_autoptr(GError) e = NULL;
            if (!vn_instance_store_forget(a->store, uuid, &e))
                vn_warn_error(&e, "forgetting instance %s", uuid);
        }
        vn_agent_capacity_changed(a);
        close_recovered(a, uuid, post ? "completed" : "error",
                        post ? NULL
                             : "the guest moved while the source agent was stopped, and "
                               "the destination's agent did not confirm the take-over");
        g_message("instance %s finished migrating to %s while the agent was stopped", uuid, dest);
        if (!post) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                        "the guest of %s runs on %s, but that host's agent did not take it over "
                        "(%s)",
                        uuid, dest, err->message);
            return FALSE;
        }
        return TRUE;
    }
    if (!vn_migrate_abort(a->virt, uuid, &err))
        g_debug("no migration job to abort for %s: %s", uuid, err->message);
    /* the journaled entry says whether the storage was shared (a block migration means it
     * was not): the destination then removes the disks it made; unknown, it keeps them
     * (a leak, logged there) rather than risk deleting shared ones */
    g_autoptr(json_object) md = json_object_new_object();
    g_mutex_lock(&a->migrations->lock);
    Migration *mig = g_hash_table_lookup(a->migrations->by_uuid, uuid);
    if (mig && running_status(mig->status) && g_strcmp0(mig->dest, dest) == 0)
        json_object_object_add(md, "is_shared_instance_path", json_object_new_boolean(!mig->block));
    g_mutex_unlock(&a->migrations->lock);
    peer_cast(a, dest, "rollback_live_migration_at_destination", uuid, md);
    VnPowerState power = VN_POWER_NOSTATE;
    vn_domain_power_state(a->virt, uuid, &power, NULL);
    if (!vn_instance_store_end_task(a->store, uuid, VN_TASK_MIGRATING,
                                    power == VN_POWER_PAUSED ? VN_VM_PAUSED : VN_VM_ACTIVE, power,
                                    &err))
        g_warning("recovering the migration of %s: %s", uuid, err->message);
    close_recovered(a, uuid, "cancelled", "the source agent restarted during the migration");
    g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERRUPTED,
                "the agent restarted during the live migration of %s; it was cancelled and the "
                "guest stays on this host",
                uuid);
    return FALSE;
}

gboolean vn_op_live_migration(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState allowed[] = { VN_VM_ACTIVE, VN_VM_PAUSED, VN_VM_LAST };
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    const char *uuid = op->req->instance_uuid;
    g_autoptr(VnInstanceRecord) rec = NULL;
    g_autoptr(GError) err = NULL;
    Flow f = { 0 };
    gboolean ok;

    if (op->replayed)
        return recover_source(op, error);
    if (strcmp(op->req->dest_host, cfg->host) == 0) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "dest_host: %s is this host",
                    op->req->dest_host);
        return FALSE;
    }
    rec = vn_instance_store_get(a->store, uuid);
    if (!vn_instance_store_begin_task(a->store, uuid, allowed, VN_TASK_MIGRATING, op->request_id,
                                      error))
        return FALSE;
    f.a = a;
    f.op = op;
    f.uuid = g_strdup(uuid);
    f.dest = g_strdup(op->req->dest_host);
    f.md = json_object_new_object();
    f.id = new_migration(a->migrations, uuid, cfg->host, f.dest, &err);
    if (!f.id) {
        {
            g_autoptr(GError) e = NULL;
            if (!vn_instance_store_end_task(a->store, uuid, VN_TASK_MIGRATING, rec->vm_state, -1,
                                            &e))
                vn_warn_error(&e, "ending the task of instance %s", uuid);
        }
        g_propagate_error(error, g_steal_pointer(&err));
        ok = FALSE;
    } else {
        report(&f);
        ok = prepare(&f, rec, op->req->block_migration, &err) && run_migration(&f, rec, &err);
        if (ok) {
            g_atomic_int_inc(&a->counters.migrations_ok);
            g_message("instance %s migrated to %s", uuid, f.dest);
            g_free(rec->host);
            rec->host = g_strdup(f.dest);
            vn_agent_notify_instance(a, "instance.live_migration.end", rec, NULL);
            *result = vn_migrations_describe(a->migrations, uuid);
        } else {
            g_atomic_int_inc(&a->counters.migrations_failed);
            /* a guest that left cannot be rolled back: undoing the destination would
             * destroy it there */
            if (!f.handed_over)
                roll_back(&f, VN_TASK_MIGRATING, rec->vm_state);
            set_status(&f,
                       f.aborted ? "cancelled" : (f.postcopy || f.handed_over ? "error" : "failed"),
                       err->message);
            g_autoptr(VnInstanceRecord) now = vn_instance_store_get(a->store, uuid);
            vn_agent_notify_instance(
                a, f.aborted ? "instance.live_migration.abort" : "instance.live_migration.error",
                now ? now : rec, err->message);
            g_propagate_error(error, g_steal_pointer(&err));
        }
    }
    json_object_put(f.md);
    g_free(f.uuid);
    g_free(f.dest);
    g_free(f.id);
    g_free(f.abort_reason);
    return ok;
}

/* ------------------------------------------------------------------ destination steps */

static VnInstanceRecord *md_instance(json_object *md, GError **error)
{
    json_object *inst = md_get(md, "instance");

    if (!inst) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID, "migrate_data.instance: missing");
        return NULL;
    }
    return vn_instance_record_from_json(inst, error);
}

/* A <cpu> element from a cpu_info JSON (for the CPU comparison under kvm). */
gboolean vn_op_check_dest(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    json_object *md = op->req->migrate_data;
    g_autoptr(VnInstanceRecord) inst = NULL;
    g_autoptr(VnInstanceRecord) here = NULL;
    g_autofree char *probe = NULL;
    g_autofree char *probe_path = NULL;
    g_autoptr(json_object) src = NULL;
    g_autoptr(json_object) ask = NULL;
    json_object *out;
    const char *vt = vn_md_str(md, "virt_type");
    int fd;

    if (!vn_host_check_enabled(a, "incoming migrations", error))
        return FALSE;
    inst = md_instance(md, error);

    if (!inst)
        return FALSE;
    here = vn_instance_store_get(a->store, inst->uuid);
    if (here && here->vm_state != VN_VM_DELETED) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_EXISTS, "instance %s already exists on %s",
                    inst->uuid, cfg->host);
        return FALSE;
    }
    if (vt && strcmp(vt, vn_virt_type_name(cfg->virt_type)) != 0) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                    "virt_type differs: the source runs %s, %s runs %s", vt, cfg->host,
                    vn_virt_type_name(cfg->virt_type));
        return FALSE;
    }
    if (!vn_tracker_check(a->tracker, inst->uuid, &inst->flavor, error))
        return FALSE;
    const char *cpu = json_object_get_string(vn_json_member(md_get(md, "cpu_info"), "xml"));
    if (cfg->virt_type == VN_VIRT_TYPE_KVM && cpu && *cpu) {
        gboolean compatible = FALSE;
        if (!vn_cpu_xml_check(cpu, strlen(cpu), error)) {
            g_prefix_error(error, "migrate_data.cpu_info.xml: ");
            return FALSE;
        }
        if (!vn_migrate_compare_cpu(a->virt, vn_virt_type_name(cfg->virt_type), cpu, &compatible,
                                    error))
            return FALSE;
        if (!compatible) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                        "the CPU of %s cannot run the guest's CPU model", cfg->host);
            return FALSE;
        }
    }
    /* the shared-storage probe: a file here that the source looks for */
    g_autofree char *rnd = g_uuid_string_random();
    probe = g_strdup_printf(".vn-probe-%s", rnd);
    probe_path = g_build_filename(cfg->instances_path, probe, NULL);
    fd = open(probe_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        g_set_error(error, VN_STOR_ERROR, VN_STOR_ERROR_IO, "writing the probe '%s': %s",
                    probe_path, g_strerror(errno));
        return FALSE;
    }
    close(fd);
    ask = json_object_new_object();
    json_object_object_add(ask, "probe_name", json_object_new_string(probe));
    json_object_object_add(
        ask, "block_migration",
        md_get(md, "block_migration") ? json_object_get(md_get(md, "block_migration")) : NULL);
    src =
        vn_peer_call(a, op->req->source_host ? op->req->source_host : vn_md_str(md, "source_host"),
                     "check_can_live_migrate_source", inst->uuid, ask, 60, error);
    g_unlink(probe_path);
    if (!src)
        return FALSE;
    out = json_object_new_object();
    json_object_object_add(out, "is_shared_instance_path",
                           json_object_new_boolean(vn_md_bool(src, "is_shared_instance_path")));
    json_object_object_add(out, "block_migration",
                           json_object_new_boolean(vn_md_bool(src, "block_migration")));
    json_object_object_add(out, "dest_uri", json_object_new_string(cfg->live_migration_target_uri));
    if (*cfg->live_migration_inbound_addr)
        json_object_object_add(out, "inbound_addr",
                               json_object_new_string(cfg->live_migration_inbound_addr));
    json_object_object_add(out, "dest_instances_path", json_object_new_string(cfg->instances_path));
    *result = out;
    return TRUE;
}

gboolean vn_op_check_source(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    json_object *md = op->req->migrate_data;
    const char *probe = vn_md_str(md, "probe_name");
    json_object *pref = md_get(md, "block_migration");
    g_autofree char *path = NULL;
    gboolean shared, block;
    json_object *out;

    if (!probe || !g_str_has_prefix(probe, ".vn-probe-") || strchr(probe, '/')) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "migrate_data.probe_name: missing or not a probe name");
        return FALSE;
    }
    path = g_build_filename(cfg->instances_path, probe, NULL);
    shared = g_file_test(path, G_FILE_TEST_EXISTS);
    block = pref ? json_object_get_boolean(pref) : !shared;
    if (block && shared) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                    "block migration was asked for, but the instance storage is shared");
        return FALSE;
    }
    if (!block && !shared) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                    "the instance storage is not shared: a block migration is needed");
        return FALSE;
    }
    out = json_object_new_object();
    json_object_object_add(out, "is_shared_instance_path", json_object_new_boolean(shared));
    json_object_object_add(out, "block_migration", json_object_new_boolean(block));
    *result = out;
    return TRUE;
}

/* Undoes a destination's preparation (its own failure, or the source's rollback). */
static void undo_dest(VnAgent *a, const char *uuid, gboolean shared)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;

    /* never an instance this host owns: only one arriving by migration */
    if (!rec || rec->task_state != VN_TASK_MIGRATING || g_strcmp0(rec->host, cfg->host) == 0)
        return;
    if (!vn_domain_undefine(a->virt, uuid, &err))
        g_warning("rollback of %s: %s", uuid, err->message);
    vn_ports_unplug(a, rec->ports, rec->ports->len);
    vn_vols_disconnect_all(a, rec->volumes, rec->volumes->len);
    if (!shared) {
        g_autofree char *dir = vn_agent_instance_dir(a, uuid);
        g_clear_error(&err);
        if (!vn_disk_remove_tree(dir, &err))
            g_warning("rollback of %s: %s", uuid, err->message);
    }
    vn_tracker_drop(a->tracker, uuid);
    {
        g_autoptr(GError) e = NULL;
        if (!vn_instance_store_forget(a->store, uuid, &e))
            vn_warn_error(&e, "forgetting instance %s", uuid);
    }
    vn_agent_capacity_changed(a);
}

static gboolean make_blank_disks(VnAgent *a, const VnInstanceRecord *inst, json_object *disks,
                                 GError **error)
{
    g_autofree char *dir = vn_agent_instance_dir(a, inst->uuid);

    json_object_object_foreach(disks, name, size)
    {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        if ((strcmp(name, VN_GUEST_EPHEMERAL_DISK) == 0 || strcmp(name, VN_GUEST_SWAP_DISK) == 0) &&
            !vn_disk_create_blank(path, (guint64)json_object_get_int64(size), NULL, error))
            return FALSE;
    }
    return TRUE;
}

/* The disks of an arriving guest whose storage is not shared, in its prepared folder.
 * The cached base is held only while the overlays are made (as a build holds it): from
 * then on the record and the recorded backing keep it. */
static gboolean make_dest_disks(VnAgent *a, const VnInstanceRecord *inst, json_object *disks,
                                GError **error)
{
    g_autofree char *dir = vn_agent_instance_dir(a, inst->uuid);
    g_autofree char *base = NULL;
    VnImageSource src = { inst->image.id, inst->image.url, inst->image.sha256,
                          inst->image.disk_format, (guint64)inst->image.size };
    gboolean ok = TRUE;

    if (!inst->image.id) /* boots from a volume: only the local extra disks */
        return make_blank_disks(a, inst, disks, error);
    base = vn_image_cache_acquire(a->images, &src, NULL, NULL, NULL, error);
    if (!base)
        return FALSE;
    json_object_object_foreach(disks, name, size)
    {
        g_autofree char *path = g_build_filename(dir, name, NULL);
        guint64 bytes = (guint64)json_object_get_int64(size);
        if (strcmp(name, VN_GUEST_ROOT_DISK) == 0)
            ok = vn_disk_create_overlay(path, base, inst->image.disk_format, bytes, NULL, error) &&
                 vn_guest_record_backing(a, inst->uuid, base, error);
        else if (strcmp(name, VN_GUEST_EPHEMERAL_DISK) == 0 ||
                 strcmp(name, VN_GUEST_SWAP_DISK) == 0)
            ok = vn_disk_create_blank(path, bytes, NULL, error);
        if (!ok)
            break;
    }
    vn_image_cache_release(a->images, inst->image.id);
    return ok;
}

gboolean vn_op_pre_live_migration(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    json_object *md = op->req->migrate_data;
    g_autoptr(VnInstanceRecord) inst =
        vn_host_check_enabled(a, "incoming migrations", error) ? md_instance(md, error) : NULL;
    gboolean shared = vn_md_bool(md, "is_shared_instance_path");
    json_object *disks = md_get(md, "disks");
    g_autoptr(GError) err = NULL;
    json_object *out;
    int uid = 0;

    if (!inst)
        return FALSE;
    /* the guest's networks must exist here: checked before anything is made */
    if (!vn_ports_check(a, inst->ports, error) ||
        !vn_tracker_claim(a->tracker, inst->uuid, &inst->flavor, error))
        return FALSE;
    /* recorded now, as arriving (host: the source, task: migrating), so a restart here
     * knows the domain that libvirt may bring */
    if (!vn_instance_store_arrive(a->store, inst, &err)) {
        vn_tracker_drop(a->tracker, inst->uuid);
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    /* the guest's identity here first: its folder is made (or, on shared storage, handed
     * over) for it before any disk */
    if (cfg->per_guest_dac && a->dac_available) {
        /* on shared storage the guest keeps its identity: relabelling its files to another
         * uid here would take them from the source's QEMU before the switch-over */
        uid = shared && inst->guest_uid > 0
                  ? vn_instance_store_take_uid(a->store, inst->uuid, inst->guest_uid, &err)
                  : vn_instance_store_allocate_uid(a->store, inst->uuid, cfg->guest_uid_min,
                                                   cfg->guest_uid_max, &err);
        if (uid == 0) {
            undo_dest(a, inst->uuid, shared);
            g_propagate_error(error, g_steal_pointer(&err));
            return FALSE;
        }
    }
    guint plugged = 0, connected = 0;
    json_object *secrets = md_get(md, "volume_secrets");
    for (guint i = 0; i < inst->volumes->len; i++) {
        VnVolumeSpec *v = g_ptr_array_index(inst->volumes, i);
        json_object *pw = secrets ? vn_json_member(secrets, v->volume_id) : NULL;
        if (pw && json_object_is_type(pw, json_type_string))
            v->conn.auth_password = g_strdup(json_object_get_string(pw));
    }
    /* the volumes are connected here before the guest arrives (never copied: shared by
     * nature); the source disconnects them only after the switch-over */
    if (!vn_guest_prepare_dir(a, inst->uuid, uid, &err) ||
        (!shared && (!disks || !json_object_is_type(disks, json_type_object) ||
                     !make_dest_disks(a, inst, disks, &err))) ||
        !vn_ports_plug(a, inst->ports, &plugged, &err) ||
        !vn_vols_connect_all(a, inst->volumes, &connected, &err)) {
        if (!err)
            g_set_error(&err, VN_API_ERROR, VN_API_ERROR_INVALID, "migrate_data.disks: missing");
        undo_dest(a, inst->uuid, shared);
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    record_arrival(a->migrations, inst->uuid, vn_md_str(md, "migration_id"), op->req->source_host,
                   cfg->host, !shared);
    vn_agent_capacity_changed(a);
    out = json_object_new_object();
    json_object_object_add(out, "dest_guest_uid", json_object_new_int(uid));
    json_object_object_add(out, "dest_instances_path", json_object_new_string(cfg->instances_path));
    *result = out;
    return TRUE;
}

gboolean vn_op_post_live_migration_dest(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    const char *uuid = op->req->instance_uuid;
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(VnInstanceRecord) done = NULL;
    g_autofree char *labels = NULL;
    VnPowerState power = VN_POWER_NOSTATE;

    if (!rec || rec->task_state != VN_TASK_MIGRATING) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID_STATE,
                    "instance %s is not arriving on %s", uuid, cfg->host);
        return FALSE;
    }
    if (!vn_domain_power_state(a->virt, uuid, &power, error))
        return FALSE;
    labels = vn_guest_verify_confinement(a, rec, rec->guest_uid, error);
    if (!labels)
        return FALSE;
    if (!vn_guest_record_owner(a, uuid, error) ||
        !vn_instance_store_set_label(a->store, uuid, labels, error) ||
        !vn_instance_store_set_host(a->store, uuid, cfg->host, error) ||
        !vn_instance_store_end_task(a->store, uuid, VN_TASK_MIGRATING,
                                    power == VN_POWER_PAUSED ? VN_VM_PAUSED : VN_VM_ACTIVE, power,
                                    error))
        return FALSE;
    record_end(a->migrations, uuid, "completed", NULL);
    done = vn_instance_store_get(a->store, uuid);
    g_message("instance %s arrived from %s", uuid,
              op->req->source_host ? op->req->source_host : "?");
    vn_agent_notify_instance(a, "instance.live_migration_post_dest.end", done, NULL);
    vn_agent_capacity_changed(a);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}

gboolean vn_op_rollback_dest(VnOp *op, json_object **result, GError **error)
{
    json_object *md = op->req->migrate_data;
    /* files are removed only when the source said the storage is not shared */
    gboolean shared =
        !md_get(md, "is_shared_instance_path") || vn_md_bool(md, "is_shared_instance_path");

    undo_dest(op->agent, op->req->instance_uuid, shared);
    record_end(op->agent->migrations, op->req->instance_uuid, "cancelled",
               "rolled back by the source");
    *result = NULL;
    (void)error;
    return TRUE;
}

gboolean vn_op_migration_abort(VnOp *op, json_object **result, GError **error)
{
    *result = NULL;
    return vn_migrations_request_abort(op->agent->migrations, op->req->instance_uuid, error);
}

gboolean vn_op_migration_force_complete(VnOp *op, json_object **result, GError **error)
{
    *result = NULL;
    return vn_migrations_request_force(op->agent->migrations, op->req->instance_uuid, error);
}

gboolean vn_op_get_migration(VnOp *op, json_object **result, GError **error)
{
    *result = vn_migrations_describe(op->agent->migrations, op->req->instance_uuid);
    if (!*result) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND,
                    "no migration of instance %s is known on this host", op->req->instance_uuid);
        return FALSE;
    }
    return TRUE;
}
