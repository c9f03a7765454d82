/* agent/state/instance_store.c - instance records with compare-and-set changes (see
 * instance_store.h). */
#include <string.h>

#include "agent/state/instance_store.h"
#include "api/error.h"
#include "api/json.h"

/* A change is written to the journal's log under the lock, and the lock is left while the
 * log is flushed: the changes of other instances go on meanwhile and share the flush.
 * Until its flush ends the change waits in @pending, where the next change of the same
 * instance waits for it; only then does it become the record readers see. */
struct _VnInstanceStore {
    GMutex lock;
    GCond settled;                  /* a pending change ended (under lock) */
    VnJournal *journal;             /* immutable */
    char *host;                     /* immutable */
    GHashTable *records;            /* uuid -> VnInstanceRecord*: durable state; under lock */
    GHashTable *pending;            /* uuid -> VnInstanceRecord* in the log, waiting for its flush
                                     * (NULL: a removal); under lock */
    VnInstanceChangedFunc listener; /* under lock */
    gpointer listener_data;         /* under lock */
};

static gint64 now_s(void)
{
    return g_get_real_time() / G_USEC_PER_SEC;
}

VnInstanceStore *vn_instance_store_new(VnJournal *journal, const char *host, GError **error)
{
    g_autoptr(VnInstanceStore) s = g_new0(VnInstanceStore, 1);
    g_autoptr(GPtrArray) rows = NULL;

    g_mutex_init(&s->lock);
    g_cond_init(&s->settled);
    s->journal = journal;
    s->host = g_strdup(host);
    s->records = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                       (GDestroyNotify)vn_instance_record_free);
    s->pending = g_hash_table_new_full(g_str_hash, g_str_equal, g_free,
                                       (GDestroyNotify)vn_instance_record_free);
    rows = vn_journal_load_instances(journal, error);
    if (!rows)
        return NULL;
    for (guint i = 0; i < rows->len; i++) {
        g_autoptr(GError) err = NULL;
        g_autoptr(json_object) obj = json_tokener_parse(g_ptr_array_index(rows, i));
        VnInstanceRecord *rec = obj ? vn_instance_record_from_json(obj, &err) : NULL;
        if (!rec) {
            g_warning("journal: skipping an unreadable instance record: %s",
                      err ? err->message : "not JSON");
            continue;
        }
        g_hash_table_insert(s->records, g_strdup(rec->uuid), rec);
    }
    return g_steal_pointer(&s);
}

void vn_instance_store_free(VnInstanceStore *s)
{
    if (!s)
        return;
    g_hash_table_destroy(s->records);
    if (s->pending)
        g_hash_table_destroy(s->pending);
    g_cond_clear(&s->settled);
    g_mutex_clear(&s->lock);
    g_free(s->host);
    g_free(s);
}

void vn_instance_store_set_listener(VnInstanceStore *s, VnInstanceChangedFunc func,
                                    gpointer user_data)
{
    g_mutex_lock(&s->lock);
    s->listener = func;
    s->listener_data = user_data;
    g_mutex_unlock(&s->lock);
}

VnInstanceRecord *vn_instance_store_get(VnInstanceStore *s, const char *uuid)
{
    VnInstanceRecord *r;

    g_mutex_lock(&s->lock);
    r = g_hash_table_lookup(s->records, uuid);
    r = r ? vn_instance_record_copy(r) : NULL;
    g_mutex_unlock(&s->lock);
    return r;
}

gboolean vn_instance_record_in_task(const VnInstanceRecord *r)
{
    return r->vm_state == VN_VM_BUILDING || r->task_state != VN_TASK_NONE;
}

gboolean vn_instance_store_in_task(VnInstanceStore *s, const char *uuid)
{
    const VnInstanceRecord *r;
    gboolean in_task;

    g_mutex_lock(&s->lock);
    r = g_hash_table_lookup(s->records, uuid);
    in_task = r && vn_instance_record_in_task(r);
    g_mutex_unlock(&s->lock);
    return in_task;
}

