/* agent/ops/volumes.c - a guest's volumes (see volumes.h), and the attach_volume and
 * detach_volume operations. */
#include <string.h>

#include "agent/base/log.h"
#include "agent/ops/ops.h"
#include "agent/ops/volumes.h"
#include "agent/virt/domain.h"
#include "agent/virt/secret.h"
#include "api/error.h"
#include "storage/volume.h"

#define DETACH_TIMEOUT_S 30
#define MAX_PATHS        8

/* The local disks' names: root, ephemeral, swap, config drive. */
static const char *const local_disks[] = { "vda", "vdb", "vdc", "vdd", NULL };

static gboolean target_used(const VnInstanceRecord *rec, const GPtrArray *others, const char *name)
{
    gboolean boot_volume = rec && vn_volume_specs_boot(rec->volumes) != NULL;

    for (const char *const *l = local_disks; *l; l++) {
        /* a guest that boots from a volume has no local root disk: vda is the volume's */
        if (strcmp(*l, name) == 0 && !(boot_volume && strcmp(name, "vda") == 0))
            return TRUE;
    }
    for (guint i = 0; others && i < others->len; i++) {
        const VnVolumeSpec *o = g_ptr_array_index(others, i);
        if (o->device_name && strcmp(o->device_name, name) == 0)
            return TRUE;
    }
    return FALSE;
}

gboolean vn_vols_assign(const VnInstanceRecord *rec, const GPtrArray *others, VnVolumeSpec *v,
                        GError **error)
{
    const char *prefix = strcmp(v->bus, "scsi") == 0 ? "sd" : "vd";

    if (v->boot_index == 0) {
        g_free(v->device_name);
        v->device_name = g_strdup_printf("%sa", prefix);
        return TRUE;
    }
    if (v->device_name) {
        if (target_used(rec, others, v->device_name))
            return vn_api_invalid(error, "block_device.device_name: %s is in use", v->device_name);
        return TRUE;
    }
    for (char c = strcmp(prefix, "sd") == 0 ? 'b' : 'e'; c <= 'z'; c++) {
        g_autofree char *name = g_strdup_printf("%s%c", prefix, c);
        if (!target_used(rec, others, name)) {
            v->device_name = g_steal_pointer(&name);
            return TRUE;
        }
    }
    return vn_api_invalid(error, "block_device: no free device name on bus %s", v->bus);
}

/* The storage request of @v; @paths holds its iSCSI paths (strings borrowed from @v). */
static void to_request(const VnVolumeSpec *v, VnVolumeRequest *r, VnVolPath *paths)
{
    const VnConnInfo *c = &v->conn;

    memset(r, 0, sizeof(*r));
    r->volume_id = v->volume_id;
    r->iscsi = c->type == VN_VOL_ISCSI;
    r->read_only = c->read_only;
    r->discard = c->discard;
    r->export = c->export;
    r->server = c->server;
    r->path = c->path;
    r->name = c->name;
    r->options = c->options;
    r->format = c->format;
    for (guint i = 0; r->iscsi && i < c->paths->len && i < MAX_PATHS; i++) {
        const VnIscsiPath *p = g_ptr_array_index(c->paths, i);
        paths[i] = (VnVolPath){ p->host, p->port, p->iqn, p->lun };
        r->n_paths = i + 1;
    }
    r->paths = paths;
    r->chap_username = c->auth_username;
    r->chap_password = c->auth_password;
}

