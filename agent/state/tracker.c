/* agent/state/tracker.c - host resources, claims and the capacity row (see tracker.h). */
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <json-c/json.h>

#include "agent/state/tracker.h"
#include "agent/virt/host.h"
#include "api/error.h"
#include "api/json.h"
#include "storage/disk.h"

typedef struct {
    int vcpus;
    gint64 memory_mb;
    gint64 disk_gb;
} Allocation;

/* A disk's virtual size as read from its header, kept while the file is the same one,
 * unchanged since (a resize rewrites the header, and so the time of the last change). */
typedef struct {
    dev_t dev;
    ino_t ino;
    gint64 mtime_ns;
    guint64 virtual_size; /* 0: not a disk image */
} SizeSeen;

struct _VnTracker {
    GMutex lock;
    char *host;
    char *instances_path;
    VnInstanceStore *store;
    VnHostInventory inv;
    GHashTable *alloc; /* uuid -> Allocation* */
    double cpu_ratio, ram_ratio, disk_ratio;
    int reserved_cpus;
    gint64 reserved_mem_mb;
    gint64 reserved_disk_mb;
    guint64 cache_bytes;
    int running_ops;
    guint64 failed_builds;
    char **storage_degraded; /* health keys of the volume storage that fails its probe */

    gint64 remeasure_us; /* under lock: a guest's disks unchanged in its record are
                          * measured again after this long (half the report interval) */

    GMutex guests_lock; /* guests; held through one pass over the disks */
    GHashTable *guests; /* uuid -> Guest*: each guest's disks as last measured */
};

/* What a guest's disks may still grow by, as measured at measured_at (monotonic µs) for
 * the record of that generation. */
typedef struct {
    gint64 generation;
    gint64 measured_at;
    guint64 growth;
    GHashTable *disks; /* file name -> SizeSeen* */
} Guest;

static void guest_free(gpointer p)
{
    Guest *g = p;

    g_hash_table_destroy(g->disks);
    g_free(g);
}

static void inventory_clear(VnHostInventory *i)
{
    g_free(i->hypervisor_type);
    g_free(i->hypervisor_hostname);
    g_free(i->cpu_info);
    memset(i, 0, sizeof(*i));
}

VnTracker *vn_tracker_new(const char *host, const char *instances_path, VnInstanceStore *store)
{
    VnTracker *t = g_new0(VnTracker, 1);

    g_mutex_init(&t->lock);
    t->host = g_strdup(host);
    t->instances_path = g_strdup(instances_path);
    t->store = store;
    t->alloc = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    g_mutex_init(&t->guests_lock);
    t->guests = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, guest_free);
    t->cpu_ratio = 4.0;
    t->ram_ratio = 1.0;
    t->disk_ratio = 1.0;
    t->reserved_mem_mb = 512;
    return t;
}

void vn_tracker_free(VnTracker *t)
{
    if (!t)
        return;
    inventory_clear(&t->inv);
    g_hash_table_destroy(t->alloc);
    g_hash_table_destroy(t->guests);
    g_mutex_clear(&t->guests_lock);
    g_mutex_clear(&t->lock);
    g_free(t->host);
    g_free(t->instances_path);
    g_strfreev(t->storage_degraded);
    g_free(t);
}

void vn_tracker_set_config(VnTracker *t, const VnConfig *cfg)
{
    g_mutex_lock(&t->lock);
    t->cpu_ratio = cfg->cpu_allocation_ratio;
    t->ram_ratio = cfg->ram_allocation_ratio;
    t->disk_ratio = cfg->disk_allocation_ratio;
    t->reserved_cpus = cfg->reserved_host_cpus;
    t->reserved_mem_mb = cfg->reserved_host_memory_mb;
    t->reserved_disk_mb = cfg->reserved_host_disk_mb;
    t->remeasure_us = (gint64)cfg->report_interval * G_USEC_PER_SEC / 2;
    g_mutex_unlock(&t->lock);
}