/* Whether @label is one of the ';'-separated labels of @labels. */
static gboolean has_label(const char *labels, const char *label)
{
    gsize n = strlen(label);

    for (const char *p = labels; p; p = strchr(p, ';'), p = p ? p + 1 : NULL) {
        if (strncmp(p, label, n) == 0 && (p[n] == ';' || p[n] == '\0'))
            return TRUE;
    }
    return FALSE;
}

char *vn_instance_store_label_owner(VnInstanceStore *s, const char *uuid, const char *label)
{
    GHashTableIter it;
    gpointer k, v;
    char *owner = NULL;

    g_mutex_lock(&s->lock);
    g_hash_table_iter_init(&it, s->records);
    while (!owner && g_hash_table_iter_next(&it, &k, &v)) {
        const VnInstanceRecord *r = v;
        if (r->vm_state != VN_VM_DELETED && r->power_state == VN_POWER_RUNNING &&
            r->security_label && strcmp(r->uuid, uuid) != 0 && has_label(r->security_label, label))
            owner = g_strdup(r->uuid);
    }
    g_mutex_unlock(&s->lock);
    return owner;
}

static gint by_uuid(gconstpointer a, gconstpointer b)
{
    const VnInstanceRecord *x = *(VnInstanceRecord *const *)a;
    const VnInstanceRecord *y = *(VnInstanceRecord *const *)b;

    return strcmp(x->uuid, y->uuid);
}

/* Calls @func on every record (deleted ones too when @with_deleted) under the lock. */
static void visit(VnInstanceStore *s, gboolean with_deleted, VnInstanceVisitFunc func,
                  gpointer user_data)
{
    GHashTableIter it;
    gpointer k, v;

    g_mutex_lock(&s->lock);
    g_hash_table_iter_init(&it, s->records);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        const VnInstanceRecord *r = v;
        if (with_deleted || r->vm_state != VN_VM_DELETED)
            func(r, user_data);
    }
    g_mutex_unlock(&s->lock);
}

static void add_copy(const VnInstanceRecord *r, gpointer out)
{
    g_ptr_array_add(out, vn_instance_record_copy(r));
}

GPtrArray *vn_instance_store_list(VnInstanceStore *s, gboolean with_deleted)
{
    GPtrArray *out = g_ptr_array_new_with_free_func((GDestroyNotify)vn_instance_record_free);

    visit(s, with_deleted, add_copy, out);
    g_ptr_array_sort(out, by_uuid);
    return out;
}

void vn_instance_store_foreach(VnInstanceStore *s, VnInstanceVisitFunc func, gpointer user_data)
{
    visit(s, FALSE, func, user_data);
}

/* Waits (with the lock held) until no change of @uuid waits for its flush. */
static void settle_locked(VnInstanceStore *s, const char *uuid)
{
    while (g_hash_table_contains(s->pending, uuid))
        g_cond_wait(&s->settled, &s->lock);
}

static void notify(VnInstanceStore *s, VnInstanceRecord *copy)
{
    VnInstanceChangedFunc f;
    gpointer d;

    g_mutex_lock(&s->lock);
    f = s->listener;
    d = s->listener_data;
    g_mutex_unlock(&s->lock);
    if (f)
        f(copy, d);
    vn_instance_record_free(copy);
}

/* Called with the lock held (after settle_locked), which it releases: writes @rec (taken;
 * NULL removes the record of @uuid) to the journal's log, waits outside the lock until
 * the log is on disk, then makes it the record of its uuid and tells the listener.  On
 * failure the old record stays, so memory never shows what the journal's log does not
 * hold.  A change @in_memory (a new guest's build step) is not written: it is seen at
 * once, and the journal keeps the record as its last durable change left it. */
