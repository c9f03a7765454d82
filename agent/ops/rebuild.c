/* agent/ops/rebuild.c - rebuild_instance: the guest's root disk made again, on this host,
 * from its image or a new one; the domain keeps its uuid, ports and volumes.  With
 * recreate it is an evacuation (vn_op_evacuate, build.c).
 *
 *   rebuilding: the new root disk is made beside the old one while the guest still runs,
 *   then the guest is stopped -> rebuild_spawning: the record takes the new image, the new
 *   disk replaces the old, the domain is defined again and started -> active/running
 *
 * Until the new disk replaces the old one a failure (a download, the disk, the stop) puts
 * the guest back as it was: running if it ran.  After it, a failure leaves the instance in
 * vm_state error with the fault, as Nova's rebuild does.  A rebuild the agent's restart
 * interrupted is run again from its journaled request. */
#include <errno.h>
#include <string.h>

#include <glib/gstdio.h>

#include "agent/base/log.h"
#include "agent/ops/guest.h"
#include "agent/ops/ops.h"
#include "agent/virt/domain.h"
#include "agent/virt/domain_xml.h"
#include "agent/virt/virt.h"
#include "api/error.h"
#include "storage/disk.h"

#define NEW_ROOT_DISK VN_GUEST_ROOT_DISK ".rebuild"

typedef struct {
    VnOp *op;
    VnAgent *a;
    const char *uuid;
    const VnImageRef *image;
    VnTaskState task;
    gboolean was_running;
    gboolean image_held;
    gboolean swapped; /* the new disk replaced the old one */
} Rebuild;

static void drop_new_disk(VnAgent *a, const char *uuid)
{
    g_autofree char *path = vn_guest_file(a, uuid, NEW_ROOT_DISK);

    if (g_unlink(path) != 0 && errno != ENOENT)
        g_warning("removing %s: %s", path, g_strerror(errno));
}

/* The new root disk, beside the old one. */
static gboolean make_new_disk(Rebuild *r, const VnInstanceRecord *rec, GError **error)
{
    VnAgent *a = r->a;
    const VnImageRef *im = r->image;
    VnImageSource src = { im->id, im->download_url ? im->download_url : im->url, im->sha256,
                          im->disk_format, (guint64)im->size };
    g_autofree char *path = vn_guest_file(a, r->uuid, NEW_ROOT_DISK);
    g_autofree char *base = NULL;

    drop_new_disk(a, r->uuid); /* a leftover of an interrupted rebuild */
    base = vn_image_cache_acquire(a->images, &src, r->op->cancel, NULL, NULL, error);
    if (!base)
        return FALSE;
    r->image_held = TRUE;
    if (!vn_disk_create_overlay(path, base, im->disk_format, (guint64)rec->flavor.root_gb << 30,
                                r->op->cancel, error)) {
        g_prefix_error(error, "the new root disk of %s from image '%s': ", r->uuid, im->id);
        return FALSE;
    }
    return TRUE;
}

/* The new disk takes the old one's place and the record the new image. */
static gboolean swap_disks(Rebuild *r, GError **error)
{
    VnAgent *a = r->a;
    g_autofree char *from = vn_guest_file(a, r->uuid, NEW_ROOT_DISK);
    g_autofree char *to = vn_guest_file(a, r->uuid, VN_GUEST_ROOT_DISK);
    g_autofree char *base = NULL;

    /* the record first: an interrupted rebuild that finds it runs again from it */
    if (!vn_instance_store_set_image(a->store, r->uuid, r->image, error))
        return FALSE;
    if (g_rename(from, to) != 0) {
        g_set_error(error, G_FILE_ERROR, g_file_error_from_errno(errno), "replacing %s: %s", to,
                    g_strerror(errno));
        return FALSE;
    }
    r->swapped = TRUE;
    base = vn_disk_backing_file(to, error);
    return base && vn_guest_record_backing(a, r->uuid, base, error);
}

/* The domain defined again from the record (with its new image) and started. */
static gboolean respawn(Rebuild *r, char **labels, GError **error)
{
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(r->a->store, r->uuid);

    if (!rec) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND, "instance %s vanished", r->uuid);
        return FALSE;
    }
    return vn_guest_define_and_start(r->a, rec, r->op->cancel, labels, error);
}

/* Fails the rebuild: before the swap the guest is put back as it was, after it the
 * instance is in error.  Always FALSE. */