gboolean vn_vols_connect(VnAgent *a, const VnVolumeSpec *v, VnVolDiskSpec **out, GError **error)
{
    VnVolumeRequest r;
    VnVolPath paths[MAX_PATHS];
    VnVolumeDisk disk = { 0 };
    VnVolDiskSpec *d;

    to_request(v, &r, paths);
    if (!vn_volumes_connect(a->volumes, &r, &disk, error))
        return FALSE;
    if (disk.kind == VN_VOL_DISK_NETWORK && disk.auth_username) {
        /* QEMU's initiator reads the password from libvirt's store; a record read back has
         * none, and the secret defined at the first connect serves */
        if (v->conn.auth_password) {
            if (!vn_secret_define(a->virt, v->volume_id, v->conn.auth_password, error)) {
                g_autoptr(GError) e = NULL;
                vn_volume_disk_clear(&disk);
                if (!vn_volumes_disconnect(a->volumes, &r, &e))
                    vn_warn_error(&e, "undoing the connect of volume %s", v->volume_id);
                return FALSE;
            }
        } else if (!vn_secret_exists(a->virt, v->volume_id)) {
            vn_volume_disk_clear(&disk);
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                        "volume %s: its CHAP secret is not on this host; attach it again with "
                        "its connection info",
                        v->volume_id);
            return FALSE;
        }
    }
    d = g_new0(VnVolDiskSpec, 1);
    d->serial = g_strdup(v->volume_id);
    d->target = g_strdup(v->device_name);
    d->bus = g_strdup(v->bus);
    d->kind = disk.kind == VN_VOL_DISK_FILE    ? VN_VOLDISK_FILE
              : disk.kind == VN_VOL_DISK_BLOCK ? VN_VOLDISK_BLOCK
                                               : VN_VOLDISK_NETWORK;
    d->path = g_steal_pointer(&disk.path);
    d->protocol = g_steal_pointer(&disk.protocol);
    d->name = g_steal_pointer(&disk.name);
    d->host = g_steal_pointer(&disk.host);
    d->port = disk.port;
    d->initiator = g_steal_pointer(&disk.initiator);
    d->auth_username = g_steal_pointer(&disk.auth_username);
    if (d->auth_username)
        d->secret_usage = vn_secret_usage(v->volume_id);
    d->format = g_steal_pointer(&disk.format);
    d->read_only = disk.read_only;
    d->discard = disk.discard;
    vn_volume_disk_clear(&disk);
    *out = d;
    return TRUE;
}

gboolean vn_vols_connect_all(VnAgent *a, const GPtrArray *vols, guint *connected, GError **error)
{
    *connected = 0;
    for (guint i = 0; vols && i < vols->len; i++) {
        VnVolDiskSpec *d = NULL;
        if (!vn_vols_connect(a, g_ptr_array_index(vols, i), &d, error))
            return FALSE;
        vn_vol_disk_spec_free(d);
        (*connected)++;
    }
    return TRUE;
}

gboolean vn_vols_disconnect(VnAgent *a, const VnVolumeSpec *v, GError **error)
{
    VnVolumeRequest r;
    VnVolPath paths[MAX_PATHS];

    to_request(v, &r, paths);
    if (!vn_volumes_disconnect(a->volumes, &r, error))
        return FALSE;
    if (v->conn.auth_username && !vn_secret_undefine(a->virt, v->volume_id, error))
        return FALSE;
    return TRUE;
}

void vn_vols_disconnect_all(VnAgent *a, const GPtrArray *vols, guint count)
{
    for (guint i = count; vols && i > 0; i--) {
        const VnVolumeSpec *v = g_ptr_array_index(vols, i - 1);
        g_autoptr(GError) e = NULL;
        if (!vn_vols_disconnect(a, v, &e))
            vn_warn_error(&e, "disconnecting volume %s (left for the sweep)", v->volume_id);
    }
}

#define SWEEP_MIN_AGE_S 600

void vn_vols_reconcile(VnAgent *a, gboolean startup)
{
    g_autoptr(GPtrArray) recs = vn_instance_store_list(a->store, FALSE);
    g_autoptr(GHashTable) live = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GError) err = NULL;
    g_auto(GStrv) secrets = NULL;
    guint removed;

    for (guint i = 0; i < recs->len; i++) {
        const VnInstanceRecord *rec = g_ptr_array_index(recs, i);
        if (rec->vm_state == VN_VM_DELETED)
            continue;
        for (guint j = 0; j < rec->volumes->len; j++) {
            const VnVolumeSpec *v = g_ptr_array_index(rec->volumes, j);
            g_hash_table_add(live, g_strdup(v->volume_id));
        }
    }
    removed = vn_volumes_sweep(a->volumes, live, startup ? 0 : SWEEP_MIN_AGE_S);
    if (removed)
        g_message("volume sweep: removed %u mounts or sessions no volume uses", removed);
    if (!startup)
        return;
    secrets = vn_secret_list(a->virt, &err);
    if (!secrets) {
        vn_warn_error(&err, "listing volume secrets");
        return;
    }
    for (char **s = secrets; *s; s++) {
        if (g_hash_table_contains(live, *s))
            continue;
        g_message("volume sweep: removing the secret of volume %s (no guest uses it)", *s);
        if (!vn_secret_undefine(a->virt, *s, &err))
            vn_warn_error(&err, "removing the secret of volume %s", *s);
    }
}

