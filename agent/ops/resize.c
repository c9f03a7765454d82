/* agent/ops/resize.c - resize and cold migration: a guest moved to another host (or kept on
 * this one) and started there with a new flavor (or the same), the old one kept until the
 * controller confirms or reverts.  Nova's prep_resize -> resize_instance -> finish_resize
 * -> confirm_resize / revert_resize.
 *
 *   resize_instance, on the source: the destination claims the new flavor (prep_resize;
 *   a flavor that does not fit is refused before anything moves) -> the guest is stopped
 *   and its folder set aside as "<uuid>_resize" -> its disks go to the destination's
 *   folder: copied in place when the storage is shared (or the host is the same), sent
 *   over the destination's libvirt connection otherwise (storage streams) -> finish_resize
 *   on the destination: the root disk grown, the domain defined with the new flavor and
 *   started; vm_state resized.  The source keeps its copy (task resize_migrated).
 *   confirm_resize, on the destination: the source removes its copy; vm_state active.
 *   revert_resize, on the destination: the new guest goes, the source puts its folder back
 *   and starts the old guest as it was.
 *
 * A resize that fails anywhere before the guest runs on the destination is undone on both
 * hosts, and the guest runs again as it was.  Each step is journaled; a step the agent's
 * restart interrupted finishes or is undone from what it finds (replays below).
 *
 * What a resize does not change: the ephemeral and swap disks (a flavor that changes them
 * is refused), the root disk never shrinks, and a guest with volumes moves to another host
 * only once they are detached (it may be resized on its own host). */
#include <errno.h>
#include <string.h>

#include <glib/gstdio.h>

#include "agent/base/log.h"
#include "agent/ops/guest.h"
#include "agent/ops/migration.h"
#include "agent/ops/ops.h"
#include "agent/ops/ports.h"
#include "agent/ops/volumes.h"
#include "agent/virt/domain.h"
#include "agent/virt/transfer.h"
#include "agent/virt/virt.h"
#include "api/error.h"
#include "api/json.h"
#include "storage/disk.h"
#include "storage/runner.h"

#define SET_ASIDE      "_resize"     /* the source's folder while the resize is open */
#define RESIZE_NOTE    "resize.json" /* in the new folder: where the guest came from */
#define OLD_RECORD     "record.json" /* in the set-aside folder: the record before the resize */
#define PEER_TIMEOUT_S 3600

/* the files of a guest's folder that move with it */
static const char *const moving[] = { VN_GUEST_ROOT_DISK,    VN_GUEST_EPHEMERAL_DISK,
                                      VN_GUEST_SWAP_DISK,    VN_GUEST_BACKING,
                                      VN_GUEST_CONFIG_DRIVE, NULL };

static char *aside_dir(VnAgent *a, const char *uuid)
{
    g_autofree char *dir = vn_agent_instance_dir(a, uuid);

    return g_strconcat(dir, SET_ASIDE, NULL);
}

static gboolean is_here(VnAgent *a, const char *host)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);

    return !host || g_strcmp0(host, cfg->host) == 0;
}

static char *claim_key(const char *uuid)
{
    return g_strconcat(uuid, "#resize", NULL);
}

static gboolean resize_error(GError **error, const char *fmt, ...) G_GNUC_PRINTF(2, 3);
static gboolean resize_error(GError **error, const char *fmt, ...)
{
    va_list ap;

    g_autofree char *msg = NULL;

    va_start(ap, fmt);
    msg = g_strdup_vprintf(fmt, ap);
    va_end(ap);
    g_set_error_literal(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED, msg);
    return FALSE;
}

static void warn_if(gboolean ok, GError **err, const char *what, const char *uuid)
{
    if (!ok)
        vn_warn_error(err, "%s of instance %s", what, uuid);
    g_clear_error(err);
}

/* ------------------------------------------------------------------ the notes */

static gboolean write_json(const char *path, json_object *o, GError **error)
{
    g_autofree char *text = vn_json_to_string(o);

    return g_file_set_contents_full(path, text, -1, G_FILE_SET_CONTENTS_CONSISTENT, 0600, error);
}

static json_object *read_json(const char *path)
{
    g_autofree char *text = NULL;
    gsize len = 0;

    if (!g_file_get_contents(path, &text, &len, NULL))
        return NULL;
    return vn_json_parse_strict(text, len, NULL);
}

/* The note the destination keeps in the guest's new folder. */
typedef struct {
    char *source_host;
    char *migration_id;
    gboolean shared;
} ResizeNote;

