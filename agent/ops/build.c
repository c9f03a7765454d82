/* agent/ops/build.c - build_and_run_instance: from a scheduling message to a running,
 * confined guest, with every step undone if a later one fails.
 *
 *   record (building/scheduling) -> claim -> block_device_mapping -> networking ->
 *   spawning: instance folder, cached image, overlay and extra disks, guest uid, domain,
 *   labels checked -> active/running
 *
 * A failure leaves the record in vm_state error with the fault, as Nova does, and nothing
 * else: no domain, no disk, no claim, no hold on the cached image.
 *
 * An evacuation (rebuild_instance with recreate) is the same flow for a guest whose host
 * is down: the request carries its spec, the record takes it over here (task rebuilding,
 * then rebuild_spawning), and its folder is used as it is when the instance storage is
 * shared (its disks are the guest's), or made from the image when nothing is shared.  A
 * folder this host did not make is never removed by a rollback; it becomes this host's
 * (vn_guest_record_owner) only once the guest runs here. */
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
    gboolean evacuating; /* rebuild with recreate */
    VnTaskState task;    /* the record's task now */
    gboolean claimed;
    gboolean image_held;
    gboolean reused;   /* evacuation: the folder (shared storage) was there already */
    gboolean dir_made; /* the folder was made here: a rollback removes it */
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

    if (b->dir_made) {
        if (!vn_guest_remove(b->a, uuid, &err))
            g_warning("rollback of %s: %s", uuid, err->message);
    } else if (b->domain_made) {
        /* the folder is not this host's to remove: only the domain goes */
        if (!vn_domain_undefine(b->a->virt, uuid, &err))
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
    if (b->evacuating) {
        /* shared instance storage: the guest's own folder and disks are here already */
        g_autofree char *dir = vn_agent_instance_dir(b->a, spec->uuid);
        g_autofree char *root = vn_guest_file(b->a, spec->uuid, VN_GUEST_ROOT_DISK);
        b->reused = g_file_test(dir, G_FILE_TEST_IS_DIR) &&
                    (!spec->image.id || g_file_test(root, G_FILE_TEST_IS_REGULAR));
        if (b->reused)
            g_message("instance %s: evacuated onto the disks of its shared folder", spec->uuid);
    }
    b->dir_made = !b->reused; /* set first: a half-made folder is removed too */
    if (!vn_guest_prepare_dir(b->a, spec->uuid, uid, error) ||
        (b->dir_made && !vn_guest_record_owner(b->a, spec->uuid, error)) ||
        !check_cancelled(b, error))
        return FALSE;
    if (spec->image.id) {
        /* held while spawning; for a shared folder it makes sure its base is in the cache */
        base = vn_image_cache_acquire(b->a->images, &src, b->op->cancel, on_download, b, error);
        if (!base)
            return FALSE;
        b->image_held = TRUE;
        if (!check_cancelled(b, error) || (!b->reused && !make_disks(b, base, error)))
            return FALSE;
    } else if (!b->reused && !make_disks(b, NULL, error)) {
        /* boots from a volume: no root disk here */
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

/* Moves the record to the build's next task; an evacuation stays in rebuilding until its
 * spawn (rebuild_spawning). */
static gboolean next_step(Build *b, VnTaskState build_task, GError **error)
{
    VnTaskState to = build_task;

    if (b->evacuating)
        to = build_task == VN_TASK_SPAWNING ? VN_TASK_REBUILD_SPAWNING : VN_TASK_REBUILDING;
    if (to == b->task)
        return TRUE;
    if (!(b->evacuating ? vn_instance_store_next_task : vn_instance_store_build_step)(
            b->a->store, b->spec->uuid, b->task, to, error))
        return FALSE;
    b->task = to;
    return TRUE;
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
    if (!next_step(b, VN_TASK_BLOCK_DEVICE_MAPPING, error) || !assign_devices(b, error) ||
        !vn_vols_connect_all(a, b->spec->volumes, &b->connected, error) ||
        !next_step(b, VN_TASK_NETWORKING, error) ||
        !vn_ports_plug(a, b->spec->ports, &b->plugged, error) ||
        !next_step(b, VN_TASK_SPAWNING, error) || !spawn(b, &launched, error))
        return FALSE;
    if (!vn_instance_store_launched(a->store, uuid, b->task, launched->security_label, error))
        return FALSE;
    /* the guest runs here: a shared folder is this host's from now on */
    if (b->evacuating) {
        g_autoptr(GError) e = NULL;
        if (!vn_guest_record_owner(a, uuid, &e))
            vn_warn_error(&e, "instance %s", uuid);
    }
    return TRUE;
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
    vn_agent_notify_instance(a, b->evacuating ? "instance.evacuate.error" : "instance.create.error",
                             rec, err->message);
    /* the reply says why, in the contract's terms */
    if (err->domain != VN_API_ERROR)
        g_prefix_error(&err, "%s of %s failed and was rolled back: ",
                       b->evacuating ? "evacuation" : "build", uuid);
    g_propagate_error(error, err);
    return FALSE;
}

/* A build (or evacuation) that got to its end: its hold on the image goes, the record is
 * the reply.  Always TRUE. */
static gboolean build_done(Build *b, const char *event, const char *how, json_object **result)
{
    VnAgent *a = b->a;
    g_autoptr(VnInstanceRecord) done = NULL;

    if (b->image_held)
        vn_image_cache_release(a->images, b->spec->image.id);
    done = vn_instance_store_get(a->store, b->spec->uuid);
    g_message("instance %s ('%s') %s, labels %s", b->spec->uuid, b->spec->name, how,
              done->security_label);
    vn_agent_notify_instance(a, event, done, NULL);
    vn_agent_capacity_changed(a);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}

gboolean vn_op_build(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    const VnInstanceRecord *spec = op->req->spec;
    Build b = { .op = op, .a = a, .spec = spec, .task = VN_TASK_SCHEDULING };
    GError *err = NULL;
    g_autoptr(VnInstanceRecord) rec = NULL;

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
    g_atomic_int_inc(&a->counters.builds_ok);
    return build_done(&b, "instance.create.end", "is running", result);
}

/* An evacuation the agent's restart interrupted.  When its guest runs here it had got to
 * its end (*finished); otherwise what it made here is removed, and it runs again. */
static gboolean evacuation_recover(VnOp *op, gboolean *finished, GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = op->req->spec->uuid;
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;
    VnPowerState power = VN_POWER_NOSTATE;

    *finished = FALSE;
    /* only what this very request took over is touched */
    if (!rec || g_strcmp0(rec->request_id, op->request_id) != 0)
        return TRUE;
    power = vn_guest_power(a, uuid);
    if (rec->vm_state == VN_VM_ACTIVE && rec->task_state == VN_TASK_NONE && rec->security_label &&
        power == VN_POWER_RUNNING) {
        if (!vn_guest_record_owner(a, uuid, error))
            return FALSE;
        *finished = TRUE;
        return TRUE;
    }
    g_message("instance %s: the agent restarted during its evacuation; removing what it made "
              "here and evacuating it again",
              uuid);
    if (!(vn_guest_owned_here(a, uuid) ? vn_guest_remove(a, uuid, &err)
                                       : vn_domain_undefine(a->virt, uuid, &err)))
        vn_warn_error(&err, "cleaning up the interrupted evacuation of %s", uuid);
    vn_ports_unplug(a, rec->ports, rec->ports->len);
    vn_vols_disconnect_all(a, rec->volumes, rec->volumes->len);
    vn_tracker_drop(a->tracker, uuid);
    if (!vn_instance_store_forget(a->store, uuid, error))
        return FALSE;
    vn_agent_capacity_changed(a);
    return TRUE;
}

gboolean vn_op_evacuate(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(VnInstanceRecord) rec = vn_instance_record_copy(op->req->spec);
    Build b = { .op = op, .a = a, .evacuating = TRUE, .task = VN_TASK_REBUILDING };
    GError *err = NULL;
    g_autoptr(VnInstanceRecord) done = NULL;

    if (op->replayed) {
        gboolean finished;
        if (!evacuation_recover(op, &finished, error))
            return FALSE;
        if (finished) {
            done = vn_instance_store_get(a->store, rec->uuid);
            *result = vn_instance_record_to_reply(done);
            return TRUE;
        }
    }
    if (!vn_host_check_enabled(a, "evacuated guests", error))
        return FALSE;
    /* the record as this host takes it over: active, rebuilding, nothing of its own yet */
    g_free(rec->host);
    rec->host = g_strdup(cfg->host);
    rec->vm_state = VN_VM_ACTIVE;
    rec->power_state = VN_POWER_NOSTATE;
    rec->created_at = g_get_real_time() / G_USEC_PER_SEC;
    g_free(rec->request_id);
    rec->request_id = g_strdup(op->request_id);
    for (guint i = 0; i < rec->volumes->len; i++) {
        VnVolumeSpec *v = g_ptr_array_index(rec->volumes, i);
        g_clear_pointer(&v->conn.auth_password, g_free); /* never in a record */
    }
    g_clear_pointer(&rec->image.download_url, g_free);
    if (!vn_instance_store_take_over(a->store, rec, VN_TASK_REBUILDING, TRUE, error))
        return FALSE;
    b.spec = op->req->spec;
    done = vn_instance_store_get(a->store, rec->uuid);
    g_message("evacuating instance %s ('%s') to this host", rec->uuid, rec->name);
    vn_agent_notify_instance(a, "instance.evacuate.start", done, NULL);
    g_clear_pointer(&done, vn_instance_record_free);
    if (!build_steps(&b, &err))
        return build_failed(&b, err, error);
    return build_done(&b, "instance.evacuate.end", "runs here after its evacuation", result);
}