static gboolean commit_locked(VnInstanceStore *s, const char *uuid, VnInstanceRecord *rec,
                              gboolean in_memory, GError **error)
{
    g_autofree char *key = g_strdup(uuid);
    guint64 logged = 0;
    gboolean ok = TRUE;

    if (rec) {
        rec->updated_at = now_s();
        /* a clock-based generation stays ahead of anything an earlier life of this uuid
         * (or another host, before a migration) wrote */
        rec->generation = MAX(rec->generation + 1, g_get_real_time());
    }
    if (in_memory) {
        /* nothing waits in the log for this uuid (settle_locked): the map is up to date */
    } else if (rec) {
        g_autoptr(json_object) obj = NULL;
        g_autofree char *text = NULL;
        obj = vn_instance_record_to_json(rec);
        text = vn_json_to_string(obj);
        ok = vn_journal_save_instance(s->journal, key, text, &logged, error);
    } else {
        ok = vn_journal_delete_instance(s->journal, key, &logged, error);
    }
    if (!ok) {
        vn_instance_record_free(rec);
        g_mutex_unlock(&s->lock);
        return FALSE;
    }
    if (!in_memory) {
        g_hash_table_insert(s->pending, g_strdup(key), rec);
        g_mutex_unlock(&s->lock);

        ok = vn_journal_wait_logged(s->journal, logged, 1, error);

        g_mutex_lock(&s->lock);
        gpointer pending_key = NULL;
        g_hash_table_steal_extended(s->pending, key, &pending_key, NULL); /* @rec stays ours */
        g_free(pending_key);
        g_cond_broadcast(&s->settled);
    }
    if (!ok) {
        g_mutex_unlock(&s->lock);
        vn_instance_record_free(rec);
        return FALSE;
    }
    if (!rec) {
        g_hash_table_remove(s->records, key);
        g_mutex_unlock(&s->lock);
        return TRUE;
    }
    g_hash_table_replace(s->records, g_strdup(key), rec);
    VnInstanceRecord *copy = vn_instance_record_copy(rec);
    g_mutex_unlock(&s->lock);
    notify(s, copy);
    return TRUE;
}

typedef gboolean (*Change)(VnInstanceRecord *rec, gpointer data, GError **error);

/* Applies @change to a copy of the record of @uuid; when it agrees and the copy is
 * persisted, the copy replaces the record and listeners hear of it. */
static gboolean update(VnInstanceStore *s, const char *uuid, Change change, gpointer data,
                       gboolean in_memory, GError **error)
{
    VnInstanceRecord *cur, *next;

    g_mutex_lock(&s->lock);
    settle_locked(s, uuid);
    cur = g_hash_table_lookup(s->records, uuid);
    if (!cur) {
        g_mutex_unlock(&s->lock);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND, "instance %s is not on this host",
                    uuid);
        return FALSE;
    }
    next = vn_instance_record_copy(cur);
    if (!change(next, data, error)) {
        vn_instance_record_free(next);
        g_mutex_unlock(&s->lock);
        return FALSE;
    }
    return commit_locked(s, uuid, next, in_memory, error);
}

gboolean vn_instance_store_create(VnInstanceStore *s, const VnInstanceRecord *spec,
                                  const char *request_id, GError **error)
{
    VnInstanceRecord *cur, *rec;

    g_mutex_lock(&s->lock);
    settle_locked(s, spec->uuid);
    cur = g_hash_table_lookup(s->records, spec->uuid);
    if (cur && cur->vm_state != VN_VM_DELETED) {
        g_mutex_unlock(&s->lock);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_EXISTS,
                    "instance %s already exists on this host (vm_state %s)", spec->uuid,
                    vn_vm_state_name(cur->vm_state));
        return FALSE;
    }
    rec = vn_instance_record_copy(spec);
    for (guint i = 0; i < rec->volumes->len; i++) {
        VnVolumeSpec *v = g_ptr_array_index(rec->volumes, i);
        g_clear_pointer(&v->conn.auth_password, g_free); /* never in a record */
    }
    g_free(rec->host);
    rec->host = g_strdup(s->host);
    rec->vm_state = VN_VM_BUILDING;
    rec->task_state = VN_TASK_SCHEDULING;
    rec->power_state = VN_POWER_NOSTATE;
    rec->created_at = now_s();
    rec->launched_at = rec->terminated_at = 0;
    rec->progress = 0;
    g_clear_pointer(&rec->fault_class, g_free);
    g_clear_pointer(&rec->fault_message, g_free);
    rec->fault_at = 0;
    rec->guest_uid = 0;
    g_clear_pointer(&rec->security_label, g_free);
    g_free(rec->request_id);
    rec->request_id = g_strdup(request_id);
    return commit_locked(s, spec->uuid, rec, FALSE, error);
}