static void note_clear(ResizeNote *n)
{
    g_clear_pointer(&n->source_host, g_free);
    g_clear_pointer(&n->migration_id, g_free);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(ResizeNote, note_clear)

static gboolean read_note(VnAgent *a, const char *uuid, ResizeNote *n, GError **error)
{
    g_autofree char *path = vn_guest_file(a, uuid, RESIZE_NOTE);
    g_autoptr(json_object) o = read_json(path);
    json_object *src = o ? vn_json_member(o, "source_host") : NULL;
    json_object *mid = o ? vn_json_member(o, "migration_id") : NULL;

    if (!src || !json_object_is_type(src, json_type_string) || !mid ||
        !json_object_is_type(mid, json_type_string))
        return resize_error(error, "instance %s has no open resize here (%s unreadable)", uuid,
                            path);
    n->source_host = g_strdup(json_object_get_string(src));
    n->migration_id = g_strdup(json_object_get_string(mid));
    n->shared = json_object_get_boolean(vn_json_member(o, "shared"));
    return TRUE;
}

/* ------------------------------------------------------------------ destination side */

/* prep_resize: refuses what this host cannot take, claims the new flavor, fetches the base
 * image and makes the folder the disks are sent into (when it is not the source's). */
static gboolean dest_prep(VnAgent *a, const VnInstanceRecord *inst, const char *probe,
                          gboolean same_host, json_object **out, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autofree char *key = claim_key(inst->uuid);
    g_autofree char *dir = vn_agent_instance_dir(a, inst->uuid);
    gboolean shared = same_host;

    if (!same_host && (!vn_host_check_enabled(a, "incoming guests", error) ||
                       !vn_ports_check(a, inst->ports, error)))
        return FALSE;
    if (!vn_tracker_claim(a->tracker, key, &inst->flavor, error))
        return FALSE;
    vn_agent_capacity_changed(a);
    if (!same_host && probe) {
        g_autofree char *p = g_build_filename(cfg->instances_path, probe, NULL);
        shared = g_file_test(p, G_FILE_TEST_EXISTS);
    }
    if (!same_host && !shared && g_file_test(dir, G_FILE_TEST_EXISTS)) {
        vn_tracker_drop(a->tracker, key);
        return resize_error(error, "a folder of instance %s exists on %s already", inst->uuid,
                            cfg->host);
    }
    if (inst->image.id) {
        /* the overlay that arrives needs its base in this host's cache */
        VnImageSource src = { inst->image.id, inst->image.url, inst->image.sha256,
                              inst->image.disk_format, (guint64)inst->image.size };
        g_autofree char *base = vn_image_cache_acquire(a->images, &src, NULL, NULL, NULL, error);
        if (!base) {
            vn_tracker_drop(a->tracker, key);
            return FALSE;
        }
        vn_image_cache_release(a->images, inst->image.id);
    }
    if (!same_host && !shared && !vn_guest_prepare_dir(a, inst->uuid, 0, error)) {
        vn_tracker_drop(a->tracker, key);
        vn_disk_remove_tree(dir, NULL);
        return FALSE;
    }
    *out = json_object_new_object();
    json_object_object_add(*out, "is_shared_instance_path", json_object_new_boolean(shared));
    json_object_object_add(*out, "dest_uri",
                           json_object_new_string(cfg->live_migration_target_uri));
    json_object_object_add(*out, "dest_instances_path", json_object_new_string(dir));
    return TRUE;
}

/* The root disk grown to the flavor's size (never shrunk). */
static gboolean grow_root(VnAgent *a, const VnInstanceRecord *rec, GCancellable *cancel,
                          GError **error)
{
    g_autofree char *root = vn_guest_file(a, rec->uuid, VN_GUEST_ROOT_DISK);
    g_autofree char *size = g_strdup_printf("%dG", rec->flavor.root_gb);
    const char *argv[] = { "qemu-img", "resize", "-q", "-f", "qcow2", root, size, NULL };
    guint64 now = 0;

    if (!rec->image.id || rec->flavor.root_gb <= 0)
        return TRUE;
    if (!vn_disk_virtual_size(root, &now, error))
        return FALSE;
    if (now >= (guint64)rec->flavor.root_gb << 30)
        return TRUE;
    return vn_stor_run(argv, 600, cancel, NULL, error);
}

/* Undoes the destination's part: the new guest, its ports, its record, its claims, and its
 * folder when it is this host's own (not the source's shared one). */
static void dest_undo(VnAgent *a, const char *uuid, gboolean shared)
{
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autofree char *key = claim_key(uuid);
    g_autofree char *dir = vn_agent_instance_dir(a, uuid);
    g_autoptr(GError) err = NULL;

    if (rec && (rec->task_state == VN_TASK_RESIZE_FINISH || rec->vm_state == VN_VM_RESIZED ||
                rec->task_state == VN_TASK_RESIZE_REVERTING)) {
        warn_if(vn_domain_undefine(a->virt, uuid, &err), &err, "removing the new guest", uuid);
        vn_ports_unplug(a, rec->ports, rec->ports->len);
        warn_if(vn_instance_store_forget(a->store, uuid, &err), &err, "forgetting the record",
                uuid);
        vn_tracker_drop(a->tracker, uuid);
    }
    if (!shared)
        warn_if(vn_disk_remove_tree(dir, &err), &err, "removing the new folder", uuid);
    vn_tracker_drop(a->tracker, key);
    vn_agent_capacity_changed(a);
}

/* finish_resize: the guest, with its new flavor, defined and started here; vm_state
 * resized.  On the same host the record is the source's own. */
static gboolean dest_finish(VnOp *op, const VnInstanceRecord *inst, const char *source,
                            const char *migration_id, gboolean shared, json_object **result,
                            GError **error)
{
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autofree char *key = claim_key(inst->uuid);
    g_autofree char *note = vn_guest_file(a, inst->uuid, RESIZE_NOTE);
    g_autofree char *labels = NULL;
    g_autoptr(VnInstanceRecord) rec = NULL;
    g_autoptr(json_object) n = json_object_new_object();
    gboolean same_host = is_here(a, source);
    gboolean start = inst->vm_state == VN_VM_ACTIVE;
    guint plugged = 0;

    if (same_host) {
        if (!vn_instance_store_set_flavor(a->store, inst->uuid, &inst->flavor, error) ||
            !vn_instance_store_next_task(a->store, inst->uuid, VN_TASK_RESIZE_MIGRATING,
                                         VN_TASK_RESIZE_FINISH, error))
            return FALSE;
    } else {
        g_autoptr(VnInstanceRecord) in = vn_instance_record_copy(inst);
        int uid = 0;
        g_free(in->host);
        in->host = g_strdup(cfg->host);
        in->power_state = VN_POWER_NOSTATE;
        if (!vn_instance_store_take_over(a->store, in, VN_TASK_RESIZE_FINISH, TRUE, error))
            return FALSE;
        if (cfg->per_guest_dac && a->dac_available) {
            uid = vn_instance_store_allocate_uid(a->store, inst->uuid, cfg->guest_uid_min,
                                                 cfg->guest_uid_max, error);
            if (uid == 0)
                return FALSE;
        }
        if (!vn_ports_plug(a, inst->ports, &plugged, error)) {
            vn_ports_unplug(a, inst->ports, plugged);
            return FALSE;
        }
        if (!vn_guest_record_owner(a, inst->uuid, error))
            return FALSE;
    }
    json_object_object_add(n, "source_host", json_object_new_string(source));
    json_object_object_add(n, "migration_id", json_object_new_string(migration_id));
    json_object_object_add(n, "shared", json_object_new_boolean(shared));
    rec = vn_instance_store_get(a->store, inst->uuid);
    if (!rec || !write_json(note, n, error) || !grow_root(a, rec, op->cancel, error))
        return FALSE;
    if (start) {
        if (!vn_guest_define_and_start(a, rec, op->cancel, &labels, error) ||
            !vn_instance_store_set_label(a->store, inst->uuid, labels, error))
            return FALSE;
    } else {
        /* a stopped guest stays stopped: only its definition changes */
        g_autoptr(VnDomainSpec) ds = NULL;
        g_autofree char *xml = NULL;
        if (!vn_guest_prepare_dir(a, rec->uuid, rec->guest_uid, error) ||
            !(ds = vn_guest_domain_spec(a, rec, rec->guest_uid, error)) ||
            !(xml = vn_domain_xml_build(ds, error)) || !vn_domain_redefine(a->virt, xml, error))
            return FALSE;
    }
    if (!vn_instance_store_end_task(a->store, inst->uuid, VN_TASK_RESIZE_FINISH, VN_VM_RESIZED,
                                    vn_guest_power(a, inst->uuid), error))
        return FALSE;
    /* the claim is the instance's now */
    vn_tracker_claim(a->tracker, inst->uuid, &inst->flavor, NULL);
    vn_tracker_drop(a->tracker, key);
    vn_agent_capacity_changed(a);
    rec = (vn_instance_record_free(rec), vn_instance_store_get(a->store, inst->uuid));
    vn_agent_notify_instance(a, "instance.resize_finish.end", rec, NULL);
    *result = vn_instance_record_to_reply(rec);
    return TRUE;
}

static VnInstanceRecord *md_instance(json_object *md, GError **error)
{
    json_object *inst = vn_json_member(md, "instance");

    if (!inst) {
        resize_error(error, "migrate_data.instance: missing");
        return NULL;
    }
    return vn_instance_record_from_json(inst, error);
}

gboolean vn_op_prep_resize(VnOp *op, json_object **result, GError **error)
{
    g_autoptr(VnInstanceRecord) inst = md_instance(op->req->migrate_data, error);

    return inst && dest_prep(op->agent, inst, vn_md_str(op->req->migrate_data, "probe_name"), FALSE,
                             result, error);
}

gboolean vn_op_finish_resize(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    json_object *md = op->req->migrate_data;
    g_autoptr(VnInstanceRecord) inst = md_instance(md, error);
    gboolean shared = vn_md_bool(md, "is_shared_instance_path");
    GError *err = NULL;

    if (!inst)
        return FALSE;
    if (op->replayed) {
        /* finished if the guest got to run; undone otherwise (the source undoes its part) */
        g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, inst->uuid);
        if (rec && rec->vm_state == VN_VM_RESIZED && rec->task_state == VN_TASK_NONE) {
            *result = vn_instance_record_to_reply(rec);
            return TRUE;
        }
        dest_undo(a, inst->uuid, shared);
        return resize_error(error,
                            "the agent of the destination restarted while it started "
                            "instance %s; undone there",
                            inst->uuid);
    }
    if (!dest_finish(op, inst, op->req->source_host, vn_md_str(md, "migration_id"), shared, result,
                     &err)) {
        dest_undo(a, inst->uuid, shared);
        g_propagate_error(error, err);
        return FALSE;
    }
    return TRUE;
}

