/* agent/reconcile.c - libvirt vs records vs journal (see reconcile.h). */
#include <string.h>

#include "agent/base/log.h"
#include "agent/dispatcher.h"
#include "agent/ops/guest.h"
#include "agent/ops/ports.h"
#include "agent/ops/volumes.h"
#include "agent/reconcile.h"
#include "agent/virt/domain.h"
#include "agent/virt/domain_xml.h"
#include "agent/virt/virt.h"
#include "api/error.h"
#include "api/json.h"
#include "storage/disk.h"

int vn_reconcile_rule(VnVmState vm, VnPowerState power, gboolean *force_off)
{
    *force_off = FALSE;
    switch (vm) {
    case VN_VM_ACTIVE:
        /* the guest shut itself down or crashed: it is stopped now */
        if (power == VN_POWER_SHUTDOWN || power == VN_POWER_CRASHED)
            return VN_VM_STOPPED;
        return -1; /* paused or suspended from outside: only the power state follows */
    case VN_VM_STOPPED:
        /* started behind the agent's back: Nova powers it off again */
        if (power == VN_POWER_RUNNING)
            *force_off = TRUE;
        return -1;
    case VN_VM_PAUSED:
        if (power == VN_POWER_SHUTDOWN || power == VN_POWER_CRASHED)
            return VN_VM_STOPPED;
        if (power == VN_POWER_RUNNING)
            return VN_VM_ACTIVE;
        return -1;
    default:
        return -1; /* building, suspended, error, deleted: left as they are */
    }
}

/* Logs a sync change the record refused: an operation took the instance meanwhile, and
 * its view wins. */
static void sync_refused(const char *uuid, GError *err)
{
    if (g_error_matches(err, VN_API_ERROR, VN_API_ERROR_INVALID_STATE))
        g_debug("power sync of %s skipped: %s", uuid, err->message);
    else
        g_warning("power sync of %s: %s", uuid, err->message);
}

void vn_reconcile_sync_one(VnAgent *a, const char *uuid)
{
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;
    VnPowerState power = VN_POWER_NOSTATE;
    gboolean force_off = FALSE;
    int vm;

    if (!rec || rec->vm_state == VN_VM_DELETED || vn_instance_record_in_task(rec))
        return;
    if (a->dispatcher && vn_dispatcher_busy(a->dispatcher, uuid))
        return;
    /* every change below is a compare-and-set against this read (rec->generation) */
    if (!vn_domain_power_state(a->virt, uuid, &power, &err)) {
        if (!g_error_matches(err, VN_VIRT_ERROR, VN_VIRT_ERROR_NOT_FOUND))
            return; /* libvirt unreachable: try again later */
        g_clear_error(&err);
        if (rec->vm_state != VN_VM_ERROR) {
            if (!vn_instance_store_sync_error(a->store, uuid, rec->generation, "InstanceNotFound",
                                              "the domain of this instance disappeared from "
                                              "the hypervisor",
                                              &err)) {
                sync_refused(uuid, err);
                return;
            }
            g_warning("instance %s has no domain any more", uuid);
        } else if (rec->power_state != VN_POWER_NOSTATE &&
                   !vn_instance_store_sync_power(a->store, uuid, rec->generation, VN_POWER_NOSTATE,
                                                 -1, &err)) {
            sync_refused(uuid, err);
            return;
        }
        vn_agent_capacity_changed(a);
        return;
    }
    vm = vn_reconcile_rule(rec->vm_state, power, &force_off);
    if (force_off) {
        /* claimed first, so a start that arrives now waits for the power-off instead of
         * having its guest destroyed under it */
        if (!vn_instance_store_sync_begin(a->store, uuid, rec->generation, VN_TASK_POWERING_OFF,
                                          &err)) {
            sync_refused(uuid, err);
            return;
        }
        g_message("instance %s is stopped but its guest runs: powering it off", uuid);
        if (vn_domain_destroy(a->virt, uuid, &err))
            power = VN_POWER_SHUTDOWN;
        else
            g_warning("powering off %s: %s", uuid, err->message);
        g_clear_error(&err);
        if (!vn_instance_store_end_task(a->store, uuid, VN_TASK_POWERING_OFF, VN_VM_STOPPED, power,
                                        &err))
            g_warning("power sync of %s: %s", uuid, err->message);
        g_atomic_int_inc(&a->counters.power_syncs);
        vn_agent_capacity_changed(a);
        return;
    }
    if (power != rec->power_state || vm >= 0) {
        if (!vn_instance_store_sync_power(a->store, uuid, rec->generation, power, vm, &err)) {
            sync_refused(uuid, err);
            return;
        }
        g_info("instance %s: power state %d -> %d%s%s", uuid, rec->power_state, power,
               vm >= 0 ? ", vm_state " : "", vm >= 0 ? vn_vm_state_name(vm) : "");
        g_atomic_int_inc(&a->counters.power_syncs);
        vn_agent_capacity_changed(a);
    }
}

