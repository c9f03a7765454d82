/* agent/ops/power.c - delete and the power operations: start, stop (graceful, then
 * forced), reboot (soft, falling back to hard; hard), pause/unpause, suspend/resume.
 *
 * Each claims the instance with its task state (compare-and-set), acts on the domain,
 * and ends the task with the new vm_state and the hypervisor's power state.  A failure
 * clears the task, keeps the vm_state, records the power state libvirt reports, and
 * fails the request with libvirt's words. */
#include <string.h>

#include "agent/base/log.h"
#include "agent/ops/guest.h"
#include "agent/ops/ops.h"
#include "agent/ops/ports.h"
#include "agent/ops/volumes.h"
#include "agent/virt/domain.h"
#include "agent/virt/domain_xml.h"
#include "agent/virt/virt.h"
#include "api/error.h"

typedef gboolean (*PowerAction)(VnOp *op, VnInstanceRecord *rec, GError **error);

typedef struct {
    const VnVmState *allowed;
    VnTaskState task;
    const char *event; /* notification prefix, e.g. "instance.power_off" */
    PowerAction act;
    VnVmState end_vm;
} PowerOp;

static gboolean run_power_op(VnOp *op, const PowerOp *p, json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    g_autoptr(VnInstanceRecord) rec = NULL;
    g_autoptr(VnInstanceRecord) done = NULL;
    g_autoptr(GError) err = NULL;
    g_autofree char *ev = NULL;

    if (!vn_instance_store_begin_task(a->store, uuid, p->allowed, p->task, op->request_id, error))
        return FALSE;
    rec = vn_instance_store_get(a->store, uuid);
    ev = g_strdup_printf("%s.start", p->event);
    vn_agent_notify_instance(a, ev, rec, NULL);
    if (!p->act(op, rec, &err)) {
        g_autofree char *ev_err = g_strdup_printf("%s.error", p->event);
        VnPowerState power = vn_guest_power(a, uuid);
        /* the action may have got part of the way: the record says what runs now (a
         * running guest is never recorded stopped) */
        VnVmState vm = rec->vm_state == VN_VM_STOPPED && power == VN_POWER_RUNNING ? VN_VM_ACTIVE
                                                                                   : rec->vm_state;
        {
            g_autoptr(GError) e = NULL;
            if (!vn_instance_store_end_task(a->store, uuid, p->task, vm, power, &e))
                vn_warn_error(&e, "ending the task of instance %s", uuid);
        }
        done = vn_instance_store_get(a->store, uuid);
        vn_agent_notify_instance(a, ev_err, done, err->message);
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    if (!vn_instance_store_end_task(a->store, uuid, p->task, p->end_vm, vn_guest_power(a, uuid),
                                    error))
        return FALSE;
    done = vn_instance_store_get(a->store, uuid);
    g_free(ev);
    ev = g_strdup_printf("%s.end", p->event);
    vn_agent_notify_instance(a, ev, done, NULL);
    vn_agent_capacity_changed(a);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}

/* ------------------------------------------------------------------ actions */

static gboolean wait_running(VnAgent *a, VnOp *op, GError **error)
{
    return vn_domain_wait_state(a->virt, op->req->instance_uuid, VN_POWER_RUNNING, 30, op->cancel,
                                error);
}

static gboolean act_start(VnOp *op, VnInstanceRecord *rec, GError **error)
{
    /* already running: a start replayed after the agent died between starting the guest
     * and recording it has nothing left to do */
    if (vn_guest_power(op->agent, rec->uuid) == VN_POWER_RUNNING)
        return TRUE;
    return vn_domain_start(op->agent->virt, rec->uuid, error) && wait_running(op->agent, op, error);
}

static gboolean act_stop(VnOp *op, VnInstanceRecord *rec, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(op->agent);
    int timeout = op->req->stop_timeout >= 0 ? op->req->stop_timeout : cfg->shutdown_timeout;
    gboolean graceful = FALSE;

    /* a paused guest cannot answer the power button */
    if (!op->req->clean_shutdown || rec->power_state == VN_POWER_PAUSED)
        timeout = 0;
    if (!vn_domain_stop(op->agent->virt, rec->uuid, timeout, cfg->shutdown_retry_interval, TRUE,
                        op->cancel, &graceful, error))
        return FALSE;
    g_info("instance %s stopped %s", rec->uuid, graceful ? "gracefully" : "by force");
    return TRUE;
}

/* Rebuilds the domain from the record (fixing any drift, as Nova's hard reboot does) and
 * starts it; the labels are checked again. */
static gboolean hard_reboot(VnOp *op, VnInstanceRecord *rec, GError **error)
{
    g_autofree char *labels = NULL;

    return vn_domain_destroy(op->agent->virt, rec->uuid, error) &&
           vn_guest_define_and_start(op->agent, rec, op->cancel, &labels, error);
}

static gboolean act_reboot(VnOp *op, VnInstanceRecord *rec, GError **error)
{
    g_autoptr(VnConfig) cfg = vn_agent_config(op->agent);
    gboolean graceful = FALSE;

    if (op->req->reboot_type == VN_REBOOT_HARD)
        return hard_reboot(op, rec, error);
    if (!vn_domain_stop(op->agent->virt, rec->uuid, cfg->wait_soft_reboot_seconds,
                        cfg->shutdown_retry_interval, FALSE, op->cancel, &graceful, error))
        return FALSE;
    if (!graceful) {
        g_message("instance %s ignored the soft reboot for %d s: rebooting it hard", rec->uuid,
                  cfg->wait_soft_reboot_seconds);
        return hard_reboot(op, rec, error);
    }
    return vn_domain_start(op->agent->virt, rec->uuid, error) && wait_running(op->agent, op, error);
}

static gboolean act_pause(VnOp *op, VnInstanceRecord *rec, GError **error)
{
    return vn_domain_pause(op->agent->virt, rec->uuid, error);
}

static gboolean act_unpause(VnOp *op, VnInstanceRecord *rec, GError **error)
{
    return vn_domain_unpause(op->agent->virt, rec->uuid, error);
}

static gboolean act_suspend(VnOp *op, VnInstanceRecord *rec, GError **error)
{
    return vn_domain_managed_save(op->agent->virt, rec->uuid, error);
}

static gboolean act_resume(VnOp *op, VnInstanceRecord *rec, GError **error)
{
    return act_start(op, rec, error);
}

/* ------------------------------------------------------------------ the methods */

#define END VN_VM_LAST

gboolean vn_op_start(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState ok[] = { VN_VM_STOPPED, END };
    PowerOp p = { ok, VN_TASK_POWERING_ON, "instance.power_on", act_start, VN_VM_ACTIVE };

    return run_power_op(op, &p, result, error);
}

gboolean vn_op_stop(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState ok[] = { VN_VM_ACTIVE, VN_VM_PAUSED, VN_VM_ERROR, END };
    PowerOp p = { ok, VN_TASK_POWERING_OFF, "instance.power_off", act_stop, VN_VM_STOPPED };

    return run_power_op(op, &p, result, error);
}

gboolean vn_op_reboot(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState soft[] = { VN_VM_ACTIVE, END };
    static const VnVmState hard[] = { VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_PAUSED, VN_VM_ERROR, END };
    gboolean is_hard = op->req->reboot_type == VN_REBOOT_HARD;
    PowerOp p = { is_hard ? hard : soft, is_hard ? VN_TASK_REBOOTING_HARD : VN_TASK_REBOOTING,
                  "instance.reboot", act_reboot, VN_VM_ACTIVE };

    return run_power_op(op, &p, result, error);
}

gboolean vn_op_pause(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState ok[] = { VN_VM_ACTIVE, END };
    PowerOp p = { ok, VN_TASK_PAUSING, "instance.pause", act_pause, VN_VM_PAUSED };

    return run_power_op(op, &p, result, error);
}

gboolean vn_op_unpause(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState ok[] = { VN_VM_PAUSED, END };
    PowerOp p = { ok, VN_TASK_UNPAUSING, "instance.unpause", act_unpause, VN_VM_ACTIVE };

    return run_power_op(op, &p, result, error);
}

gboolean vn_op_suspend(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState ok[] = { VN_VM_ACTIVE, END };
    PowerOp p = { ok, VN_TASK_SUSPENDING, "instance.suspend", act_suspend, VN_VM_SUSPENDED };

    return run_power_op(op, &p, result, error);
}

gboolean vn_op_resume(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState ok[] = { VN_VM_SUSPENDED, END };
    PowerOp p = { ok, VN_TASK_RESUMING, "instance.resume", act_resume, VN_VM_ACTIVE };

    return run_power_op(op, &p, result, error);
}

/* A domain of ours that no record knows (a crash between record and domain): remove it. */
static gboolean remove_orphan(VnAgent *a, const char *uuid, GError **error)
{
    g_autoptr(GError) err = NULL;
    g_autofree char *xml = vn_domain_get_xml(a->virt, uuid, FALSE, &err);
    g_autoptr(VnDomainInfo) info = NULL;

    if (!xml) {
        /* no domain: nothing of it is here.  Its folder is left alone even if one exists:
         * on shared storage it may belong to the host the instance migrated to. */
        if (g_error_matches(err, VN_VIRT_ERROR, VN_VIRT_ERROR_NOT_FOUND))
            return TRUE;
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    info = vn_domain_xml_parse(xml, strlen(xml), error);
    if (!info)
        return FALSE;
    if (!info->ours) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_NOT_FOUND,
                    "domain %s is not an instance of this agent: left alone", uuid);
        return FALSE;
    }
    g_message("removing leftover domain of instance %s", uuid);
    return vn_guest_remove(a, uuid, error);
}