gboolean vn_op_abort_resize_dest(VnOp *op, json_object **result, GError **error)
{
    (void)error;
    dest_undo(op->agent, op->req->instance_uuid,
              vn_md_bool(op->req->migrate_data, "is_shared_instance_path"));
    *result = json_object_new_object();
    return TRUE;
}

/* ------------------------------------------------------------------ source side */

typedef struct {
    VnOp *op;
    VnAgent *a;
    const char *uuid;
    char *dest;
    gboolean same_host;
    char *migration_id;
    VnInstanceRecord *before; /* the record as it was */
    VnInstanceRecord *after;  /* with the new flavor */
    gboolean prepared;        /* the destination claimed */
    gboolean shared;
    gboolean set_aside; /* the folder is "<uuid>_resize" */
    gboolean new_dir;   /* the source made the new folder (shared storage) */
    gboolean was_running;
    char *dest_uri;
    char *dest_dir;
} Resize;

static void resize_clear(Resize *r)
{
    g_free(r->dest);
    g_free(r->migration_id);
    vn_instance_record_free(r->before);
    vn_instance_record_free(r->after);
    g_free(r->dest_uri);
    g_free(r->dest_dir);
}
G_DEFINE_AUTO_CLEANUP_CLEAR_FUNC(Resize, resize_clear)