gboolean vn_instance_store_arrive(VnInstanceStore *s, const VnInstanceRecord *in, GError **error)
{
    return vn_instance_store_take_over(s, in, VN_TASK_MIGRATING, FALSE, error);
}

gboolean vn_instance_store_take_over(VnInstanceStore *s, const VnInstanceRecord *in,
                                     VnTaskState task, gboolean over_error, GError **error)
{
    VnInstanceRecord *cur, *rec;

    g_mutex_lock(&s->lock);
    settle_locked(s, in->uuid);
    cur = g_hash_table_lookup(s->records, in->uuid);
    if (cur && cur->vm_state != VN_VM_DELETED &&
        !(over_error && cur->vm_state == VN_VM_ERROR && cur->task_state == VN_TASK_NONE)) {
        g_mutex_unlock(&s->lock);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_EXISTS,
                    "instance %s already exists on this host (vm_state %s, task_state %s): "
                    "it cannot arrive here again",
                    in->uuid, vn_vm_state_name(cur->vm_state),
                    cur->task_state ? vn_task_state_name(cur->task_state) : "none");
        return FALSE;
    }
    rec = vn_instance_record_copy(in);
    /* what only this host may say is not taken from the peer */
    rec->task_state = task;
    rec->guest_uid = 0;
    g_clear_pointer(&rec->security_label, g_free);
    rec->progress = 0;
    return commit_locked(s, in->uuid, rec, FALSE, error);
}

typedef struct {
    const VnVmState *allowed;
    VnTaskState task;
    const char *request_id;
} BeginArgs;

static gboolean vm_allowed(VnVmState vm, const VnVmState *allowed)
{
    for (const VnVmState *a = allowed; *a != VN_VM_LAST; a++) {
        if (*a == vm)
            return TRUE;
    }
    return FALSE;
}

static gboolean change_begin(VnInstanceRecord *r, gpointer data, GError **error)
{
    BeginArgs *a = data;

    if (r->task_state != VN_TASK_NONE) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID_STATE,
                    "instance %s is busy: task_state %s", r->uuid,
                    vn_task_state_name(r->task_state));
        return FALSE;
    }
    if (!vm_allowed(r->vm_state, a->allowed)) {
        g_set_error(error, VN_API_ERROR,
                    r->vm_state == VN_VM_DELETED ? VN_API_ERROR_NOT_FOUND
                                                 : VN_API_ERROR_INVALID_STATE,
                    "instance %s is %s: cannot start %s", r->uuid, vn_vm_state_name(r->vm_state),
                    vn_task_state_name(a->task));
        return FALSE;
    }
    r->task_state = a->task;
    r->progress = 0;
    if (a->request_id) {
        g_free(r->request_id);
        r->request_id = g_strdup(a->request_id);
    }
    return TRUE;
}

gboolean vn_instance_store_begin_task(VnInstanceStore *s, const char *uuid,
                                      const VnVmState *allowed, VnTaskState task,
                                      const char *request_id, GError **error)
{
    BeginArgs a = { allowed, task, request_id };

    return update(s, uuid, change_begin, &a, FALSE, error);
}