void vn_tracker_set_inventory(VnTracker *t, const VnHostInventory *inv)
{
    g_mutex_lock(&t->lock);
    inventory_clear(&t->inv);
    t->inv.hypervisor_type = g_strdup(inv->hypervisor_type);
    t->inv.hypervisor_version = inv->hypervisor_version;
    t->inv.hypervisor_hostname = g_strdup(inv->hypervisor_hostname);
    t->inv.cpu_info = g_strdup(inv->cpu_info);
    t->inv.vcpus = inv->vcpus;
    t->inv.memory_mb = inv->memory_mb;
    g_mutex_unlock(&t->lock);
}

gboolean vn_tracker_refresh(VnTracker *t, VnVirtConn *virt, GError **error)
{
    g_autoptr(VnHostFacts) f = vn_host_facts_read(virt, error);
    g_autofree char *cpu = NULL;

    if (!f)
        return FALSE;
    cpu = vn_host_facts_cpu_info_json(f);
    VnHostInventory inv = { f->hypervisor_type, f->hypervisor_version, f->hostname, cpu, f->cpus,
                            f->memory_mb };
    vn_tracker_set_inventory(t, &inv);
    return TRUE;
}

static Allocation *allocation_of(const VnFlavor *f)
{
    Allocation *a = g_new0(Allocation, 1);

    a->vcpus = f->vcpus;
    a->memory_mb = f->memory_mb;
    a->disk_gb = (gint64)f->root_gb + f->ephemeral_gb + (f->swap_mb + 1023) / 1024;
    return a;
}

static gboolean holds_resources(const VnInstanceRecord *r)
{
    return r->vm_state != VN_VM_DELETED && r->vm_state != VN_VM_ERROR;
}

void vn_tracker_load(VnTracker *t)
{
    g_autoptr(GPtrArray) recs = vn_instance_store_list(t->store, FALSE);

    g_mutex_lock(&t->lock);
    g_hash_table_remove_all(t->alloc);
    for (guint i = 0; i < recs->len; i++) {
        VnInstanceRecord *r = g_ptr_array_index(recs, i);
        if (holds_resources(r))
            g_hash_table_insert(t->alloc, g_strdup(r->uuid), allocation_of(&r->flavor));
    }
    g_mutex_unlock(&t->lock);
}

gboolean vn_tracker_fits(double total, double reserved, double ratio, double used, double req)
{
    return used + req <= (total - reserved) * ratio + 1e-9;
}

/* Totals of all allocations except @skip (called with the lock held). */
static Allocation used_locked(VnTracker *t, const char *skip)
{
    Allocation sum = { 0 };
    GHashTableIter it;
    gpointer k, v;

    g_hash_table_iter_init(&it, t->alloc);
    while (g_hash_table_iter_next(&it, &k, &v)) {
        Allocation *a = v;
        if (skip && strcmp(k, skip) == 0)
            continue;
        sum.vcpus += a->vcpus;
        sum.memory_mb += a->memory_mb;
        sum.disk_gb += a->disk_gb;
    }
    return sum;
}

static gint64 disk_total_gb(const char *path)
{
    struct statvfs st;

    if (statvfs(path, &st) < 0)
        return 0;
    return (gint64)((guint64)st.f_frsize * st.f_blocks / (G_GUINT64_CONSTANT(1) << 30));
}