static void on_sent(guint64 done, guint64 total, gpointer data)
{
    Resize *r = data;

    if (total > 0)
        vn_instance_store_set_progress(r->a->store, r->uuid, (int)(done * 100 / total));
}

/* The flavor change a resize can make, checked before anything moves. */
static gboolean check_flavor(const VnInstanceRecord *rec, const VnFlavor *f, GError **error)
{
    if (f->root_gb < rec->flavor.root_gb)
        return vn_api_invalid(error,
                              "flavor.root_gb %d: the root disk of %s (%d GiB) cannot shrink",
                              f->root_gb, rec->uuid, rec->flavor.root_gb);
    if (f->ephemeral_gb != rec->flavor.ephemeral_gb || f->swap_mb != rec->flavor.swap_mb)
        return vn_api_invalid(error,
                              "flavor: a resize keeps the ephemeral and swap disks "
                              "(%d GiB, %d MiB) as they are",
                              rec->flavor.ephemeral_gb, rec->flavor.swap_mb);
    return TRUE;
}

/* A destination's refusal keeps its class (InsufficientResources, ComputeHostDisabled, ...)
 * when the reply named one of the contract's. */
static void keep_peer_class(GError *err)
{
    if (!err || err->domain == VN_API_ERROR)
        return;
    for (int c = 0; c < VN_API_ERROR_LAST; c++) {
        g_autofree char *tag = g_strdup_printf(" %s: ", vn_api_error_class(c));
        if (strstr(err->message, tag)) {
            err->domain = VN_API_ERROR;
            err->code = c;
            return;
        }
    }
}

/* The destination's claim, and whether it sees this host's instance storage. */
static gboolean prepare(Resize *r, GError **error)
{
    VnAgent *a = r->a;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autoptr(json_object) out = NULL;
    g_autoptr(json_object) md = json_object_new_object();
    g_autofree char *rnd = g_uuid_string_random();
    g_autofree char *probe = g_strdup_printf(".vn-probe-%s", rnd);
    g_autofree char *probe_path = g_build_filename(cfg->instances_path, probe, NULL);
    gboolean ok;

    if (r->same_host) {
        ok = dest_prep(a, r->after, NULL, TRUE, &out, error);
    } else {
        /* a file here that the destination looks for: shared storage shows it */
        if (!g_file_set_contents(probe_path, "", 0, error))
            return FALSE;
        json_object_object_add(md, "migration_id", json_object_new_string(r->migration_id));
        json_object_object_add(md, "probe_name", json_object_new_string(probe));
        json_object_object_add(md, "instance", vn_instance_record_to_json(r->after));
        out = vn_peer_call(a, r->dest, "prep_resize", r->uuid, md, 900, error);
        g_unlink(probe_path);
        ok = out != NULL;
        if (!ok)
            keep_peer_class(*error);
    }
    if (!ok)
        return FALSE;
    r->prepared = TRUE;
    r->shared = vn_md_bool(out, "is_shared_instance_path");
    r->dest_uri = g_strdup(vn_md_str(out, "dest_uri"));
    r->dest_dir = g_strdup(vn_md_str(out, "dest_instances_path"));
    if (!r->shared && (!r->dest_uri || !r->dest_dir))
        return resize_error(error, "prep_resize on %s said nothing of where the disks go", r->dest);
    return TRUE;
}