/* Compare-and-set: the operation that set @task must still hold the record. */
static gboolean task_is(const VnInstanceRecord *r, VnTaskState task, GError **error)
{
    const char *now = vn_task_state_name(r->task_state);
    const char *want = vn_task_state_name(task);

    if (r->task_state == task)
        return TRUE;
    g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID_STATE,
                "instance %s changed meanwhile: task_state %s, expected %s", r->uuid,
                now ? now : "none", want ? want : "none");
    return FALSE;
}

typedef struct {
    VnTaskState from, to;
} NextArgs;

static gboolean change_next(VnInstanceRecord *r, gpointer data, GError **error)
{
    NextArgs *a = data;

    if (!task_is(r, a->from, error))
        return FALSE;
    r->task_state = a->to;
    return TRUE;
}

gboolean vn_instance_store_next_task(VnInstanceStore *s, const char *uuid, VnTaskState from,
                                     VnTaskState to, GError **error)
{
    NextArgs a = { from, to };

    return update(s, uuid, change_next, &a, FALSE, error);
}

gboolean vn_instance_store_build_step(VnInstanceStore *s, const char *uuid, VnTaskState from,
                                      VnTaskState to, GError **error)
{
    NextArgs a = { from, to };

    return update(s, uuid, change_next, &a, TRUE, error);
}

typedef struct {
    VnTaskState task;
    VnVmState vm;
    int power;
} EndArgs;

static gboolean change_end(VnInstanceRecord *r, gpointer data, GError **error)
{
    EndArgs *a = data;

    if (!task_is(r, a->task, error))
        return FALSE;
    r->vm_state = a->vm;
    r->task_state = VN_TASK_NONE;
    r->progress = 0;
    if (a->power >= 0)
        r->power_state = (VnPowerState)a->power;
    return TRUE;
}

gboolean vn_instance_store_end_task(VnInstanceStore *s, const char *uuid, VnTaskState task,
                                    VnVmState vm, int power, GError **error)
{
    EndArgs a = { task, vm, power };

    return update(s, uuid, change_end, &a, FALSE, error);
}

typedef struct {
    const char *cls;
    const char *msg;
} FaultArgs;

static gboolean change_error(VnInstanceRecord *r, gpointer data, GError **error)
{
    FaultArgs *a = data;

    r->vm_state = VN_VM_ERROR;
    r->task_state = VN_TASK_NONE;
    r->progress = 0;
    g_free(r->fault_class);
    g_free(r->fault_message);
    r->fault_class = g_strdup(a->cls);
    /* faults go out as JSON strings: keep them on one line */
    r->fault_message = g_strdup(a->msg);
    for (char *p = r->fault_message; p && *p; p++) {
        if ((unsigned char)*p < 0x20)
            *p = ' ';
    }
    r->fault_at = now_s();
    return TRUE;
}

gboolean vn_instance_store_set_error(VnInstanceStore *s, const char *uuid, const char *fault_class,
                                     const char *fault_message, GError **error)
{
    FaultArgs a = { fault_class, fault_message };

    return update(s, uuid, change_error, &a, FALSE, error);
}

typedef struct {
    VnPowerState power;
    int vm;
} PowerArgs;

static gboolean change_power(VnInstanceRecord *r, gpointer data, GError **error)
{
    PowerArgs *a = data;

    if (r->power_state == a->power && (a->vm < 0 || r->vm_state == (VnVmState)a->vm)) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_EXISTS, "unchanged");
        return FALSE;
    }
    r->power_state = a->power;
    if (a->vm >= 0)
        r->vm_state = (VnVmState)a->vm;
    return TRUE;
}

gboolean vn_instance_store_set_power(VnInstanceStore *s, const char *uuid, VnPowerState power,
                                     int vm, GError **error)
{
    PowerArgs a = { power, vm };
    g_autoptr(GError) err = NULL;

    if (update(s, uuid, change_power, &a, FALSE, &err))
        return TRUE;
    if (g_error_matches(err, VN_API_ERROR, VN_API_ERROR_EXISTS))
        return TRUE; /* nothing to change: no write, no report */
    g_propagate_error(error, g_steal_pointer(&err));
    return FALSE;
}

