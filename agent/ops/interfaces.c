/* agent/ops/interfaces.c - attach_interface, detach_interface and update_port_security:
 * a guest's ports changed on a running (or stopped) guest, under the networking task, with
 * every step undone when a later one fails. */
#include <string.h>

#include "agent/base/log.h"
#include "agent/ops/ops.h"
#include "agent/ops/ports.h"
#include "agent/virt/domain.h"
#include "agent/virt/nwfilter.h"
#include "api/error.h"

#define DETACH_TIMEOUT_S 30

static const VnVmState changeable[] = { VN_VM_ACTIVE, VN_VM_STOPPED, VN_VM_PAUSED, VN_VM_LAST };

/* Ends the networking task on @uuid, the vm and power states as they are. */
static void end_task(VnAgent *a, const char *uuid)
{
    g_autoptr(VnInstanceRecord) rec = vn_instance_store_get(a->store, uuid);
    g_autoptr(GError) err = NULL;

    if (rec && !vn_instance_store_end_task(a->store, uuid, VN_TASK_NETWORKING, rec->vm_state,
                                           rec->power_state, &err))
        vn_warn_error(&err, "ending the networking task of instance %s", uuid);
}

static gboolean running(const VnInstanceRecord *rec)
{
    return rec->vm_state == VN_VM_ACTIVE || rec->vm_state == VN_VM_PAUSED;
}

static const VnPortSpec *find_port(const VnInstanceRecord *rec, const char *port_id, guint *index)
{
    for (guint i = 0; i < rec->ports->len; i++) {
        const VnPortSpec *p = g_ptr_array_index(rec->ports, i);
        if (strcmp(p->port_id, port_id) == 0) {
            if (index)
                *index = i;
            return p;
        }
    }
    return NULL;
}

/* The record's ports with @add appended and/or the one at @drop (G_MAXUINT: none) left
 * out; borrowed pointers. */
static GPtrArray *ports_with(const VnInstanceRecord *rec, const VnPortSpec *add, guint drop)
{
    GPtrArray *out = g_ptr_array_new();

    for (guint i = 0; i < rec->ports->len; i++) {
        if (i != drop)
            g_ptr_array_add(out, g_ptr_array_index(rec->ports, i));
    }
    if (add)
        g_ptr_array_add(out, (gpointer)add);
    return out;
}

static gboolean attach(VnAgent *a, const VnInstanceRecord *rec, const VnPortSpec *port,
                       GError **error)
{
    g_autoptr(GPtrArray) one = g_ptr_array_new();
    g_autoptr(GPtrArray) ports = NULL;
    g_autofree char *xml = NULL;
    VnIfaceSpec iface;
    guint plugged = 0;

    for (guint i = 0; i < rec->ports->len; i++) {
        const VnPortSpec *p = g_ptr_array_index(rec->ports, i);
        if (strcmp(p->port_id, port->port_id) == 0 || strcmp(p->mac, port->mac) == 0) {
            g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                        "port: %s (%s) is already a port of instance %s", port->port_id, port->mac,
                        rec->uuid);
            return FALSE;
        }
    }
    g_ptr_array_add(one, (gpointer)port);
    if (!vn_ports_check(a, one, error) || !vn_ports_plug(a, one, &plugged, error)) {
        vn_ports_unplug(a, one, plugged);
        return FALSE;
    }
    vn_ports_iface(port, &iface);
    xml = vn_domain_xml_iface(&iface);
    vn_ports_iface_clear(&iface);
    if (!vn_domain_attach(a->virt, rec->uuid, xml, running(rec), error)) {
        vn_ports_unplug(a, one, plugged);
        return FALSE;
    }
    ports = ports_with(rec, port, G_MAXUINT);
    if (!vn_instance_store_set_ports(a->store, rec->uuid, ports, error)) {
        g_autoptr(GError) err = NULL;
        if (!vn_domain_detach(a->virt, rec->uuid, xml, port->mac, running(rec), DETACH_TIMEOUT_S,
                              &err))
            vn_warn_error(&err, "undoing the attach of port %s", port->port_id);
        vn_ports_unplug(a, one, plugged);
        return FALSE;
    }
    return TRUE;
}