/* ------------------------------------------------------------------ health */

struct _VnVolHealth {
    GMutex lock;          /* one pass at a time holds it, with the fields below */
    GHashTable *degraded; /* health key -> TRUE: failed its last probe */
    GHashTable *paused;   /* instance uuid -> TRUE: paused by a pass, for it to resume */
};

VnVolHealth *vn_vol_health_new(void)
{
    VnVolHealth *h = g_new0(VnVolHealth, 1);

    g_mutex_init(&h->lock);
    h->degraded = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    h->paused = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    return h;
}

void vn_vol_health_free(VnVolHealth *h)
{
    if (!h)
        return;
    g_hash_table_destroy(h->degraded);
    g_hash_table_destroy(h->paused);
    g_mutex_clear(&h->lock);
    g_free(h);
}

char *vn_vols_health_key(const VnVolumeSpec *v)
{
    const VnIscsiPath *p;

    if (v->conn.type == VN_VOL_NFS)
        return g_strdup_printf("nfs:%s", v->conn.export);
    p = g_ptr_array_index(v->conn.paths, 0);
    return g_strdup_printf("iscsi:%s@%s:%d", p->iqn, p->host, p->port);
}

typedef struct {
    const VnVolumeSpec *probe; /* a volume on it (borrowed from @recs) */
    GPtrArray *uuids;          /* instances with a volume on it (borrowed) */
} Storage;

static void storage_free(Storage *st)
{
    g_ptr_array_unref(st->uuids);
    g_free(st);
}

/* TRUE when every storage a volume of @rec is on answers. */
static gboolean all_healthy(VnVolHealth *h, const VnInstanceRecord *rec)
{
    for (guint i = 0; i < rec->volumes->len; i++) {
        g_autofree char *key = vn_vols_health_key(g_ptr_array_index(rec->volumes, i));
        if (g_hash_table_contains(h->degraded, key))
            return FALSE;
    }
    return TRUE;
}

static gint compare_keys(gconstpointer x, gconstpointer y)
{
    return g_strcmp0(*(char *const *)x, *(char *const *)y);
}