/* A change made by a background sync from an earlier read: it applies only while the
 * record is still the one read and no operation holds it. */
typedef struct {
    gint64 seen;
    Change inner;
    gpointer inner_data;
} GuardArgs;

static gboolean change_guarded(VnInstanceRecord *r, gpointer data, GError **error)
{
    GuardArgs *g = data;

    if (r->generation != g->seen || r->task_state != VN_TASK_NONE) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID_STATE,
                    "instance %s changed since it was read (an operation took it)", r->uuid);
        return FALSE;
    }
    return g->inner(r, g->inner_data, error);
}

gboolean vn_instance_store_sync_power(VnInstanceStore *s, const char *uuid, gint64 seen,
                                      VnPowerState power, int vm, GError **error)
{
    PowerArgs a = { power, vm };
    GuardArgs g = { seen, change_power, &a };
    g_autoptr(GError) err = NULL;

    if (update(s, uuid, change_guarded, &g, FALSE, &err))
        return TRUE;
    if (g_error_matches(err, VN_API_ERROR, VN_API_ERROR_EXISTS))
        return TRUE;
    g_propagate_error(error, g_steal_pointer(&err));
    return FALSE;
}

gboolean vn_instance_store_sync_error(VnInstanceStore *s, const char *uuid, gint64 seen,
                                      const char *fault_class, const char *fault_message,
                                      GError **error)
{
    FaultArgs a = { fault_class, fault_message };
    GuardArgs g = { seen, change_error, &a };

    return update(s, uuid, change_guarded, &g, FALSE, error);
}

gboolean vn_instance_store_sync_begin(VnInstanceStore *s, const char *uuid, gint64 seen,
                                      VnTaskState task, GError **error)
{
    static const VnVmState any[] = { VN_VM_ACTIVE,    VN_VM_STOPPED, VN_VM_PAUSED,
                                     VN_VM_SUSPENDED, VN_VM_ERROR,   VN_VM_LAST };
    BeginArgs a = { any, task, NULL };
    GuardArgs g = { seen, change_begin, &a };

    return update(s, uuid, change_guarded, &g, FALSE, error);
}

static gboolean change_ports(VnInstanceRecord *r, gpointer data, GError **error)
{
    const GPtrArray *ports = data;

    if (!task_is(r, VN_TASK_NETWORKING, error))
        return FALSE;
    g_ptr_array_set_size(r->ports, 0);
    for (guint i = 0; i < ports->len; i++)
        g_ptr_array_add(r->ports, vn_port_spec_copy(g_ptr_array_index(ports, i)));
    return TRUE;
}

gboolean vn_instance_store_set_ports(VnInstanceStore *s, const char *uuid, const GPtrArray *ports,
                                     GError **error)
{
    return update(s, uuid, change_ports, (gpointer)ports, FALSE, error);
}

static gboolean change_volumes(VnInstanceRecord *r, gpointer data, GError **error)
{
    const GPtrArray *vols = data;

    if (!task_is(r, VN_TASK_BLOCK_DEVICE_MAPPING, error))
        return FALSE;
    g_ptr_array_set_size(r->volumes, 0);
    for (guint i = 0; i < vols->len; i++) {
        VnVolumeSpec *v = vn_volume_spec_copy(g_ptr_array_index(vols, i));
        /* a record never holds a secret, not even in memory */
        g_clear_pointer(&v->conn.auth_password, g_free);
        g_ptr_array_add(r->volumes, v);
    }
    return TRUE;
}

gboolean vn_instance_store_set_volumes(VnInstanceStore *s, const char *uuid, const GPtrArray *vols,
                                       GError **error)
{
    return update(s, uuid, change_volumes, (gpointer)vols, FALSE, error);
}

static gboolean change_clear_task(VnInstanceRecord *r, gpointer data, GError **error)
{
    r->task_state = VN_TASK_NONE;
    r->progress = 0;
    return TRUE;
}