static gboolean rebuild_failed(Rebuild *r, const VnInstanceRecord *before, GError *err,
                               GError **error)
{
    VnAgent *a = r->a;
    g_autoptr(VnInstanceRecord) now = NULL;
    g_autoptr(GError) e = NULL;

    if (!r->swapped) {
        drop_new_disk(a, r->uuid);
        if (r->was_running && vn_guest_power(a, r->uuid) != VN_POWER_RUNNING &&
            !vn_domain_start(a->virt, r->uuid, &e))
            vn_warn_error(&e, "starting instance %s again after its failed rebuild", r->uuid);
        if (!vn_instance_store_end_task(a->store, r->uuid, r->task, before->vm_state,
                                        vn_guest_power(a, r->uuid), &e))
            vn_warn_error(&e, "ending the rebuild of instance %s", r->uuid);
        g_prefix_error(&err, "rebuild of %s failed; the guest is as it was: ", r->uuid);
    } else {
        if (!vn_instance_store_set_error(a->store, r->uuid, "RebuildFailed", err->message, &e))
            vn_warn_error(&e, "recording the fault of instance %s", r->uuid);
        g_prefix_error(&err, "rebuild of %s failed after its new disk was in place: ", r->uuid);
    }
    if (r->image_held)
        vn_image_cache_release(a->images, r->image->id);
    now = vn_instance_store_get(a->store, r->uuid);
    vn_agent_notify_instance(a, "instance.rebuild.error", now, err->message);
    vn_agent_capacity_changed(a);
    g_propagate_error(error, err);
    return FALSE;
}

static gboolean rebuild_here(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState allowed[] = { VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_ERROR, VN_VM_LAST };
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    const char *uuid = op->req->instance_uuid;
    g_autoptr(VnInstanceRecord) before = vn_instance_store_get(a->store, uuid);
    g_autoptr(VnInstanceRecord) done = NULL;
    g_autofree char *labels = NULL;
    Rebuild r = { .op = op, .a = a, .uuid = uuid, .task = VN_TASK_REBUILDING };
    GError *err = NULL;
    gboolean graceful = FALSE;

    if (!before || before->vm_state == VN_VM_DELETED) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND, "instance %s is not on this host",
                    uuid);
        return FALSE;
    }
    r.image = op->req->image ? op->req->image : &before->image;
    if (!r.image->id) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "instance %s boots from a volume: it has no root disk here to rebuild", uuid);
        return FALSE;
    }
    if (!vn_instance_store_begin_task(a->store, uuid, allowed, VN_TASK_REBUILDING, op->request_id,
                                      error))
        return FALSE;
    vn_agent_notify_instance(a, "instance.rebuild.start", before, NULL);
    r.was_running = vn_guest_power(a, uuid) == VN_POWER_RUNNING;
    if (!make_new_disk(&r, before, &err))
        return rebuild_failed(&r, before, err, error);
    /* the new disk is ready: only now does the guest stop (an instance in error may have
     * no domain left: the rebuild defines it again) */
    if ((vn_guest_power(a, uuid) != VN_POWER_NOSTATE &&
         !vn_domain_stop(a->virt, uuid, cfg->shutdown_timeout, cfg->shutdown_retry_interval, TRUE,
                         op->cancel, &graceful, &err)) ||
        !vn_instance_store_next_task(a->store, uuid, VN_TASK_REBUILDING, VN_TASK_REBUILD_SPAWNING,
                                     &err))
        return rebuild_failed(&r, before, err, error);
    r.task = VN_TASK_REBUILD_SPAWNING;
    if (!swap_disks(&r, &err) || !respawn(&r, &labels, &err) ||
        !vn_instance_store_launched(a->store, uuid, VN_TASK_REBUILD_SPAWNING, labels, &err))
        return rebuild_failed(&r, before, err, error);
    vn_image_cache_release(a->images, r.image->id);
    done = vn_instance_store_get(a->store, uuid);
    g_message("instance %s rebuilt from image '%s' (the guest stopped %s)", uuid, r.image->id,
              graceful ? "gracefully" : "by force");
    vn_agent_notify_instance(a, "instance.rebuild.end", done, NULL);
    vn_agent_capacity_changed(a);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}

gboolean vn_op_rebuild(VnOp *op, json_object **result, GError **error)
{
    if (op->req->recreate)
        return vn_op_evacuate(op, result, error);
    return rebuild_here(op, result, error);
}
