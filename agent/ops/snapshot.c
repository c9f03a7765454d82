/* agent/ops/snapshot.c - snapshot_instance: an image of the guest's root disk, uploaded.
 *
 *   image_snapshot: a point-in-time copy of the root disk (libvirt's push-mode backup of
 *   that disk alone: the guest runs throughout; its file systems are frozen through its
 *   guest agent for the instant the copy starts, when it has one) -> image_uploading: the
 *   copy converted to a compressed, standalone qcow2 and sent by HTTP PUT to the URL the
 *   request names -> the task ends, vm_state and power state as they were
 *
 * A stopped or suspended guest's disk is read directly.  The reply carries the image's
 * sha256 and size as sent; the record's progress follows the copy and the upload.  Every
 * file the snapshot makes is removed at its end, whatever the outcome; one the agent's
 * restart interrupted is cleaned up and reported failed (its URL's credentials were never
 * journaled, so it cannot run again by itself). */
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
#include "storage/image_upload.h"
#include "storage/runner.h"

#define SNAP_COPY   "disk.snapshot"        /* the point-in-time copy */
#define SNAP_UPLOAD "disk.snapshot.upload" /* the image as it is uploaded */

/* progress (percent of the task): the copy, then the conversion, then the upload */
#define PROGRESS_COPIED    40
#define PROGRESS_CONVERTED 50

typedef struct {
    VnOp *op;
    VnAgent *a;
    const char *uuid;
    char *copy;   /* SNAP_COPY's path */
    char *upload; /* SNAP_UPLOAD's path */
    gboolean quiesced;
} Snapshot;

static void remove_files(VnAgent *a, const char *uuid)
{
    static const char *const names[] = { SNAP_COPY, SNAP_UPLOAD };

    for (gsize i = 0; i < G_N_ELEMENTS(names); i++) {
        g_autofree char *p = vn_guest_file(a, uuid, names[i]);
        if (g_unlink(p) != 0 && errno != ENOENT)
            g_warning("removing %s: %s", p, g_strerror(errno));
    }
}

static void set_progress(Snapshot *s, int percent)
{
    vn_instance_store_set_progress(s->a->store, s->uuid, percent);
}

/* The target ("vda") of the root disk, from the domain the record describes. */
static char *root_target(VnAgent *a, const VnInstanceRecord *rec, GError **error)
{
    g_autoptr(VnDomainSpec) ds = vn_guest_domain_spec(a, rec, rec->guest_uid, error);
    g_autofree char *root = vn_guest_file(a, rec->uuid, VN_GUEST_ROOT_DISK);

    if (!ds)
        return NULL;
    for (guint i = 0; i < ds->disks->len; i++) {
        VnDiskSpec *d = g_ptr_array_index(ds->disks, i);
        if (g_strcmp0(d->path, root) == 0)
            return g_strdup(d->target);
    }
    g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                "instance %s boots from a volume: it has no root disk here to snapshot "
                "(snapshot the volume instead)",
                rec->uuid);
    return NULL;
}

/* The running guest's root disk copied into s->copy, as it is at this call. */
static gboolean copy_live(Snapshot *s, const char *target, GError **error)
{
    VnAgent *a = s->a;
    g_autoptr(GError) frozen_err = NULL;
    VnJobStats st;
    gboolean ok;

    /* consistent inside the guest when its agent can freeze it; crash-consistent else */
    s->quiesced = vn_domain_fs_freeze(a->virt, s->uuid, &frozen_err);
    if (!s->quiesced)
        g_info("snapshot of %s without quiescing: %s", s->uuid, frozen_err->message);
    ok = vn_domain_backup_begin(a->virt, s->uuid, target, s->copy, error);
    if (s->quiesced)
        vn_domain_fs_thaw(a->virt, s->uuid);
    if (!ok)
        return FALSE;
    for (;;) {
        if (g_cancellable_is_cancelled(s->op->cancel)) {
            g_autoptr(GError) e = NULL;
            if (!vn_domain_abort_job(a->virt, s->uuid, &e))
                vn_warn_error(&e, "stopping the disk copy of %s", s->uuid);
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERRUPTED,
                        "the snapshot was cancelled (the instance is being deleted)");
            return FALSE;
        }
        if (!vn_domain_job_stats(a->virt, s->uuid, FALSE, &st, error))
            return FALSE;
        if (st.state != VN_JOB_RUNNING)
            break;
        if (st.data_total > 0)
            set_progress(s, (int)(st.data_processed * PROGRESS_COPIED / st.data_total));
        g_usleep(100 * 1000);
    }
    if (!vn_domain_job_stats(a->virt, s->uuid, TRUE, &st, error))
        return FALSE;
    if (st.state != VN_JOB_COMPLETED) {
        g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_OPERATION,
                    "the copy of the root disk of instance %s %s", s->uuid,
                    st.state == VN_JOB_CANCELLED ? "was cancelled" : "failed");
        return FALSE;
    }
    return TRUE;
}

/* @from (with its backing chain) as one compressed qcow2, s->upload. */
static gboolean convert(Snapshot *s, const char *from, GError **error)
{
    const char *argv[] = { "qemu-img", "convert",    "-q", "-c",      "-O", "qcow2",
                           "-o",       "compat=1.1", from, s->upload, NULL };

    return vn_stor_run(argv, 3600, s->op->cancel, NULL, error);
}