void vn_vol_health_pass(VnAgent *a)
{
    VnVolHealth *h = a->vol_health;
    g_autoptr(GPtrArray) recs = vn_instance_store_list(a->store, FALSE);
    g_autoptr(GHashTable) storages =
        g_hash_table_new_full(g_str_hash, g_str_equal, g_free, (GDestroyNotify)storage_free);
    g_autoptr(GPtrArray) keys = g_ptr_array_new();
    GHashTableIter it;
    gpointer k, val;
    gboolean changed = FALSE;

    for (guint i = 0; i < recs->len; i++) {
        const VnInstanceRecord *rec = g_ptr_array_index(recs, i);
        if (rec->vm_state == VN_VM_DELETED || rec->vm_state == VN_VM_BUILDING)
            continue;
        for (guint j = 0; j < rec->volumes->len; j++) {
            const VnVolumeSpec *v = g_ptr_array_index(rec->volumes, j);
            char *key = vn_vols_health_key(v);
            Storage *st = g_hash_table_lookup(storages, key);
            if (!st) {
                st = g_new0(Storage, 1);
                st->probe = v;
                st->uuids = g_ptr_array_new();
                g_hash_table_insert(storages, key, st);
            } else {
                g_free(key);
            }
            g_ptr_array_add(st->uuids, rec->uuid);
        }
    }
    g_mutex_lock(&h->lock);
    /* storage no guest uses any more is no longer watched */
    g_hash_table_iter_init(&it, h->degraded);
    while (g_hash_table_iter_next(&it, &k, NULL)) {
        if (!g_hash_table_contains(storages, k)) {
            g_hash_table_iter_remove(&it);
            changed = TRUE;
        }
    }
    g_hash_table_iter_init(&it, storages);
    while (g_hash_table_iter_next(&it, &k, &val)) {
        Storage *st = val;
        VnVolumeRequest r;
        VnVolPath paths[MAX_PATHS];
        g_autoptr(GError) err = NULL;
        gboolean was = g_hash_table_contains(h->degraded, k);
        to_request(st->probe, &r, paths);
        if (!vn_volumes_check(a->volumes, &r, &err)) {
            if (!was) {
                g_warning("storage %s fails its probe (%s): pausing the %u guest(s) on it",
                          (char *)k, err->message, st->uuids->len);
                g_hash_table_add(h->degraded, g_strdup(k));
                changed = TRUE;
            }
            /* every running guest on it, also one started since */
            for (guint i = 0; i < st->uuids->len; i++) {
                const char *uuid = g_ptr_array_index(st->uuids, i);
                VnPowerState ps = VN_POWER_NOSTATE;
                g_autoptr(GError) e = NULL;
                if (!vn_domain_power_state(a->virt, uuid, &ps, NULL) || ps != VN_POWER_RUNNING)
                    continue;
                if (vn_domain_pause(a->virt, uuid, &e)) {
                    g_hash_table_add(h->paused, g_strdup(uuid));
                    g_message("instance %s paused: its storage %s does not answer", uuid,
                              (char *)k);
                } else {
                    vn_warn_error(&e, "pausing instance %s", uuid);
                }
            }
        } else if (was) {
            g_message("storage %s answers again", (char *)k);
            g_hash_table_remove(h->degraded, k);
            changed = TRUE;
        }
    }
    /* guests whose storage all answers: resumed, if a pass or QEMU (I/O error) paused them */
    for (guint i = 0; i < recs->len; i++) {
        const VnInstanceRecord *rec = g_ptr_array_index(recs, i);
        g_autoptr(GError) e = NULL;
        if (!rec->volumes->len || !all_healthy(h, rec))
            continue;
        gboolean ours = g_hash_table_contains(h->paused, rec->uuid);
        if (!ours && !vn_domain_paused_by_io_error(a->virt, rec->uuid))
            continue;
        if (vn_domain_unpause(a->virt, rec->uuid, &e))
            g_message("instance %s resumed: its storage answers again", rec->uuid);
        else
            vn_warn_error(&e, "resuming instance %s", rec->uuid);
        g_hash_table_remove(h->paused, rec->uuid);
    }
    g_hash_table_iter_init(&it, h->degraded);
    while (g_hash_table_iter_next(&it, &k, NULL))
        g_ptr_array_add(keys, k);
    g_ptr_array_sort(keys, compare_keys);
    g_ptr_array_add(keys, NULL);
    vn_tracker_set_storage_degraded(a->tracker, (char **)keys->pdata);
    g_mutex_unlock(&h->lock);
    if (changed)
        vn_agent_capacity_changed(a);
}

/* ------------------------------------------------------------------ operations */

static const VnVmState changeable[] = { VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_PAUSED, VN_VM_LAST };

static gboolean running(const VnInstanceRecord *rec)
{
    return rec->vm_state == VN_VM_ACTIVE || rec->vm_state == VN_VM_PAUSED;
}

/* The record's volumes with @add appended and/or the one at @drop (G_MAXUINT: none) left
 * out; borrowed pointers. */
static GPtrArray *vols_with(const VnInstanceRecord *rec, const VnVolumeSpec *add, guint drop)
{
    GPtrArray *out = g_ptr_array_new();

    for (guint i = 0; i < rec->volumes->len; i++) {
        if (i != drop)
            g_ptr_array_add(out, g_ptr_array_index(rec->volumes, i));
    }
    if (add)
        g_ptr_array_add(out, (gpointer)add);
    return out;
}