static gboolean claim(VnTracker *t, const char *uuid, const VnFlavor *flavor, gboolean record,
                      GError **error)
{
    g_autofree Allocation *req = allocation_of(flavor);
    gint64 disk_gb = disk_total_gb(t->instances_path);
    gboolean ok = TRUE;
    GString *why = g_string_new(NULL);

    g_mutex_lock(&t->lock);
    Allocation used = used_locked(t, uuid);
    if (t->inv.vcpus <= 0 || t->inv.memory_mb <= 0) {
        g_string_append(why, "the host's inventory is not known yet");
        ok = FALSE;
    }
    if (ok &&
        !vn_tracker_fits(t->inv.vcpus, t->reserved_cpus, t->cpu_ratio, used.vcpus, req->vcpus)) {
        g_string_append_printf(why, "vcpus: %d requested, %d of %.0f free; ", req->vcpus,
                               (int)((t->inv.vcpus - t->reserved_cpus) * t->cpu_ratio) - used.vcpus,
                               (t->inv.vcpus - t->reserved_cpus) * t->cpu_ratio);
        ok = FALSE;
    }
    if (t->inv.memory_mb > 0 &&
        !vn_tracker_fits((double)t->inv.memory_mb, (double)t->reserved_mem_mb, t->ram_ratio,
                         (double)used.memory_mb, (double)req->memory_mb)) {
        g_string_append_printf(
            why, "memory: %" G_GINT64_FORMAT " MiB requested, %.0f MiB free; ", req->memory_mb,
            (t->inv.memory_mb - t->reserved_mem_mb) * t->ram_ratio - used.memory_mb);
        ok = FALSE;
    }
    if (disk_gb > 0 &&
        !vn_tracker_fits((double)disk_gb, t->reserved_disk_mb / 1024.0, t->disk_ratio,
                         (double)used.disk_gb, (double)req->disk_gb)) {
        g_string_append_printf(
            why, "disk: %" G_GINT64_FORMAT " GiB requested, %.0f GiB free; ", req->disk_gb,
            (disk_gb - t->reserved_disk_mb / 1024.0) * t->disk_ratio - used.disk_gb);
        ok = FALSE;
    }
    if (ok && record)
        g_hash_table_replace(t->alloc, g_strdup(uuid), g_steal_pointer(&req));
    g_mutex_unlock(&t->lock);
    if (!ok) {
        if (why->len > 2 && why->str[why->len - 2] == ';')
            g_string_truncate(why, why->len - 2);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INSUFFICIENT_RESOURCES,
                    "insufficient resources on host %s: %s", t->host, why->str);
    }
    g_string_free(why, TRUE);
    return ok;
}

gboolean vn_tracker_claim(VnTracker *t, const char *uuid, const VnFlavor *flavor, GError **error)
{
    return claim(t, uuid, flavor, TRUE, error);
}

gboolean vn_tracker_check(VnTracker *t, const char *uuid, const VnFlavor *flavor, GError **error)
{
    return claim(t, uuid, flavor, FALSE, error);
}

void vn_tracker_drop(VnTracker *t, const char *uuid)
{
    g_mutex_lock(&t->lock);
    g_hash_table_remove(t->alloc, uuid);
    g_mutex_unlock(&t->lock);
}

void vn_tracker_set_cache_bytes(VnTracker *t, guint64 bytes)
{
    g_mutex_lock(&t->lock);
    t->cache_bytes = bytes;
    g_mutex_unlock(&t->lock);
}

void vn_tracker_set_workload(VnTracker *t, int running_ops, guint64 failed_builds)
{
    g_mutex_lock(&t->lock);
    t->running_ops = running_ops;
    t->failed_builds = failed_builds;
    g_mutex_unlock(&t->lock);
}

/* Measures the disks of @uuid: what they may still grow by, virtual size less what is
 * allocated.  A disk's header is read again only when the file changed since @was. */
