/* agent/ops/build.c - build_and_run_instance: from a scheduling message to a running,
 * confined guest, with every step undone if a later one fails.
 *
 *   record (building/scheduling) -> claim -> block_device_mapping -> networking ->
 *   spawning: instance folder, cached image, overlay and extra disks, guest uid, domain,
 *   labels checked -> active/running
 *
 * A failure leaves the record in vm_state error with the fault, as Nova does, and nothing
 * else: no domain, no disk, no claim, no hold on the cached image. */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include <glib/gstdio.h>

#include "agent/base/log.h"
#include "agent/ops/guest.h"
#include "agent/ops/ops.h"
#include "agent/ops/ports.h"
#include "agent/ops/volumes.h"
#include "agent/virt/domain.h"
#include "agent/virt/virt.h"
#include "api/error.h"
#include "storage/disk.h"
#include "storage/stor_error.h"

typedef struct {
    VnOp *op;
    VnAgent *a;
    const VnInstanceRecord *spec;
    gboolean claimed;
    gboolean image_held;
    gboolean dir_made;
    gboolean domain_made;
    guint plugged;   /* ports plugged, for the rollback */
    guint connected; /* volumes connected, for the rollback */
} Build;

static void on_download(guint64 done, guint64 total, gpointer user_data)
{
    Build *b = user_data;

    if (total > 0)
        vn_op_progress(b->op, (int)(done * 100 / total));
}

/* Undoes whatever the build made, in reverse order. */
static void rollback(Build *b)
{
    g_autoptr(GError) err = NULL;
    const char *uuid = b->spec->uuid;

    if (b->domain_made || b->dir_made) {
        if (!vn_guest_remove(b->a, uuid, &err))
            g_warning("rollback of %s: %s", uuid, err->message);
    }
    /* after the domain: its taps are gone, so the filters and bridges can go */
    vn_ports_unplug(b->a, b->spec->ports, b->plugged);
    vn_vols_disconnect_all(b->a, b->spec->volumes, b->connected);
    if (b->image_held)
        vn_image_cache_release(b->a->images, b->spec->image.id);
    if (b->claimed)
        vn_tracker_drop(b->a->tracker, uuid);
    vn_agent_capacity_changed(b->a);
}

static gboolean make_disks(Build *b, const char *base, GError **error)
{
    const VnFlavor *f = &b->spec->flavor;
    g_autofree char *root = vn_guest_file(b->a, b->spec->uuid, VN_GUEST_ROOT_DISK);

    if (base && !vn_disk_create_overlay(root, base, b->spec->image.disk_format,
                                        (guint64)f->root_gb << 30, b->op->cancel, error)) {
        if (g_error_matches(*error, VN_STOR_ERROR, VN_STOR_ERROR_INVALID))
            g_prefix_error(error, "flavor root_gb %d is too small for image '%s': ", f->root_gb,
                           b->spec->image.id);
        return FALSE;
    }
    if (base && !vn_guest_record_backing(b->a, b->spec->uuid, base, error))
        return FALSE;
    if (f->ephemeral_gb > 0) {
        g_autofree char *eph = vn_guest_file(b->a, b->spec->uuid, VN_GUEST_EPHEMERAL_DISK);
        if (!vn_disk_create_blank(eph, (guint64)f->ephemeral_gb << 30, b->op->cancel, error))
            return FALSE;
    }
    if (f->swap_mb > 0) {
        g_autofree char *swap = vn_guest_file(b->a, b->spec->uuid, VN_GUEST_SWAP_DISK);
        if (!vn_disk_create_blank(swap, (guint64)f->swap_mb << 20, b->op->cancel, error))
            return FALSE;
    }
    return TRUE;
}

static gboolean check_cancelled(Build *b, GError **error)
{
    if (!g_cancellable_is_cancelled(b->op->cancel))
        return TRUE;
    g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERRUPTED,
                "the build was cancelled (the instance is being deleted)");
    return FALSE;
}