/* The guest stopped, its folder set aside and its disks where the destination finds them. */
static gboolean move_disks(Resize *r, GError **error)
{
    VnAgent *a = r->a;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    g_autofree char *dir = vn_agent_instance_dir(a, r->uuid);
    g_autofree char *aside = aside_dir(a, r->uuid);
    g_autofree char *old = g_build_filename(aside, OLD_RECORD, NULL);
    g_autoptr(json_object) before = vn_instance_record_to_json(r->before);
    g_autoptr(GPtrArray) names = g_ptr_array_new();
    gboolean graceful = FALSE;

    r->was_running = vn_guest_power(a, r->uuid) == VN_POWER_RUNNING;
    if (!vn_domain_stop(a->virt, r->uuid, cfg->shutdown_timeout, cfg->shutdown_retry_interval, TRUE,
                        r->op->cancel, &graceful, error))
        return FALSE;
    if (g_file_test(aside, G_FILE_TEST_EXISTS))
        return resize_error(error, "%s exists: an earlier resize of %s was not cleaned up", aside,
                            r->uuid);
    if (g_rename(dir, aside) != 0)
        return resize_error(error, "setting %s aside: %s", dir, g_strerror(errno));
    r->set_aside = TRUE;
    if (!write_json(old, before, error))
        return FALSE;
    for (const char *const *n = moving; *n; n++) {
        g_autofree char *p = g_build_filename(aside, *n, NULL);
        if (g_file_test(p, G_FILE_TEST_EXISTS))
            g_ptr_array_add(names, (gpointer)*n);
    }
    g_ptr_array_add(names, NULL);
    if (!r->shared) {
        return vn_transfer_files(r->dest_uri, aside, r->dest_dir, (const char *const *)names->pdata,
                                 r->op->cancel, on_sent, r, error);
    }
    /* shared storage (or this host): a copy beside the one set aside, console included */
    r->new_dir = TRUE;
    if (!vn_guest_prepare_dir(a, r->uuid, r->before->guest_uid, error))
        return FALSE;
    names->pdata[names->len - 1] = (gpointer)VN_GUEST_CONSOLE;
    g_ptr_array_add(names, NULL);
    for (guint i = 0; i + 1 < names->len; i++) {
        const char *n = g_ptr_array_index(names, i);
        g_autofree char *from = g_build_filename(aside, n, NULL);
        g_autofree char *to = g_build_filename(dir, n, NULL);
        const char *argv[] = { "cp", "--sparse=always", "--preserve=mode", from, to, NULL };
        if (!vn_stor_run(argv, 3600, r->op->cancel, NULL, error))
            return FALSE;
        on_sent(i + 1, names->len - 1, r);
    }
    return TRUE;
}

/* Puts the set-aside folder back: the new one (if this host made it) goes first. */
static void restore_folder(VnAgent *a, const char *uuid, gboolean remove_new)
{
    g_autofree char *dir = vn_agent_instance_dir(a, uuid);
    g_autofree char *aside = aside_dir(a, uuid);
    g_autofree char *old = g_build_filename(aside, OLD_RECORD, NULL);
    g_autoptr(GError) err = NULL;

    if (!g_file_test(aside, G_FILE_TEST_IS_DIR))
        return;
    if (remove_new)
        warn_if(vn_disk_remove_tree(dir, &err), &err, "removing the new folder", uuid);
    g_unlink(old);
    if (g_rename(aside, dir) != 0)
        g_warning("putting the folder of %s back: %s", uuid, g_strerror(errno));
}

/* Undoes a resize that did not get to its end: the guest runs again as it was. */
static void undo(Resize *r)
{
    VnAgent *a = r->a;
    g_autoptr(GError) err = NULL;

    if (r->prepared && !r->same_host) {
        g_autoptr(json_object) md = json_object_new_object();
        g_autoptr(json_object) out = NULL;
        json_object_object_add(md, "is_shared_instance_path", json_object_new_boolean(r->shared));
        out = vn_peer_call(a, r->dest, "abort_resize_at_destination", r->uuid, md, 300, &err);
        warn_if(out != NULL, &err, "undoing the destination's part of the resize", r->uuid);
    } else if (r->prepared) {
        g_autofree char *key = claim_key(r->uuid);
        vn_tracker_drop(a->tracker, key);
        vn_tracker_claim(a->tracker, r->uuid, &r->before->flavor, NULL);
    }
    if (r->set_aside)
        restore_folder(a, r->uuid, r->new_dir);
    if (r->same_host)
        warn_if(vn_instance_store_set_flavor(a->store, r->uuid, &r->before->flavor, &err), &err,
                "restoring the flavor", r->uuid);
    if (r->same_host || r->set_aside) {
        /* the definition the guest had (on this host it may have been replaced) */
        g_autoptr(VnDomainSpec) ds = vn_guest_domain_spec(a, r->before, r->before->guest_uid, &err);
        g_autofree char *xml = ds ? vn_domain_xml_build(ds, &err) : NULL;
        warn_if(xml && vn_domain_redefine(a->virt, xml, &err), &err, "defining the guest again",
                r->uuid);
    }
    if (r->was_running && vn_guest_power(a, r->uuid) != VN_POWER_RUNNING)
        warn_if(vn_domain_start(a->virt, r->uuid, &err), &err, "starting the guest again", r->uuid);
    vn_agent_capacity_changed(a);
}

static gboolean run_resize(Resize *r, json_object **result, GError **error)
{
    VnAgent *a = r->a;
    g_autoptr(json_object) md = json_object_new_object();
    g_autoptr(json_object) done = NULL;

    if (!prepare(r, error) ||
        !vn_instance_store_next_task(a->store, r->uuid, VN_TASK_RESIZE_PREP,
                                     VN_TASK_RESIZE_MIGRATING, error) ||
        !move_disks(r, error))
        return FALSE;
    if (r->same_host)
        return dest_finish(r->op, r->after, r->dest, r->migration_id, TRUE, result, error);
    /* from here the destination's writes are the newer: the source's copy waits, in a task
     * that keeps every periodic pass away from it */
    if (!vn_instance_store_next_task(a->store, r->uuid, VN_TASK_RESIZE_MIGRATING,
                                     VN_TASK_RESIZE_MIGRATED, error))
        return FALSE;
    json_object_object_add(md, "migration_id", json_object_new_string(r->migration_id));
    json_object_object_add(md, "is_shared_instance_path", json_object_new_boolean(r->shared));
    json_object_object_add(md, "instance", vn_instance_record_to_json(r->after));
    done = vn_peer_call(a, r->dest, "finish_resize", r->uuid, md, PEER_TIMEOUT_S, error);
    if (!done)
        return FALSE;
    *result = g_steal_pointer(&done);
    return TRUE;
}