/* Removes domains of ours that no live record knows. */
static gboolean remove_orphan_domains(VnAgent *a, GError **error)
{
    g_auto(GStrv) uuids = vn_domain_list(a->virt, error);

    if (!uuids)
        return FALSE;
    for (char **u = uuids; *u; u++) {
        g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, *u);
        g_autoptr(GError) err = NULL;
        g_autofree char *xml = NULL;
        g_autoptr(VnDomainInfo) info = NULL;

        if (rec && rec->vm_state != VN_VM_DELETED)
            continue;
        xml = vn_domain_get_xml(a->virt, *u, FALSE, &err);
        info = xml ? vn_domain_xml_parse(xml, strlen(xml), &err) : NULL;
        if (!info || !info->ours)
            continue; /* not ours: never touched */
        g_message("removing domain %s ('%s'): no live instance of this host owns it", *u,
                  info->meta.instance_name ? info->meta.instance_name : "?");
        if (!vn_guest_remove(a, *u, &err))
            g_warning("removing orphan domain %s: %s", *u, err->message);
    }
    return TRUE;
}

/* An instance that was migrating when the agent stopped. */
static void reconcile_migrating(VnAgent *a, const VnInstanceRecord *r, gboolean unfinished)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    gboolean exists = FALSE;
    VnPowerState power = VN_POWER_NOSTATE;

    if (!vn_domain_exists(a->virt, r->uuid, &exists, NULL))
        return;
    if (g_strcmp0(r->host, cfg->host) == 0) {
        /* leaving: the journal's replay of live_migration finishes or undoes it */
        if (unfinished)
            return;
        if (exists) {
            vn_domain_power_state(a->virt, r->uuid, &power, NULL);
            {
                g_autoptr(GError) e = NULL;
                if (!vn_instance_store_end_task(
                        a->store, r->uuid, VN_TASK_MIGRATING,
                        power == VN_POWER_PAUSED ? VN_VM_PAUSED : VN_VM_ACTIVE, power, &e))
                    vn_warn_error(&e, "ending the migration of instance %s", r->uuid);
            }
        } else {
            {
                g_autoptr(GError) e = NULL;
                if (!vn_instance_store_forget(a->store, r->uuid, &e))
                    vn_warn_error(&e, "forgetting instance %s", r->uuid);
            }
        }
        return;
    }
    /* arriving: a guest libvirt brought here is adopted; otherwise the source's rollback
     * (queued for this host) removes the record */
    if (exists && vn_domain_power_state(a->virt, r->uuid, &power, NULL) &&
        (power == VN_POWER_RUNNING || power == VN_POWER_PAUSED)) {
        g_message("adopting instance %s, which arrived by migration", r->uuid);
        {
            g_autoptr(GError) e = NULL;
            if (!vn_guest_record_owner(a, r->uuid, &e))
                vn_warn_error(&e, "recording the owner of instance %s", r->uuid);
        }
        {
            g_autoptr(GError) e = NULL;
            if (!vn_instance_store_set_host(a->store, r->uuid, cfg->host, &e))
                vn_warn_error(&e, "recording the host of instance %s", r->uuid);
        }
        {
            g_autoptr(GError) e = NULL;
            if (!vn_instance_store_end_task(a->store, r->uuid, VN_TASK_MIGRATING,
                                            power == VN_POWER_PAUSED ? VN_VM_PAUSED : VN_VM_ACTIVE,
                                            power, &e))
                vn_warn_error(&e, "adopting instance %s", r->uuid);
        }
    }
}

static gboolean has_unfinished(GPtrArray *unfinished, const char *uuid)
{
    for (guint i = 0; unfinished && i < unfinished->len; i++) {
        VnJournalRequest *r = g_ptr_array_index(unfinished, i);
        if (g_strcmp0(r->instance_uuid, uuid) == 0)
            return TRUE;
    }
    return FALSE;
}