static Guest *measure(VnTracker *t, const char *uuid, gint64 generation, const Guest *was)
{
    g_autofree char *dir = g_build_filename(t->instances_path, uuid, NULL);
    g_autoptr(GDir) d = g_dir_open(dir, 0, NULL);
    Guest *g = g_new0(Guest, 1);
    const char *name;

    g->generation = generation;
    g->measured_at = g_get_monotonic_time();
    g->disks = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
    while (d && (name = g_dir_read_name(d))) {
        struct stat st;
        if (!g_str_has_prefix(name, "disk"))
            continue;
        g_autofree char *p = g_build_filename(dir, name, NULL);
        if (stat(p, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        gint64 mtime_ns =
            (gint64)st.st_mtim.tv_sec * G_GINT64_CONSTANT(1000000000) + st.st_mtim.tv_nsec;
        SizeSeen *old = was ? g_hash_table_lookup(was->disks, name) : NULL;
        SizeSeen *now = g_new(SizeSeen, 1);
        *now = (SizeSeen){ st.st_dev, st.st_ino, mtime_ns, 0 };
        if (old && old->dev == now->dev && old->ino == now->ino && old->mtime_ns == mtime_ns)
            now->virtual_size = old->virtual_size;
        else if (!vn_disk_virtual_size(p, &now->virtual_size, NULL))
            now->virtual_size = 0;
        guint64 alloc = (guint64)st.st_blocks * 512;
        if (now->virtual_size > alloc)
            g->growth += now->virtual_size - alloc;
        g_hash_table_replace(g->disks, g_strdup(name), now);
    }
    return g;
}

/* What the instances' thin disks may still grow by.  A guest's disks are measured again
 * when its record changed since they were (a build, resize or delete changes both) or when
 * they were measured half a report interval ago or more: what its own writes add is seen
 * by the next periodic row, as before, and a row made for a change costs the guests that
 * changed rather than every guest of the host. */
static guint64 growth_bytes(VnTracker *t, GPtrArray *uuids, GArray *generations)
{
    GHashTable *seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, guest_free);
    guint64 total = 0;
    gint64 now = g_get_monotonic_time(), remeasure;

    g_mutex_lock(&t->lock);
    remeasure = t->remeasure_us;
    g_mutex_unlock(&t->lock);
    g_mutex_lock(&t->guests_lock);
    for (guint i = 0; i < uuids->len; i++) {
        const char *uuid = uuids->pdata[i];
        gint64 generation = g_array_index(generations, gint64, i);
        gpointer key = NULL, value = NULL;
        Guest *g;

        if (g_hash_table_steal_extended(t->guests, uuid, &key, &value)) {
            g_free(key);
            g = value;
            if (g->generation != generation || now - g->measured_at >= remeasure) {
                Guest *fresh = measure(t, uuid, generation, g);
                guest_free(g);
                g = fresh;
            }
        } else {
            g = measure(t, uuid, generation, NULL);
        }
        total += g->growth;
        g_hash_table_replace(seen, g_strdup(uuid), g);
    }
    /* the guests gone since are forgotten */
    g_hash_table_destroy(t->guests);
    t->guests = seen;
    g_mutex_unlock(&t->guests_lock);
    return total;
}

/* What the capacity row counts of the host's records, gathered in one pass under the
 * instance store's lock. */
typedef struct {
    int instances;
    int running;
    int vm[VN_VM_LAST];
    int task[VN_TASK_LAST];
    GHashTable *projects; /* project id -> count */
    GPtrArray *uuids;
    GArray *generations; /* gint64, the record's of each of uuids */
} Census;

static void census_add(const VnInstanceRecord *r, gpointer data)
{
    Census *c = data;
    const char *proj = r->project_id ? r->project_id : "";

    c->instances++;
    if (r->vm_state >= 0 && r->vm_state < VN_VM_LAST)
        c->vm[r->vm_state]++;
    if (r->task_state >= 0 && r->task_state < VN_TASK_LAST)
        c->task[r->task_state]++;
    if (r->power_state == VN_POWER_RUNNING)
        c->running++;
    g_hash_table_insert(
        c->projects, g_strdup(proj),
        GINT_TO_POINTER(GPOINTER_TO_INT(g_hash_table_lookup(c->projects, proj)) + 1));
    g_ptr_array_add(c->uuids, g_strdup(r->uuid));
    g_array_append_val(c->generations, r->generation);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void stats_put(json_object *stats, const char *prefix, const char *name, int n)
{
    g_autofree char *key = g_strconcat(prefix, name, NULL);

    json_object_object_add(stats, key, json_object_new_int(n));
}

/* num_instances, then num_vm_<state>, num_task_<state> and num_proj_<project> of those
 * with any instance: states in their order, projects sorted. */
static void census_stats(const Census *c, json_object *stats)
{
    g_autofree gpointer *projects = g_hash_table_get_keys_as_array(c->projects, NULL);

    json_object_object_add(stats, "num_instances", json_object_new_int(c->instances));
    for (int i = 0; i < VN_VM_LAST; i++)
        if (c->vm[i])
            stats_put(stats, "num_vm_", vn_vm_state_name(i), c->vm[i]);
    for (int i = 0; i < VN_TASK_LAST; i++)
        if (c->task[i])
            stats_put(stats, "num_task_", i ? vn_task_state_name(i) : "None", c->task[i]);
    qsort(projects, g_hash_table_size(c->projects), sizeof(gpointer), by_name);
    for (guint i = 0; i < g_hash_table_size(c->projects); i++)
        stats_put(stats, "num_proj_", projects[i],
                  GPOINTER_TO_INT(g_hash_table_lookup(c->projects, projects[i])));
}

void vn_tracker_set_storage_degraded(VnTracker *t, char **keys)
{
    g_mutex_lock(&t->lock);
    g_strfreev(t->storage_degraded);
    t->storage_degraded = g_strdupv(keys);
    g_mutex_unlock(&t->lock);
}

VnCapacity *vn_tracker_capacity(VnTracker *t)
{
    g_autoptr(GHashTable) projects = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GPtrArray) uuids = g_ptr_array_new_with_free_func(g_free);
    g_autoptr(GArray) generations = g_array_new(FALSE, FALSE, sizeof(gint64));
    Census census = { .projects = projects, .uuids = uuids, .generations = generations };
    g_autoptr(json_object) stats = json_object_new_object();
    VnCapacity *c = g_new0(VnCapacity, 1);
    struct statvfs st;
    guint64 free_bytes = 0;

    vn_instance_store_foreach(t->store, census_add, &census);
    census_stats(&census, stats);
    if (statvfs(t->instances_path, &st) == 0)
        free_bytes = (guint64)st.f_frsize * st.f_bavail;
    guint64 growth = growth_bytes(t, uuids, generations);
    gint64 total_gb = disk_total_gb(t->instances_path);

    g_mutex_lock(&t->lock);
    Allocation used = used_locked(t, NULL);
    c->host = g_strdup(t->host);
    c->hypervisor_type = g_strdup(t->inv.hypervisor_type ? t->inv.hypervisor_type : "unknown");
    c->hypervisor_version = t->inv.hypervisor_version;
    c->hypervisor_hostname =
        g_strdup(t->inv.hypervisor_hostname ? t->inv.hypervisor_hostname : t->host);
    c->cpu_info = g_strdup(t->inv.cpu_info ? t->inv.cpu_info : "{}");
    c->vcpus = t->inv.vcpus;
    c->vcpus_used = used.vcpus;
    c->memory_mb = t->inv.memory_mb;
    c->memory_mb_used = used.memory_mb + t->reserved_mem_mb;
    c->free_ram_mb = c->memory_mb - c->memory_mb_used;
    c->local_gb = total_gb;
    c->local_gb_used = used.disk_gb + t->reserved_disk_mb / 1024;
    c->free_disk_gb = c->local_gb - c->local_gb_used;
    c->disk_available_least =
        (gint64)((free_bytes > growth ? free_bytes - growth : 0) / (G_GUINT64_CONSTANT(1) << 30));
    c->running_vms = census.running;
    c->cpu_allocation_ratio = t->cpu_ratio;
    c->ram_allocation_ratio = t->ram_ratio;
    c->disk_allocation_ratio = t->disk_ratio;
    c->reserved_host_memory_mb = t->reserved_mem_mb;
    c->reserved_host_disk_mb = t->reserved_disk_mb;
    c->reserved_host_cpus = t->reserved_cpus;
    json_object_object_add(stats, "io_workload", json_object_new_int(t->running_ops));
    json_object_object_add(stats, "failed_builds", json_object_new_int64((gint64)t->failed_builds));
    {
        json_object *deg = json_object_new_array();
        for (char **k = t->storage_degraded; k && *k; k++)
            json_object_array_add(deg, json_object_new_string(*k));
        json_object_object_add(
            stats, "storage_state",
            json_object_new_string(json_object_array_length(deg) ? "degraded" : "healthy"));
        json_object_object_add(stats, "storage_degraded", deg);
    }
    json_object_object_add(stats, "image_cache_bytes",
                           json_object_new_int64((gint64)t->cache_bytes));
    g_mutex_unlock(&t->lock);
    c->stats = g_strdup(json_object_to_json_string_ext(stats, JSON_C_TO_STRING_PLAIN));
    return c;
}