/* A resize the source's restart interrupted: finished when the guest runs on the
 * destination, undone otherwise.  TRUE with *@finished when finished. */
static gboolean resize_recover(Resize *r, gboolean *finished, GError **error)
{
    VnAgent *a = r->a;
    g_autofree char *aside = aside_dir(a, r->uuid);
    g_autoptr(GError) err = NULL;
    static const VnVmState any[] = { VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_LAST };

    *finished = FALSE;
    r->set_aside = g_file_test(aside, G_FILE_TEST_IS_DIR);
    if (r->set_aside && !r->same_host) {
        /* the destination says whether the guest got there */
        g_autoptr(json_object) args = json_object_new_object();
        json_object *there = NULL;
        json_object_object_add(args, "instance_uuid", json_object_new_string(r->uuid));
        if (!a->rpc ||
            !vn_rpc_call(a->rpc, r->dest, "get_instance", args, "1.0", NULL, 60, 0, &there, &err)) {
            if (!err || !strstr(err->message, "InstanceNotFound")) {
                /* unknown: nothing is undone that may run there */
                g_set_error(error, VN_API_ERROR, VN_API_ERROR_MIGRATION_FAILED,
                            "the agent restarted during the resize of %s and %s cannot say "
                            "where it got to (%s): its folder stays set aside; revert or "
                            "confirm it once %s answers",
                            r->uuid, r->dest, err ? err->message : "no AMQP link", r->dest);
                return FALSE;
            }
            g_clear_error(&err);
        } else if (there) {
            json_object *vm = vn_json_member(there, "vm_state");
            gboolean resized = vm && g_strcmp0(json_object_get_string(vm), "resized") == 0;
            json_object_put(there);
            if (resized) {
                *finished = TRUE;
                return vn_instance_store_begin_task(a->store, r->uuid, any, VN_TASK_RESIZE_MIGRATED,
                                                    r->op->request_id, error);
            }
        }
    }
    /* undone: the destination's part (whatever it got to), the folder, the guest */
    r->prepared = TRUE;
    if (r->set_aside) {
        g_autofree char *dir = vn_agent_instance_dir(a, r->uuid);
        /* a folder beside the set-aside one is this host's copy (on shared storage, or on
         * this host); the destination only ever makes one on storage of its own */
        r->new_dir = g_file_test(dir, G_FILE_TEST_IS_DIR);
        r->shared = r->new_dir;
    }
    r->was_running = r->before->vm_state == VN_VM_ACTIVE;
    undo(r);
    return TRUE;
}

gboolean vn_op_resize(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState allowed[] = { VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_LAST };
    VnAgent *a = op->agent;
    g_autoptr(VnConfig) cfg = vn_agent_config(a);
    const char *uuid = op->req->instance_uuid;
    g_auto(Resize) r = { .op = op, .a = a, .uuid = uuid };
    GError *err = NULL;
    g_autoptr(VnInstanceRecord) now = NULL;

    r.before = vn_instance_store_get(a->store, uuid);
    if (!r.before || r.before->vm_state == VN_VM_DELETED) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND, "instance %s is not on this host",
                    uuid);
        return FALSE;
    }
    r.dest = g_strdup(op->req->dest_host ? op->req->dest_host : cfg->host);
    r.same_host = is_here(a, r.dest);
    r.migration_id = g_uuid_string_random();
    r.after = vn_instance_record_copy(r.before);
    if (op->req->flavor) {
        vn_flavor_clear(&r.after->flavor);
        vn_flavor_copy(&r.after->flavor, op->req->flavor);
    }
    if (op->replayed) {
        gboolean finished;
        if (!resize_recover(&r, &finished, error))
            return FALSE;
        if (!finished)
            return resize_error(error,
                                "the agent restarted during the resize of %s; it was "
                                "undone and the guest is as it was: send it again",
                                uuid);
        now = vn_instance_store_get(a->store, uuid);
        *result = vn_instance_record_to_reply(now);
        return TRUE;
    }
    if (!check_flavor(r.before, &r.after->flavor, error))
        return FALSE;
    if (!r.same_host && r.before->volumes->len)
        return resize_error(error,
                            "instance %s has volumes attached: detach them before it "
                            "moves to another host",
                            uuid);
    if (r.same_host && !op->req->flavor)
        return vn_api_invalid(error, "a cold migration to the host the guest is on moves "
                                     "nothing: name another dest_host or a flavor");
    if (!vn_instance_store_begin_task(a->store, uuid, allowed, VN_TASK_RESIZE_PREP, op->request_id,
                                      error))
        return FALSE;
    vn_agent_notify_instance(a, "instance.resize.start", r.before, NULL);
    g_message("instance %s: %s to %s (flavor %s)", uuid, op->req->flavor ? "resizing" : "migrating",
              r.dest, r.after->flavor.name ? r.after->flavor.name : "unnamed");
    if (!run_resize(&r, result, &err)) {
        undo(&r);
        now = vn_instance_store_get(a->store, uuid);
        {
            g_autoptr(GError) e = NULL;
            if (now && now->task_state != VN_TASK_NONE &&
                !vn_instance_store_end_task(a->store, uuid, now->task_state, r.before->vm_state,
                                            vn_guest_power(a, uuid), &e))
                vn_warn_error(&e, "ending the resize of instance %s", uuid);
        }
        g_clear_pointer(&now, vn_instance_record_free);
        now = vn_instance_store_get(a->store, uuid);
        vn_agent_notify_instance(a, "instance.resize.error", now, err->message);
        g_prefix_error(&err, "resize of %s to %s failed; the guest is as it was: ", uuid, r.dest);
        g_propagate_error(error, err);
        return FALSE;
    }
    g_message("instance %s runs on %s with flavor %s: confirm or revert the resize", uuid, r.dest,
              r.after->flavor.name ? r.after->flavor.name : "unnamed");
    return TRUE;
}