gboolean vn_op_terminate(VnOp *op, json_object **result, GError **error)
{
    static const VnVmState any[] = { VN_VM_BUILDING,  VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_PAUSED,
                                     VN_VM_SUSPENDED, VN_VM_ERROR,  VN_VM_RESIZED, END };
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(VnInstanceRecord) done = NULL;
    g_autoptr(GError) err = NULL;

    if (!rec || rec->vm_state == VN_VM_DELETED) {
        /* deleting twice succeeds; only a leftover domain of ours is cleaned up */
        if (!remove_orphan(a, uuid, error))
            return FALSE;
        *result = rec ? vn_instance_record_to_reply(rec) : NULL;
        return TRUE;
    }
    if (!vn_instance_store_begin_task(a->store, uuid, any, VN_TASK_DELETING, op->request_id, error))
        return FALSE;
    vn_agent_notify_instance(a, "instance.delete.start", rec, NULL);
    /* deleting a resized guest confirms its resize: the source's copy goes first */
    if (rec->vm_state == VN_VM_RESIZED && !vn_resize_drop_source(a, uuid, &err)) {
        vn_warn_error(&err, "removing the source's copy of resized instance %s", uuid);
        g_clear_error(&err);
    }
    if (!vn_guest_remove(a, uuid, &err)) {
        {
            g_autoptr(GError) e = NULL;
            if (!vn_instance_store_set_error(a->store, uuid, "DeleteFailed", err->message, &e))
                vn_warn_error(&e, "recording the fault of instance %s", uuid);
        }
        done = vn_instance_store_get(a->store, uuid);
        vn_agent_notify_instance(a, "instance.delete.error", done, err->message);
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    /* the guest's taps and disks went with its domain: its filters, bridge uses and
     * volume connections go now (the volumes themselves are the volume service's) */
    vn_ports_unplug(a, rec->ports, rec->ports->len);
    vn_vols_disconnect_all(a, rec->volumes, rec->volumes->len);
    vn_tracker_drop(a->tracker, uuid);
    if (!vn_instance_store_mark_deleted(a->store, uuid, error))
        return FALSE;
    done = vn_instance_store_get(a->store, uuid);
    g_message("instance %s deleted", uuid);
    vn_agent_notify_instance(a, "instance.delete.end", done, NULL);
    vn_agent_capacity_changed(a);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}