/* The spawning step: disks, domain, labels. */
static gboolean spawn(Build *b, VnInstanceRecord **launched, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(b->a);
    const VnInstanceRecord *spec = b->spec;
    g_autofree char *base = NULL;
    g_autofree char *xml = NULL;
    g_autofree char *labels = NULL;
    g_autoptr(VnDomainSpec) ds = NULL;
    g_autoptr(VnInstanceRecord) rec = NULL;
    VnImageSource src = { spec->image.id,
                          spec->image.download_url ? spec->image.download_url : spec->image.url,
                          spec->image.sha256, spec->image.disk_format, (guint64)spec->image.size };
    int uid = 0;

    if (cfg->per_guest_dac && b->a->dac_available) {
        uid = vn_instance_store_allocate_uid(b->a->store, spec->uuid, cfg->guest_uid_min,
                                             cfg->guest_uid_max, error);
        if (uid == 0)
            return FALSE;
    }
    if (cfg->require_confinement && uid == 0 && !b->a->mac_model) {
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_LABEL,
                    "the guest cannot be confined: the host offers no SELinux or AppArmor "
                    "model and per-guest DAC identities are %s",
                    b->a->dac_available ? "off" : "unavailable");
        return FALSE;
    }
    b->dir_made = TRUE; /* set first: a half-made folder is removed too */
    if (!vn_guest_prepare_dir(b->a, spec->uuid, uid, error) || !check_cancelled(b, error))
        return FALSE;
    if (spec->image.id) {
        base = vn_image_cache_acquire(b->a->images, &src, b->op->cancel, on_download, b, error);
        if (!base)
            return FALSE;
        b->image_held = TRUE;
        if (!check_cancelled(b, error) || !make_disks(b, base, error))
            return FALSE;
    } else if (!make_disks(b, NULL, error)) { /* boots from a volume: no root disk here */
        return FALSE;
    }
    /* what the guest learns its addresses (and user data) from */
    if (spec->ports->len || spec->user_data) {
        g_autofree char *drive = vn_guest_file(b->a, spec->uuid, VN_GUEST_CONFIG_DRIVE);
        if (!vn_ports_config_drive(b->a, spec, drive, b->op->cancel, error))
            return FALSE;
    }
    rec = vn_instance_store_get(b->a->store, spec->uuid);
    if (!rec) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND, "instance %s vanished",
                    spec->uuid);
        return FALSE;
    }
    ds = vn_guest_domain_spec(b->a, rec, uid, error);
    if (!ds || !(xml = vn_domain_xml_build(ds, error)) || !check_cancelled(b, error))
        return FALSE;
    b->domain_made = TRUE; /* from here on, rollback removes the domain too */
    if (!vn_domain_create(b->a->virt, xml, error))
        return FALSE;
    labels = vn_guest_verify_confinement(b->a, rec, uid, error);
    if (!labels)
        return FALSE;
    g_free(rec->security_label);
    rec->security_label = g_steal_pointer(&labels);
    *launched = g_steal_pointer(&rec);
    return TRUE;
}

/* A build the agent's restart interrupted: remove what it made and fail it cleanly. */
static gboolean recover_interrupted(VnOp *op, GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = op->req->spec->uuid;
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;
    const char *msg = "the agent restarted during the build; everything it made was removed";

    if (!rec || rec->vm_state != VN_VM_BUILDING) {
        /* the build never got its record (or already finished): nothing to undo */
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERRUPTED,
                    "the agent restarted before the build of %s could start; send it again", uuid);
        return FALSE;
    }
    if (!vn_guest_remove(a, uuid, &err))
        g_warning("cleaning up the interrupted build of %s: %s", uuid, err->message);
    vn_vols_disconnect_all(a, rec->volumes, rec->volumes->len);
    vn_tracker_drop(a->tracker, uuid);
    {
        g_autoptr(GError) e = NULL;
        if (!vn_instance_store_set_error(a->store, uuid,
                                         vn_api_error_class(VN_API_ERROR_INTERRUPTED), msg, &e))
            vn_warn_error(&e, "recording the fault of instance %s", uuid);
    }
    g_autoptr(VnInstanceRecord) now = vn_instance_store_get(a->store, uuid);
    vn_agent_notify_instance(a, "instance.create.error", now, msg);
    vn_agent_capacity_changed(a);
    g_set_error_literal(error, VN_API_ERROR, VN_API_ERROR_INTERRUPTED, msg);
    return FALSE;
}

static const char *fault_class_of(const GError *err)
{
    if (err->domain == VN_API_ERROR)
        return vn_api_error_class(err->code);
    if (err->domain == VN_STOR_ERROR)
        return err->code == VN_STOR_ERROR_CHECKSUM    ? "ImageChecksumMismatch"
               : err->code == VN_STOR_ERROR_UNSAFE    ? "ImageUnacceptable"
               : err->code == VN_STOR_ERROR_TOO_LARGE ? "ImageTooLarge"
               : err->code == VN_STOR_ERROR_DOWNLOAD  ? "ImageDownloadFailed"
                                                      : "StorageError";
    if (err->domain == VN_VIRT_ERROR)
        return err->code == VN_VIRT_ERROR_LABEL ? "ConfinementFailed" : "HypervisorError";
    return "BuildAbortException";
}