/* ------------------------------------------------------------------ confirm */

/* The source's copy goes: its domain (on another host than the guest's), its set-aside
 * folder, its ports, its claim, its record. */
static void source_drop(VnAgent *a, const char *uuid, gboolean same_host)
{
    g_autofree char *aside = aside_dir(a, uuid);
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;

    warn_if(vn_disk_remove_tree(aside, &err), &err, "removing the set-aside folder", uuid);
    if (same_host || !rec)
        return;
    warn_if(vn_domain_undefine(a->virt, uuid, &err), &err, "removing the old guest", uuid);
    vn_ports_unplug(a, rec->ports, rec->ports->len);
    vn_tracker_drop(a->tracker, uuid);
    warn_if(vn_instance_store_forget(a->store, uuid, &err), &err, "forgetting the record", uuid);
    vn_agent_capacity_changed(a);
}

/* The source's copy removed, on this host or the source's agent. */
static gboolean drop_source_copy(VnAgent *a, const char *uuid, const ResizeNote *note,
                                 GError **error)
{
    g_autoptr(json_object) out = NULL;

    if (is_here(a, note->source_host)) {
        source_drop(a, uuid, TRUE);
        return TRUE;
    }
    out = vn_peer_call(a, note->source_host, "confirm_resize_at_source", uuid, NULL, 600, error);
    return out != NULL;
}

gboolean vn_resize_drop_source(VnAgent *a, const char *uuid, GError **error)
{
    g_auto(ResizeNote) note = { 0 };
    g_autofree char *path = vn_guest_file(a, uuid, RESIZE_NOTE);

    if (!g_file_test(path, G_FILE_TEST_EXISTS))
        return TRUE;
    return read_note(a, uuid, &note, error) && drop_source_copy(a, uuid, &note, error);
}

gboolean vn_op_confirm_resize_source(VnOp *op, json_object **result, GError **error)
{
    (void)error;
    source_drop(op->agent, op->req->instance_uuid, FALSE);
    *result = json_object_new_object();
    return TRUE;
}

/* Ends the open resize of the guest running here (confirm or revert): its task, its note,
 * and the source host named there. */
static gboolean begin_settle(VnOp *op, VnTaskState task, ResizeNote *note, GError **error)
{
    static const VnVmState resized[] = { VN_VM_RESIZED, VN_VM_LAST };
    const char *uuid = op->req->instance_uuid;

    return read_note(op->agent, uuid, note, error) &&
           vn_instance_store_begin_task(op->agent->store, uuid, resized, task, op->request_id,
                                        error);
}

gboolean vn_op_confirm_resize(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    g_auto(ResizeNote) note = { 0 };
    g_autoptr(VnInstanceRecord) done = NULL;
    g_autofree char *path = vn_guest_file(a, uuid, RESIZE_NOTE);
    VnPowerState power;

    if (!begin_settle(op, VN_TASK_RESIZE_CONFIRMING, &note, error))
        return FALSE;
    if (!drop_source_copy(a, uuid, &note, error)) {
        g_autoptr(GError) e = NULL;
        if (!vn_instance_store_end_task(a->store, uuid, VN_TASK_RESIZE_CONFIRMING, VN_VM_RESIZED,
                                        vn_guest_power(a, uuid), &e))
            vn_warn_error(&e, "ending the confirm of instance %s", uuid);
        return FALSE;
    }
    g_unlink(path);
    power = vn_guest_power(a, uuid);
    if (!vn_instance_store_end_task(a->store, uuid, VN_TASK_RESIZE_CONFIRMING,
                                    power == VN_POWER_RUNNING ? VN_VM_ACTIVE : VN_VM_STOPPED, power,
                                    error))
        return FALSE;
    done = vn_instance_store_get(a->store, uuid);
    g_message("instance %s: resize %s confirmed; the copy on %s is gone", uuid, note.migration_id,
              note.source_host);
    vn_agent_notify_instance(a, "instance.resize_confirm.end", done, NULL);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}

/* ------------------------------------------------------------------ revert */