gboolean vn_instance_store_clear_task(VnInstanceStore *s, const char *uuid, GError **error)
{
    return update(s, uuid, change_clear_task, NULL, FALSE, error);
}

typedef struct {
    VnTaskState task;
    const char *label;
} LaunchArgs;

static gboolean change_launched(VnInstanceRecord *r, gpointer data, GError **error)
{
    const LaunchArgs *l = data;
    EndArgs active = { l->task, VN_VM_ACTIVE, VN_POWER_RUNNING };

    if (!change_end(r, &active, error))
        return FALSE;
    r->launched_at = now_s();
    g_free(r->security_label);
    r->security_label = g_strdup(l->label);
    g_clear_pointer(&r->fault_class, g_free);
    g_clear_pointer(&r->fault_message, g_free);
    r->fault_at = 0;
    return TRUE;
}

gboolean vn_instance_store_launched(VnInstanceStore *s, const char *uuid, VnTaskState task,
                                    const char *security_label, GError **error)
{
    LaunchArgs l = { task, security_label };

    return update(s, uuid, change_launched, &l, FALSE, error);
}

static gboolean change_image(VnInstanceRecord *r, gpointer data, GError **error)
{
    (void)error;
    vn_image_ref_clear(&r->image);
    vn_image_ref_copy(&r->image, data);
    g_clear_pointer(&r->image.download_url, g_free); /* credentials never in a record */
    return TRUE;
}

static gboolean change_flavor(VnInstanceRecord *r, gpointer data, GError **error)
{
    (void)error;
    vn_flavor_clear(&r->flavor);
    vn_flavor_copy(&r->flavor, data);
    return TRUE;
}

gboolean vn_instance_store_set_flavor(VnInstanceStore *s, const char *uuid, const VnFlavor *flavor,
                                      GError **error)
{
    return update(s, uuid, change_flavor, (gpointer)flavor, FALSE, error);
}

gboolean vn_instance_store_set_image(VnInstanceStore *s, const char *uuid, const VnImageRef *image,
                                     GError **error)
{
    return update(s, uuid, change_image, (gpointer)image, FALSE, error);
}

/* A string field of the record (at @offset) and its new value. */
typedef struct {
    gsize offset;
    const char *value;
} StringChange;

static gboolean change_string(VnInstanceRecord *r, gpointer data, GError **error)
{
    const StringChange *c = data;
    char **field = G_STRUCT_MEMBER_P(r, c->offset);

    (void)error;
    g_free(*field);
    *field = g_strdup(c->value);
    return TRUE;
}

gboolean vn_instance_store_set_label(VnInstanceStore *s, const char *uuid, const char *label,
                                     GError **error)
{
    StringChange c = { G_STRUCT_OFFSET(VnInstanceRecord, security_label), label };

    return update(s, uuid, change_string, &c, FALSE, error);
}

gboolean vn_instance_store_set_host(VnInstanceStore *s, const char *uuid, const char *host,
                                    GError **error)
{
    StringChange c = { G_STRUCT_OFFSET(VnInstanceRecord, host), host };

    return update(s, uuid, change_string, &c, FALSE, error);
}

static gboolean change_deleted(VnInstanceRecord *r, gpointer data, GError **error)
{
    r->vm_state = VN_VM_DELETED;
    r->task_state = VN_TASK_NONE;
    r->power_state = VN_POWER_NOSTATE;
    r->terminated_at = now_s();
    r->progress = 0;
    return TRUE;
}

gboolean vn_instance_store_mark_deleted(VnInstanceStore *s, const char *uuid, GError **error)
{
    return update(s, uuid, change_deleted, NULL, FALSE, error);
}

gboolean vn_instance_store_forget(VnInstanceStore *s, const char *uuid, GError **error)
{
    g_mutex_lock(&s->lock);
    settle_locked(s, uuid);
    return commit_locked(s, uuid, NULL, FALSE, error);
}