/* Device names for the volumes of the build (the record keeps them). */
static gboolean assign_devices(Build *b, GError **error)
{
    g_autoptr(GPtrArray) done = g_ptr_array_new();
    VnAgent *a = b->a;

    if (!b->spec->volumes->len)
        return TRUE;
    for (guint i = 0; i < b->spec->volumes->len; i++) {
        VnVolumeSpec *v = g_ptr_array_index(b->spec->volumes, i);
        if (!vn_vols_assign(b->spec, done, v, error))
            return FALSE;
        g_ptr_array_add(done, v);
    }
    return vn_instance_store_set_volumes(a->store, b->spec->uuid, b->spec->volumes, error);
}

/* Claim, the build's task steps and the spawn. */
static gboolean build_steps(Build *b, GError **error)
{
    VnAgent *a = b->a;
    const char *uuid = b->spec->uuid;
    g_autoptr(VnInstanceRecord) launched = NULL;

    /* whatever this host cannot serve is refused before anything is made */
    if (!vn_ports_check(a, b->spec->ports, error))
        return FALSE;
    if (!vn_tracker_claim(a->tracker, uuid, &b->spec->flavor, error))
        return FALSE;
    b->claimed = TRUE;
    vn_agent_capacity_changed(a);
    if (!vn_instance_store_next_task(a->store, uuid, VN_TASK_SCHEDULING,
                                     VN_TASK_BLOCK_DEVICE_MAPPING, error) ||
        !assign_devices(b, error) ||
        !vn_vols_connect_all(a, b->spec->volumes, &b->connected, error) ||
        !vn_instance_store_next_task(a->store, uuid, VN_TASK_BLOCK_DEVICE_MAPPING,
                                     VN_TASK_NETWORKING, error) ||
        !vn_ports_plug(a, b->spec->ports, &b->plugged, error) ||
        !vn_instance_store_next_task(a->store, uuid, VN_TASK_NETWORKING, VN_TASK_SPAWNING, error) ||
        !spawn(b, &launched, error))
        return FALSE;
    return vn_instance_store_launched(a->store, uuid, launched->security_label, error);
}

/* Rolls a failed build back and records its fault; always FALSE. */
static gboolean build_failed(Build *b, GError *err, GError **error)
{
    VnAgent *a = b->a;
    const char *uuid = b->spec->uuid;
    g_autoptr(VnInstanceRecord) rec = NULL;

    g_atomic_int_inc(&a->counters.builds_failed);
    rollback(b);
    {
        g_autoptr(GError) e = NULL;
        if (!vn_instance_store_set_error(a->store, uuid, fault_class_of(err), err->message, &e))
            vn_warn_error(&e, "recording the fault of instance %s", uuid);
    }
    rec = vn_instance_store_get(a->store, uuid);
    vn_agent_notify_instance(a, "instance.create.error", rec, err->message);
    /* the reply says why, in the contract's terms */
    if (err->domain != VN_API_ERROR)
        g_prefix_error(&err, "build of %s failed and was rolled back: ", uuid);
    g_propagate_error(error, err);
    return FALSE;
}

gboolean vn_op_build(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    const VnInstanceRecord *spec = op->req->spec;
    Build b = { op, a, spec, FALSE, FALSE, FALSE, FALSE, 0, 0 };
    GError *err = NULL;
    g_autoptr(VnInstanceRecord) rec = NULL;
    g_autoptr(VnInstanceRecord) done = NULL;

    if (op->replayed)
        return recover_interrupted(op, error);
    if (!vn_host_check_enabled(a, "new guests", error))
        return FALSE;
    /* an instance that exists already is not ours to touch */
    if (!vn_instance_store_create(a->store, spec, op->request_id, error))
        return FALSE;
    rec = vn_instance_store_get(a->store, spec->uuid);
    vn_agent_notify_instance(a, "instance.create.start", rec, NULL);
    if (!build_steps(&b, &err))
        return build_failed(&b, err, error);
    if (b.image_held)
        vn_image_cache_release(a->images, spec->image.id);
    g_atomic_int_inc(&a->counters.builds_ok);
    done = vn_instance_store_get(a->store, spec->uuid);
    g_message("instance %s ('%s') is running, labels %s", spec->uuid, spec->name,
              done->security_label);
    vn_agent_notify_instance(a, "instance.create.end", done, NULL);
    vn_agent_capacity_changed(a);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}