gboolean vn_reconcile_startup(VnAgent *a, GPtrArray *unfinished, GError **error)
{
    g_autoptr(GPtrArray) recs = NULL;

    if (!remove_orphan_domains(a, error))
        return FALSE;
    recs = vn_instance_store_list(a->store, FALSE);
    for (guint i = 0; i < recs->len; i++) {
        VnInstanceRecord *r = g_ptr_array_index(recs, i);
        g_autoptr(GError) err = NULL;

        if (r->task_state == VN_TASK_NONE && r->vm_state != VN_VM_BUILDING) {
            vn_reconcile_sync_one(a, r->uuid);
            continue;
        }
        if (r->task_state == VN_TASK_MIGRATING) {
            reconcile_migrating(a, r, has_unfinished(unfinished, r->uuid));
            continue;
        }
        if (r->task_state == VN_TASK_RESIZE_MIGRATED && !has_unfinished(unfinished, r->uuid))
            continue; /* the source's copy of a resize: it waits for confirm or revert */
        if (has_unfinished(unfinished, r->uuid)) {
            /* its request runs again from the journal; a build's replay rolls it back */
            if (r->vm_state != VN_VM_BUILDING) {
                g_autoptr(GError) e = NULL;
                if (!vn_instance_store_clear_task(a->store, r->uuid, &e))
                    vn_warn_error(&e, "clearing the task of instance %s", r->uuid);
            }
            continue;
        }
        if (r->vm_state == VN_VM_BUILDING) {
            g_message("instance %s was being built when the agent stopped: rolling it back",
                      r->uuid);
            if (!vn_guest_remove(a, r->uuid, &err))
                g_warning("rolling back %s: %s", r->uuid, err->message);
            vn_instance_store_set_error(a->store, r->uuid,
                                        vn_api_error_class(VN_API_ERROR_INTERRUPTED),
                                        "the agent restarted during the build; everything it "
                                        "made was removed",
                                        NULL);
            continue;
        }
        {
            g_autoptr(GError) e = NULL;
            if (!vn_instance_store_clear_task(a->store, r->uuid, &e))
                vn_warn_error(&e, "clearing the task of instance %s", r->uuid);
        }
        vn_reconcile_sync_one(a, r->uuid);
    }
    vn_tracker_load(a->tracker);
    vn_agent_capacity_changed(a);
    return TRUE;
}

/* The copy here of a guest that lives on another host now: its domain goes (it is never
 * started again), its folder too when it is this host's own (a shared folder belongs to
 * the host the guest went to), then its ports, volume connections, claim and record. */
static void remove_moved(VnAgent *a, const char *uuid)
{
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;
    gboolean owned;

    if (!rec || rec->task_state != VN_TASK_NONE ||
        (a->dispatcher && vn_dispatcher_busy(a->dispatcher, uuid)))
        return;
    owned = vn_guest_owned_here(a, uuid);
    g_warning("instance %s lives on another host now, the central database says: removing its "
              "copy here%s",
              uuid, owned ? "" : " (its shared folder is the other host's and stays)");
    if (!(owned ? vn_guest_remove(a, uuid, &err) : vn_domain_undefine(a->virt, uuid, &err))) {
        vn_warn_error(&err, "removing the copy of instance %s", uuid);
        return;
    }
    vn_ports_unplug(a, rec->ports, rec->ports->len);
    vn_vols_disconnect_all(a, rec->volumes, rec->volumes->len);
    vn_tracker_drop(a->tracker, uuid);
    if (!vn_instance_store_forget(a->store, uuid, &err))
        vn_warn_error(&err, "forgetting instance %s", uuid);
    g_atomic_int_inc(&a->counters.moved_removed);
    vn_agent_capacity_changed(a);
}

void vn_reconcile_moved(VnAgent *a)
{
    g_autoptr(GPtrArray) recs = vn_instance_store_list(a->store, FALSE);
    g_autoptr(GPtrArray) uuids = g_ptr_array_new();
    g_auto(GStrv) moved = NULL;
    g_autoptr(GError) err = NULL;

    if (!a->reporter)
        return;
    for (guint i = 0; i < recs->len; i++) {
        VnInstanceRecord *r = g_ptr_array_index(recs, i);
        if (r->task_state == VN_TASK_NONE)
            g_ptr_array_add(uuids, r->uuid);
    }
    if (!uuids->len)
        return;
    g_ptr_array_add(uuids, NULL);
    moved = vn_reporter_query_moved(a->reporter, (const char *const *)uuids->pdata, &err);
    if (!moved) {
        g_warning("cannot tell whether guests of this host live elsewhere now: %s", err->message);
        return;
    }
    for (char **u = moved; *u; u++)
        remove_moved(a, *u);
}

static gboolean is_uuid_name(const char *name)
{
    g_autofree char *u = vn_uuid_canonical(name);

    return u != NULL;
}

GHashTable *vn_reconcile_bases_in_use(const char *instances_path)
{
    GHashTable *in_use = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
    g_autoptr(GDir) top = g_dir_open(instances_path, 0, NULL);
    const char *name;

    /* every instance folder counts, including other hosts' on shared storage */
    while (top && (name = g_dir_read_name(top))) {
        if (!is_uuid_name(name))
            continue;
        g_autofree char *dir = g_build_filename(instances_path, name, NULL);
        /* what the agent recorded, never the qcow2 header a guest's QEMU can rewrite */
        char *backing = vn_guest_read_backing(dir);
        if (!backing) {
            /* a folder made before the agent recorded its bases: its header can only keep
             * a base from being aged out, never get one used or removed */
            g_autofree char *disk = g_build_filename(dir, VN_GUEST_ROOT_DISK, NULL);
            backing = vn_disk_backing_file(disk, NULL);
        }
        if (backing)
            g_hash_table_add(in_use, backing);
    }
    return in_use;
}