static void on_upload(guint64 done, guint64 total, gpointer data)
{
    Snapshot *s = data;

    if (total > 0)
        set_progress(s, PROGRESS_CONVERTED + (int)(done * (100 - PROGRESS_CONVERTED) / total));
}

static gboolean take(Snapshot *s, const VnInstanceRecord *rec, char **sha256, guint64 *size,
                     GError **error)
{
    VnAgent *a = s->a;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autofree char *target = root_target(a, rec, error);
    g_autofree char *root = vn_guest_file(a, s->uuid, VN_GUEST_ROOT_DISK);
    g_autofree char *shown = vn_url_redact(s->op->req->upload_url);
    VnPowerState power = VN_POWER_NOSTATE;
    VnUploadTarget t = { s->op->req->upload_url, shown, cfg->image_ca_file,
                         cfg->image_download_timeout, cfg->image_download_low_speed_timeout };
    gboolean live;

    if (!target || !vn_domain_power_state(a->virt, s->uuid, &power, error))
        return FALSE;
    /* a QEMU has the disk open: the copy is taken through it; else the disk is read */
    live = power == VN_POWER_RUNNING || power == VN_POWER_PAUSED;
    remove_files(a, s->uuid);
    if (live && !copy_live(s, target, error))
        return FALSE;
    if (!vn_instance_store_next_task(a->store, s->uuid, VN_TASK_IMAGE_SNAPSHOT,
                                     VN_TASK_IMAGE_UPLOADING, error))
        return FALSE;
    set_progress(s, PROGRESS_COPIED);
    if (!convert(s, live ? s->copy : root, error))
        return FALSE;
    set_progress(s, PROGRESS_CONVERTED);
    return vn_image_upload(s->upload, &t, s->op->cancel, on_upload, s, sha256, size, error);
}

gboolean vn_op_snapshot(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState allowed[] = { VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_PAUSED, VN_VM_SUSPENDED,
                                         VN_VM_LAST };
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    Snapshot s = { .op = op, .a = a, .uuid = uuid };
    g_autoptr(VnInstanceRecord) rec = NULL;
    g_autoptr(VnInstanceRecord) done = NULL;
    g_autofree char *sha256 = NULL;
    g_autoptr(GError) err = NULL;
    guint64 size = 0;
    gboolean ok;
    json_object *o;

    if (op->replayed) {
        /* a copy libvirt still runs for it is stopped; its files go */
        g_autoptr(GError) e = NULL;
        if (!vn_domain_abort_job(a->virt, uuid, &e))
            g_debug("no disk copy of %s left to stop: %s", uuid, e->message);
        remove_files(a, uuid);
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INTERRUPTED,
                    "the agent restarted during the snapshot of %s; its files were removed: "
                    "send it again",
                    uuid);
        return FALSE;
    }
    if (!vn_instance_store_begin_task(a->store, uuid, allowed, VN_TASK_IMAGE_SNAPSHOT,
                                      op->request_id, error))
        return FALSE;
    rec = vn_instance_store_get(a->store, uuid);
    vn_agent_notify_instance(a, "instance.snapshot.start", rec, NULL);
    s.copy = vn_guest_file(a, uuid, SNAP_COPY);
    s.upload = vn_guest_file(a, uuid, SNAP_UPLOAD);
    ok = take(&s, rec, &sha256, &size, &err);
    remove_files(a, uuid);
    g_free(s.copy);
    g_free(s.upload);
    {
        /* the task ends where it is: the guest's state never changed */
        g_autoptr(VnInstanceRecord) now = vn_instance_store_get(a->store, uuid);
        g_autoptr(GError) e = NULL;
        if (now && !vn_instance_store_end_task(a->store, uuid, now->task_state, rec->vm_state,
                                               vn_guest_power(a, uuid), &e))
            vn_warn_error(&e, "ending the snapshot of instance %s", uuid);
    }
    done = vn_instance_store_get(a->store, uuid);
    if (!ok) {
        vn_agent_notify_instance(a, "instance.snapshot.error", done, err->message);
        g_prefix_error(&err, "snapshot of %s failed: ", uuid);
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    g_message("instance %s: snapshot '%s' uploaded, %" G_GUINT64_FORMAT " bytes, sha256 %s%s", uuid,
              op->req->image_id, size, sha256, s.quiesced ? ", quiesced" : "");
    vn_agent_notify_instance(a, "instance.snapshot.end", done, NULL);
    o = json_object_new_object();
    json_object_object_add(o, "image_id", json_object_new_string(op->req->image_id));
    json_object_object_add(o, "disk_format", json_object_new_string("qcow2"));
    json_object_object_add(o, "container_format", json_object_new_string("bare"));
    json_object_object_add(o, "size", json_object_new_int64((gint64)size));
    json_object_object_add(o, "sha256", json_object_new_string(sha256));
    json_object_object_add(o, "quiesced", json_object_new_boolean(s.quiesced));
    json_object_object_add(o, "instance", vn_instance_record_to_reply(done));
    *result = o;
    return TRUE;
}