/* On the source: the set-aside folder back in place and the old guest as it was. */
static gboolean source_restore(VnOp *op, const VnInstanceRecord *old, gboolean remove_new,
                               GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = old->uuid;
    g_autofree char *labels = NULL;
    g_autoptr(VnInstanceRecord) now = NULL;

    restore_folder(a, uuid, remove_new);
    now = vn_instance_store_get(a->store, uuid);
    if (!now)
        return resize_error(error, "instance %s has no record here to revert to", uuid);
    if (old->vm_state == VN_VM_ACTIVE && vn_guest_power(a, uuid) != VN_POWER_RUNNING) {
        if (!vn_guest_define_and_start(a, now, op->cancel, &labels, error))
            return FALSE;
    } else {
        g_autoptr(VnDomainSpec) ds = vn_guest_domain_spec(a, now, now->guest_uid, error);
        g_autofree char *xml = ds ? vn_domain_xml_build(ds, error) : NULL;
        if (!xml || !vn_domain_redefine(a->virt, xml, error))
            return FALSE;
    }
    vn_tracker_claim(a->tracker, uuid, &now->flavor, NULL);
    vn_agent_capacity_changed(a);
    return TRUE;
}

gboolean vn_op_finish_revert_resize(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState any[] = { VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_LAST };
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(VnInstanceRecord) done = NULL;
    gboolean shared = vn_md_bool(op->req->migrate_data, "is_shared_instance_path");

    if (!rec)
        return resize_error(error, "instance %s has no copy on this host to revert to", uuid);
    /* its task moves the database's row back here (a settled row moves only with one) */
    if (rec->task_state != VN_TASK_RESIZE_MIGRATED && rec->task_state != VN_TASK_RESIZE_REVERTING &&
        !vn_instance_store_begin_task(a->store, uuid, any, VN_TASK_RESIZE_REVERTING, op->request_id,
                                      error))
        return FALSE;
    g_clear_pointer(&rec, vn_instance_record_free);
    rec = vn_instance_store_get(a->store, uuid);
    if (rec->task_state == VN_TASK_RESIZE_MIGRATED &&
        !vn_instance_store_next_task(a->store, uuid, VN_TASK_RESIZE_MIGRATED,
                                     VN_TASK_RESIZE_REVERTING, error))
        return FALSE;
    if (!source_restore(op, rec, shared, error))
        return FALSE;
    if (!vn_instance_store_end_task(a->store, uuid, VN_TASK_RESIZE_REVERTING, rec->vm_state,
                                    vn_guest_power(a, uuid), error))
        return FALSE;
    done = vn_instance_store_get(a->store, uuid);
    vn_agent_notify_instance(a, "instance.resize_revert.end", done, NULL);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}

gboolean vn_op_revert_resize(VnOp *op, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    g_auto(ResizeNote) note = { 0 };
    g_autoptr(json_object) md = json_object_new_object();
    g_autoptr(json_object) out = NULL;

    if (!begin_settle(op, VN_TASK_RESIZE_REVERTING, &note, error))
        return FALSE;
    if (is_here(a, note.source_host)) {
        g_autofree char *aside = aside_dir(a, uuid);
        g_autofree char *old_path = g_build_filename(aside, OLD_RECORD, NULL);
        g_autoptr(json_object) o = read_json(old_path);
        g_autoptr(VnInstanceRecord) old = o ? vn_instance_record_from_json(o, error) : NULL;
        g_autoptr(VnInstanceRecord) done = NULL;
        if (!old) {
            if (!o)
                resize_error(error, "the record before the resize of %s is missing (%s)", uuid,
                             old_path);
            return FALSE;
        }
        if (!vn_domain_destroy(a->virt, uuid, error) ||
            !vn_instance_store_set_flavor(a->store, uuid, &old->flavor, error) ||
            !source_restore(op, old, TRUE, error) ||
            !vn_instance_store_end_task(a->store, uuid, VN_TASK_RESIZE_REVERTING, old->vm_state,
                                        vn_guest_power(a, uuid), error))
            return FALSE;
        done = vn_instance_store_get(a->store, uuid);
        vn_agent_notify_instance(a, "instance.resize_revert.end", done, NULL);
        *result = vn_instance_record_to_reply(done);
        return TRUE;
    }
    /* the new guest stops first: never two of it running; the source brings the old one
     * back, then the new one goes from here */
    if (!vn_domain_destroy(a->virt, uuid, error))
        return FALSE;
    json_object_object_add(md, "migration_id", json_object_new_string(note.migration_id));
    json_object_object_add(md, "is_shared_instance_path", json_object_new_boolean(note.shared));
    out =
        vn_peer_call(a, note.source_host, "finish_revert_resize", uuid, md, PEER_TIMEOUT_S, error);
    if (!out) {
        g_autoptr(GError) e = NULL;
        if (!vn_instance_store_end_task(a->store, uuid, VN_TASK_RESIZE_REVERTING, VN_VM_RESIZED,
                                        vn_guest_power(a, uuid), &e))
            vn_warn_error(&e, "ending the revert of instance %s", uuid);
        return FALSE;
    }
    dest_undo(a, uuid, note.shared);
    g_message("instance %s: resize %s reverted; it runs on %s again", uuid, note.migration_id,
              note.source_host);
    *result = g_steal_pointer(&out);
    return TRUE;
}