void vn_instance_store_set_progress(VnInstanceStore *s, const char *uuid, int percent)
{
    VnInstanceRecord *r;

    g_mutex_lock(&s->lock);
    r = g_hash_table_lookup(s->records, uuid);
    if (r)
        r->progress = CLAMP(percent, 0, 100);
    r = g_hash_table_lookup(s->pending, uuid); /* else the change would take it back */
    if (r)
        r->progress = CLAMP(percent, 0, 100);
    g_mutex_unlock(&s->lock);
}

typedef struct {
    VnInstanceStore *store;
    int min, max;
    int uid;
    int exact; /* > 0: this uid or none */
} UidArgs;

/* Runs under the store's lock (inside update), and sees the changes still waiting for
 * their flush, so two builds never get the same uid. */
static gboolean change_uid(VnInstanceRecord *r, gpointer data, GError **error)
{
    UidArgs *a = data;
    g_autoptr(GHashTable) used = g_hash_table_new(g_direct_hash, g_direct_equal);
    GHashTableIter it;
    gpointer k, v;

    if (!a->exact && r->guest_uid >= a->min && r->guest_uid <= a->max) {
        a->uid = r->guest_uid;
        return TRUE;
    }
    /* the records, and the changes still waiting for their flush */
    GHashTable *tables[] = { a->store->records, a->store->pending };
    for (guint t = 0; t < G_N_ELEMENTS(tables); t++) {
        g_hash_table_iter_init(&it, tables[t]);
        while (g_hash_table_iter_next(&it, &k, &v)) {
            VnInstanceRecord *o = v;
            if (o && o->vm_state != VN_VM_DELETED && o->guest_uid > 0 &&
                strcmp(o->uuid, r->uuid) != 0)
                g_hash_table_add(used, GINT_TO_POINTER(o->guest_uid));
        }
    }
    if (a->exact) {
        if (g_hash_table_contains(used, GINT_TO_POINTER(a->exact))) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INSUFFICIENT_RESOURCES,
                        "guest uid %d is in use on this host by another instance", a->exact);
            return FALSE;
        }
        a->uid = r->guest_uid = a->exact;
        return TRUE;
    }
    for (int u = a->min; u <= a->max; u++) {
        if (!g_hash_table_contains(used, GINT_TO_POINTER(u))) {
            a->uid = r->guest_uid = u;
            return TRUE;
        }
    }
    g_set_error(error, VN_API_ERROR, VN_API_ERROR_INSUFFICIENT_RESOURCES,
                "no free guest uid in [%d, %d]", a->min, a->max);
    return FALSE;
}

int vn_instance_store_allocate_uid(VnInstanceStore *s, const char *uuid, int min, int max,
                                   GError **error)
{
    UidArgs a = { s, min, max, 0, 0 };

    return update(s, uuid, change_uid, &a, FALSE, error) ? a.uid : 0;
}

int vn_instance_store_take_uid(VnInstanceStore *s, const char *uuid, int uid, GError **error)
{
    UidArgs a = { s, uid, uid, 0, uid };

    return update(s, uuid, change_uid, &a, FALSE, error) ? a.uid : 0;
}

guint vn_instance_store_purge_deleted(VnInstanceStore *s, gint64 before)
{
    g_autoptr(GPtrArray) gone = g_ptr_array_new_with_free_func(g_free);
    GHashTableIter it;
    gpointer k, v;

    g_mutex_lock(&s->lock);
    g_hash_table_iter_init(&it, s->records);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        VnInstanceRecord *r = v;
        if (r->vm_state == VN_VM_DELETED && r->terminated_at && r->terminated_at < before)
            g_ptr_array_add(gone, g_strdup(k));
    }
    g_mutex_unlock(&s->lock);
    for (guint i = 0; i < gone->len; i++)
        vn_instance_store_forget(s, g_ptr_array_index(gone, i), NULL);
    return gone->len;
}