static gboolean attach(VnAgent *a, const VnInstanceRecord *rec, VnVolumeSpec *v, GError **error)
{
    VnVolDiskSpec *d = NULL;
    g_autofree char *xml = NULL;
    g_autoptr(GPtrArray) vols = NULL;

    for (guint i = 0; i < rec->volumes->len; i++) {
        const VnVolumeSpec *o = g_ptr_array_index(rec->volumes, i);
        if (strcmp(o->volume_id, v->volume_id) == 0)
            return vn_api_invalid(error,
                                  "block_device.volume_id: %s is attached to instance %s "
                                  "already",
                                  v->volume_id, rec->uuid);
    }
    if (!vn_vols_assign(rec, rec->volumes, v, error) || !vn_vols_connect(a, v, &d, error))
        return FALSE;
    xml = vn_domain_xml_volume(d);
    vn_vol_disk_spec_free(d);
    if (!vn_domain_attach(a->virt, rec->uuid, xml, running(rec), error)) {
        g_autoptr(GError) e = NULL;
        if (!vn_vols_disconnect(a, v, &e))
            vn_warn_error(&e, "undoing the connect of volume %s", v->volume_id);
        return FALSE;
    }
    vols = vols_with(rec, v, G_MAXUINT);
    if (!vn_instance_store_set_volumes(a->store, rec->uuid, vols, error)) {
        g_autoptr(GError) e = NULL;
        if (!vn_domain_detach_disk(a->virt, rec->uuid, xml, v->device_name, running(rec),
                                   DETACH_TIMEOUT_S, &e) ||
            !vn_vols_disconnect(a, v, &e))
            vn_warn_error(&e, "undoing the attach of volume %s", v->volume_id);
        return FALSE;
    }
    return TRUE;
}

static gboolean detach(VnAgent *a, const VnInstanceRecord *rec, const char *volume_id,
                       GError **error)
{
    const VnVolumeSpec *v = NULL;
    guint index = 0;
    g_autoptr(GPtrArray) vols = NULL;
    g_autoptr(GError) e = NULL;
    VnVolDiskSpec d = { 0 };
    g_autofree char *xml = NULL;

    for (guint i = 0; i < rec->volumes->len; i++) {
        const VnVolumeSpec *o = g_ptr_array_index(rec->volumes, i);
        if (strcmp(o->volume_id, volume_id) == 0) {
            v = o;
            index = i;
        }
    }
    if (!v)
        return vn_api_invalid(error, "volume_id: %s is not attached to instance %s", volume_id,
                              rec->uuid);
    if (v->boot_index == 0)
        return vn_api_invalid(error, "volume_id: %s is the boot disk of instance %s", volume_id,
                              rec->uuid);
    /* the device goes by its target: the source need not be connected to find it */
    d.serial = v->volume_id;
    d.target = v->device_name;
    d.bus = v->bus;
    d.kind = VN_VOLDISK_FILE;
    d.path = (char *)"/dev/null";
    xml = vn_domain_xml_volume(&d);
    if (!vn_domain_detach_disk(a->virt, rec->uuid, xml, v->device_name, running(rec),
                               DETACH_TIMEOUT_S, error))
        return FALSE;
    vols = vols_with(rec, NULL, index);
    if (!vn_instance_store_set_volumes(a->store, rec->uuid, vols, error))
        return FALSE;
    /* the guest let go of it: the host side can go (a failure is left to the sweep) */
    if (!vn_vols_disconnect(a, v, &e))
        vn_warn_error(&e, "disconnecting volume %s (left for the sweep)", volume_id);
    return TRUE;
}

static void end_task(VnAgent *a, const char *uuid)
{
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;

    if (rec && !vn_instance_store_end_task(a->store, uuid, VN_TASK_BLOCK_DEVICE_MAPPING,
                                           rec->vm_state, rec->power_state, &err))
        vn_warn_error(&err, "ending the volume task of instance %s", uuid);
}

/* An attach the agent's restart interrupted: the disk it may have hot-plugged (found by
 * its serial, the volume id) leaves the domain, the volume leaves the host, and the
 * instance's task ends; unless the record lists the volume (the attach had finished). */