static gboolean detach(VnAgent *a, const VnInstanceRecord *rec, const char *port_id, GError **error)
{
    guint index = 0;
    const VnPortSpec *port = find_port(rec, port_id, &index);
    g_autoptr(GPtrArray) one = g_ptr_array_new();
    g_autoptr(GPtrArray) ports = NULL;
    g_autofree char *xml = NULL;
    VnIfaceSpec iface;

    if (!port) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "port_id: %s is not a port of instance %s", port_id, rec->uuid);
        return FALSE;
    }
    vn_ports_iface(port, &iface);
    xml = vn_domain_xml_iface(&iface);
    vn_ports_iface_clear(&iface);
    if (!vn_domain_detach(a->virt, rec->uuid, xml, port->mac, running(rec), DETACH_TIMEOUT_S,
                          error))
        return FALSE;
    ports = ports_with(rec, NULL, index);
    if (!vn_instance_store_set_ports(a->store, rec->uuid, ports, error))
        return FALSE;
    /* the tap went with the device: the filter and the bridge's use can go */
    g_ptr_array_add(one, (gpointer)port);
    vn_ports_unplug(a, one, 1);
    return TRUE;
}

static gboolean update_rules(VnAgent *a, const VnInstanceRecord *rec, const char *port_id,
                             GPtrArray *rules, GError **error)
{
    guint index = 0;
    const VnPortSpec *port = find_port(rec, port_id, &index);
    g_autoptr(VnPortSpec) changed = NULL;
    g_autoptr(GPtrArray) ports = NULL;

    if (!port) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "port_id: %s is not a port of instance %s", port_id, rec->uuid);
        return FALSE;
    }
    if (!port->port_security) {
        g_set_error(error, VN_API_ERROR, VN_API_ERROR_INVALID,
                    "port_id: port %s has no port security: security groups do not apply", port_id);
        return FALSE;
    }
    changed = vn_port_spec_copy(port);
    g_ptr_array_unref(changed->rules);
    changed->rules = g_ptr_array_ref(rules);
    ports = ports_with(rec, NULL, G_MAXUINT);
    g_ptr_array_index(ports, index) = changed;
    /* the record first (a failure leaves the filter as it was), then the filter: libvirt
     * re-applies it to the running guest at once */
    if (!vn_instance_store_set_ports(a->store, rec->uuid, ports, error))
        return FALSE;
    if (!vn_nwfilter_define(a->virt, port_id, rules, error)) {
        g_autoptr(GError) err = NULL;
        g_ptr_array_index(ports, index) = (gpointer)port;
        if (!vn_instance_store_set_ports(a->store, rec->uuid, ports, &err))
            vn_warn_error(&err, "restoring the rules of port %s", port_id);
        return FALSE;
    }
    return TRUE;
}

typedef gboolean (*Change)(VnAgent *a, const VnInstanceRecord *rec, const VnRequest *req,
                           GError **error);

static gboolean do_attach(VnAgent *a, const VnInstanceRecord *rec, const VnRequest *req,
                          GError **error)
{
    return attach(a, rec, req->port, error);
}

static gboolean do_detach(VnAgent *a, const VnInstanceRecord *rec, const VnRequest *req,
                          GError **error)
{
    return detach(a, rec, req->port_id, error);
}

static gboolean do_update(VnAgent *a, const VnInstanceRecord *rec, const VnRequest *req,
                          GError **error)
{
    return update_rules(a, rec, req->port_id, req->rules, error);
}

/* Runs @change under the networking task of the request's instance; the reply is the
 * record, @event (may be NULL) the notification. */
static gboolean run(VnOp *op, Change change, const char *what, const char *event,
                    json_object **result, GError **error)
{
    VnAgent *a = op->agent;
    const char *uuid = op->req->instance_uuid;
    g_autoptr(VnInstanceRecord) rec = NULL;
    g_autoptr(VnInstanceRecord) done = NULL;
    gboolean ok;

    if (!vn_instance_store_begin_task(a->store, uuid, changeable, VN_TASK_NETWORKING,
                                      op->request_id, error))
        return FALSE;
    rec = vn_instance_store_get(a->store, uuid);
    ok = change(a, rec, op->req, error);
    end_task(a, uuid);
    if (!ok)
        return FALSE;
    g_message("instance %s: port %s %s", uuid,
              op->req->port ? op->req->port->port_id : op->req->port_id, what);
    done = vn_instance_store_get(a->store, uuid);
    if (event)
        vn_agent_notify_instance(a, event, done, NULL);
    *result = vn_instance_record_to_reply(done);
    return TRUE;
}

gboolean vn_op_attach_interface(VnOp *op, json_object **result, GError **error)
{
    return run(op, do_attach, "attached", "instance.interface_attach.end", result, error);
}

gboolean vn_op_detach_interface(VnOp *op, json_object **result, GError **error)
{
    return run(op, do_detach, "detached", "instance.interface_detach.end", result, error);
}

gboolean vn_op_update_port_security(VnOp *op, json_object **result, GError **error)
{
    return run(op, do_update, "has new security-group rules", NULL, result, error);
}