static void recover_attach(VnAgent *a, const char *uuid, const VnVolumeSpec *v)
{
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;

    if (!rec)
        return;
    for (guint i = 0; i < rec->volumes->len; i++) {
        const VnVolumeSpec *o = g_ptr_array_index(rec->volumes, i);
        if (strcmp(o->volume_id, v->volume_id) == 0)
            goto end;
    }
    /* the live definition, then the persistent one; and again for as long as either shows
     * it within 10 s, until neither has for 3 s (a hot-plug libvirt was still finishing for
     * the dead agent can land late) */
    int clean = 0;
    for (int pass = 0; pass < 40 && clean < 6; pass++) {
        if (pass >= 2) {
            g_autofree char *live = vn_domain_get_xml_flags(a->virt, uuid, FALSE, NULL);
            g_autofree char *conf = vn_domain_get_xml_flags(a->virt, uuid, TRUE, NULL);
            gboolean seen =
                (live && strstr(live, v->volume_id)) || (conf && strstr(conf, v->volume_id));
            clean = seen ? 0 : clean + 1;
            g_usleep(G_USEC_PER_SEC / 2);
            if (!seen)
                continue;
        }
        gboolean persistent = pass % 2 == 1;
        g_autofree char *xml = vn_domain_get_xml_flags(a->virt, uuid, persistent, NULL);
        g_autofree char *target =
            xml ? vn_domain_xml_disk_by_serial(xml, strlen(xml), v->volume_id) : NULL;
        if (!target)
            continue;
        VnVolDiskSpec d = { 0 };
        d.serial = v->volume_id;
        d.target = target;
        d.bus = v->bus;
        d.kind = VN_VOLDISK_FILE;
        d.path = (char *)"/dev/null";
        g_autofree char *dx = vn_domain_xml_volume(&d);
        if (!persistent && !running(rec))
            continue; /* not running: its live definition is its persistent one */
        if (!vn_domain_detach_disk_from(a->virt, uuid, dx, target, !persistent, DETACH_TIMEOUT_S,
                                        &err))
            vn_warn_error(&err, "removing the half-attached volume %s from instance %s",
                          v->volume_id, uuid);
        else
            g_message("instance %s: the half-attached volume %s removed", uuid, v->volume_id);
    }
    if (!vn_vols_disconnect(a, v, &err))
        vn_warn_error(&err, "disconnecting the half-attached volume %s", v->volume_id);
end:
    if (rec->task_state == VN_TASK_BLOCK_DEVICE_MAPPING)
        end_task(a, uuid);
}

static gboolean run(VnOp *op, gboolean attaching, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    g_autoptr(VnInstanceRecord) rec = NULL;
    g_autoptr(VnInstanceRecord) done = NULL;
    const char *volume_id = attaching ? op->req->volume->volume_id : op->req->volume_id;
    gboolean ok;

    if (op->replayed && attaching) {
        /* never redone (its secret is not journaled): what it made is undone */
        recover_attach(a, uuid, op->req->volume);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERRUPTED,
                    "the agent restarted during the attach of volume %s; what it had done was "
                    "undone, send it again",
                    volume_id);
        return FALSE;
    }
    if (!vn_instance_store_begin_task(a->store, uuid, changeable, VN_TASK_BLOCK_DEVICE_MAPPING,
                                      op->request_id, error))
        return FALSE;
    rec = vn_instance_store_get(a->store, uuid);
    ok = attaching ? attach(a, rec, op->req->volume, error) : detach(a, rec, volume_id, error);
    end_task(a, uuid);
    if (!ok)
        return FALSE;
    g_message("instance %s: volume %s %s", uuid, volume_id, attaching ? "attached" : "detached");
    done = vn_instance_store_get(a->store, uuid);
    vn_agent_notify_instance(
        a, attaching ? "instance.volume_attach.end" : "instance.volume_detach.end", done, NULL);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}

gboolean vn_op_attach_volume(VnOp *op, json_object **result, GError **error)
{
    return run(op, TRUE, result, error);
}

gboolean vn_op_detach_volume(VnOp *op, json_object **result, GError **error)
{
    return run(op, FALSE, result, error);
}
