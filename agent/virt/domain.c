/* agent/virt/domain.c - domain operations by uuid (see domain.h). */
#include <stdlib.h>
#include <string.h>

#include <libvirt/virterror.h>

#include "agent/virt/domain.h"
#include "agent/virt/domain_xml.h"
#include "agent/virt/job.h"
#include "agent/virt/host.h"
#include "agent/virt/virt.h"

static virDomainPtr lookup(virConnectPtr conn, const char *uuid, GError **error)
{
    virDomainPtr dom = virDomainLookupByUUIDString(conn, uuid);

    if (!dom)
        vn_virt_error(error, "looking up the domain of instance %s", uuid);
    return dom;
}

/* The domain of instance @uuid (it keeps its own reference to the connection). */
static virDomainPtr domain_get(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);

    return conn ? lookup(conn, uuid, error) : NULL;
}

/* Undefines with its managed-save image and metadata, with fewer flags on drivers that
 * do not know them all. */
/* Runs @fn on the domain of @uuid; an error says "@doing instance <uuid>". */
static gboolean domain_do(VnVirtConn *c, const char *uuid, int (*fn)(virDomainPtr),
                          const char *doing, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);

    if (!dom)
        return FALSE;
    if (fn(dom) < 0)
        return vn_virt_error(error, "%s instance %s", doing, uuid);
    return TRUE;
}

static gboolean undefine(virDomainPtr dom)
{
    static const unsigned int flags[] = {
        VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
            VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA,
        VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA,
        VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
    };

    for (gsize i = 0; i < G_N_ELEMENTS(flags); i++) {
        if (virDomainUndefineFlags(dom, flags[i]) == 0)
            return TRUE;
        virErrorPtr e = virGetLastError();
        if (!e || (e->code != VIR_ERR_INVALID_ARG && e->code != VIR_ERR_NO_SUPPORT))
            return FALSE;
        virResetLastError();
    }
    return FALSE;
}

/* Defines (or redefines) the persistent domain of @xml; @what names it in the error. */
static virDomainPtr define(VnVirtConn *c, const char *xml, const char *what, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    virDomainPtr dom;

    if (!conn)
        return NULL;
    dom = virDomainDefineXML(conn, xml);
    if (!dom)
        vn_virt_error(error, "%s the domain", what);
    return dom;
}

gboolean vn_domain_create(VnVirtConn *c, const char *xml, GError **error)
{
    g_autoptr(virDomain) dom = define(c, xml, "defining", error);

    if (!dom)
        return FALSE;
    if (virDomainCreate(dom) < 0) {
        g_autoptr(GError) err = NULL;
        vn_virt_error(&err, "starting the domain");
        /* leave nothing half-made: the caller also undefines, this is the first line */
        undefine(dom);
        virResetLastError();
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    return TRUE;
}

gboolean vn_domain_redefine(VnVirtConn *c, const char *xml, GError **error)
{
    g_autoptr(virDomain) dom = define(c, xml, "redefining", error);

    return dom != NULL;
}

gboolean vn_domain_exists(VnVirtConn *c, const char *uuid, gboolean *exists, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    g_autoptr(virDomain) dom = NULL;
    g_autoptr(GError) err = NULL;

    if (!conn)
        return FALSE;
    dom = lookup(conn, uuid, &err);
    if (!dom && !g_error_matches(err, VN_VIRT_ERROR, VN_VIRT_ERROR_NOT_FOUND)) {
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    *exists = dom != NULL;
    return TRUE;
}

static VnPowerState power_from_virt(int state)
{
    switch (state) {
    case VIR_DOMAIN_RUNNING:
    case VIR_DOMAIN_BLOCKED:
        return VN_POWER_RUNNING;
    case VIR_DOMAIN_PAUSED:
        return VN_POWER_PAUSED;
    case VIR_DOMAIN_SHUTDOWN:
    case VIR_DOMAIN_SHUTOFF:
        return VN_POWER_SHUTDOWN;
    case VIR_DOMAIN_CRASHED:
        return VN_POWER_CRASHED;
    case VIR_DOMAIN_PMSUSPENDED:
        return VN_POWER_SUSPENDED;
    default:
        return VN_POWER_NOSTATE;
    }
}

gboolean vn_domain_power_state(VnVirtConn *c, const char *uuid, VnPowerState *out, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);
    int state = 0, reason = 0;

    if (!dom)
        return FALSE;
    if (virDomainGetState(dom, &state, &reason, 0) < 0)
        return vn_virt_error(error, "reading the state of instance %s", uuid);
    *out = power_from_virt(state);
    return TRUE;
}

gboolean vn_domain_start(VnVirtConn *c, const char *uuid, GError **error)
{
    return domain_do(c, uuid, virDomainCreate, "starting", error);
}

gboolean vn_domain_shutdown(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);

    if (!dom)
        return FALSE;
    if (virDomainShutdownFlags(dom, VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN) == 0)
        return TRUE;
    /* a driver without the ACPI method: its own way of asking the guest */
    virResetLastError();
    if (virDomainShutdown(dom) < 0)
        return vn_virt_error(error, "pressing the power button of instance %s", uuid);
    return TRUE;
}

gboolean vn_domain_wait_state(VnVirtConn *c, const char *uuid, VnPowerState want, double timeout_s,
                              GCancellable *cancel, GError **error)
{
    gint64 end = g_get_monotonic_time() + (gint64)(timeout_s * G_TIME_SPAN_SECOND);

    for (;;) {
        VnPowerState st;
        if (!vn_domain_power_state(c, uuid, &st, error))
            return FALSE;
        if (st == want)
            return TRUE;
        if (g_cancellable_set_error_if_cancelled(cancel, error))
            return FALSE;
        if (g_get_monotonic_time() >= end) {
            g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_TIMEOUT,
                        "instance %s did not reach power state %d within %.0f s", uuid, want,
                        timeout_s);
            return FALSE;
        }
        g_usleep(200 * 1000);
    }
}

gboolean vn_domain_destroy(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);
    int state = 0, reason = 0;

    if (!dom)
        return FALSE;
    if (virDomainGetState(dom, &state, &reason, 0) == 0 && state == VIR_DOMAIN_SHUTOFF)
        return TRUE;
    if (virDomainDestroyFlags(dom, VIR_DOMAIN_DESTROY_GRACEFUL) < 0) {
        /* QEMU did not exit on SIGTERM within libvirt's grace: kill it */
        virResetLastError();
        if (virDomainDestroy(dom) < 0 &&
            !(virDomainGetState(dom, &state, &reason, 0) == 0 && state == VIR_DOMAIN_SHUTOFF))
            return vn_virt_error(error, "powering off instance %s", uuid);
    }
    return TRUE;
}

gboolean vn_domain_stop(VnVirtConn *c, const char *uuid, int timeout_s, int retry_s, gboolean force,
                        GCancellable *cancel, gboolean *graceful, GError **error)
{
    gint64 end = g_get_monotonic_time() + (gint64)timeout_s * G_TIME_SPAN_SECOND;
    VnPowerState st;

    *graceful = FALSE;
    if (!vn_domain_power_state(c, uuid, &st, error))
        return FALSE;
    if (st == VN_POWER_SHUTDOWN) {
        *graceful = TRUE;
        return TRUE;
    }
    while (timeout_s > 0 && st == VN_POWER_RUNNING) {
        g_autoptr(GError) err = NULL;
        gint64 left = end - g_get_monotonic_time();
        if (left <= 0)
            break;
        if (!vn_domain_shutdown(c, uuid, &err))
            g_debug("power button of %s: %s", uuid, err->message);
        double wait = MIN((double)left / G_TIME_SPAN_SECOND, (double)MAX(retry_s, 1));
        g_clear_error(&err);
        if (vn_domain_wait_state(c, uuid, VN_POWER_SHUTDOWN, wait, cancel, &err)) {
            *graceful = TRUE;
            return TRUE;
        }
        if (!g_error_matches(err, VN_VIRT_ERROR, VN_VIRT_ERROR_TIMEOUT)) {
            g_propagate_error(error, g_steal_pointer(&err));
            return FALSE;
        }
        if (!vn_domain_power_state(c, uuid, &st, error))
            return FALSE;
    }
    if (!force)
        return TRUE;
    if (timeout_s > 0)
        g_info("instance %s did not power off within %d s: forcing it", uuid, timeout_s);
    return vn_domain_destroy(c, uuid, error);
}

gboolean vn_domain_undefine(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    g_autoptr(virDomain) dom = NULL;
    g_autoptr(GError) err = NULL;

    if (!conn)
        return FALSE;
    dom = lookup(conn, uuid, &err);
    if (!dom) {
        if (g_error_matches(err, VN_VIRT_ERROR, VN_VIRT_ERROR_NOT_FOUND))
            return TRUE;
        g_propagate_error(error, g_steal_pointer(&err));
        return FALSE;
    }
    if (virDomainIsActive(dom) == 1 && !vn_domain_destroy(c, uuid, error))
        return FALSE;
    if (!undefine(dom)) {
        virErrorPtr e = virGetLastError();
        if (e && e->code == VIR_ERR_NO_DOMAIN) {
            virResetLastError();
            return TRUE;
        }
        return vn_virt_error(error, "removing the domain of instance %s", uuid);
    }
    return TRUE;
}

gboolean vn_domain_pause(VnVirtConn *c, const char *uuid, GError **error)
{
    return domain_do(c, uuid, virDomainSuspend, "pausing", error);
}

gboolean vn_domain_unpause(VnVirtConn *c, const char *uuid, GError **error)
{
    return domain_do(c, uuid, virDomainResume, "unpausing", error);
}

gboolean vn_domain_paused_by_io_error(VnVirtConn *c, const char *uuid)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, NULL);
    int state = 0, reason = 0;

    if (!dom || virDomainGetState(dom, &state, &reason, 0) < 0) {
        virResetLastError();
        return FALSE;
    }
    return state == VIR_DOMAIN_PAUSED && reason == VIR_DOMAIN_PAUSED_IOERROR;
}

static int managed_save(virDomainPtr dom)
{
    return virDomainManagedSave(dom, 0);
}

gboolean vn_domain_managed_save(VnVirtConn *c, const char *uuid, GError **error)
{
    return domain_do(c, uuid, managed_save, "saving the memory of", error);
}

/* The XML of @uuid with libvirt's @flags, as a GLib string. */
static char *get_xml(VnVirtConn *c, const char *uuid, unsigned flags, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);
    char *xml;
    char *out;

    if (!dom)
        return NULL;
    xml = virDomainGetXMLDesc(dom, flags);
    if (!xml) {
        vn_virt_error(error, "reading the XML of instance %s", uuid);
        return NULL;
    }
    out = g_strdup(xml);
    free(xml);
    return out;
}

char *vn_domain_get_xml(VnVirtConn *c, const char *uuid, gboolean migratable, GError **error)
{
    return get_xml(c, uuid,
                   migratable ? VIR_DOMAIN_XML_MIGRATABLE | VIR_DOMAIN_XML_SECURE
                              : VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE,
                   error);
}

char *vn_domain_get_xml_flags(VnVirtConn *c, const char *uuid, gboolean inactive, GError **error)
{
    return get_xml(c, uuid, inactive ? VIR_DOMAIN_XML_INACTIVE : 0, error);
}

char **vn_domain_list(VnVirtConn *c, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    virDomainPtr *doms = NULL;
    GPtrArray *out;
    int n;

    if (!conn)
        return NULL;
    n = virConnectListAllDomains(conn, &doms, 0);
    if (n < 0) {
        vn_virt_error(error, "listing domains");
        return NULL;
    }
    out = g_ptr_array_new();
    for (int i = 0; i < n; i++) {
        char uuid[VIR_UUID_STRING_BUFLEN];
        if (virDomainGetUUIDString(doms[i], uuid) == 0)
            g_ptr_array_add(out, g_strdup(uuid));
        virDomainFree(doms[i]);
    }
    free(doms);
    g_ptr_array_add(out, NULL);
    return (char **)g_ptr_array_free(out, FALSE);
}

GPtrArray *vn_domain_security_labels(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);
    g_auto(GStrv) models = NULL;
    virSecurityLabelPtr labels = NULL;
    GPtrArray *out;
    int n;

    if (!dom)
        return NULL;
    models = vn_host_security_models(c, error);
    if (!models)
        return NULL;
    n = virDomainGetSecurityLabelList(dom, &labels);
    if (n < 0) {
        virErrorPtr e = virGetLastError();
        if (!e || e->code != VIR_ERR_NO_SUPPORT) {
            vn_virt_error(error, "reading the security labels of instance %s", uuid);
            return NULL;
        }
        /* a driver with only the primary model's label */
        virResetLastError();
        labels = calloc(1, sizeof(*labels));
        if (!labels || virDomainGetSecurityLabel(dom, labels) < 0) {
            free(labels);
            vn_virt_error(error, "reading the security label of instance %s", uuid);
            return NULL;
        }
        n = 1;
    }
    out = g_ptr_array_new_with_free_func(g_free);
    for (int i = 0; i < n; i++) {
        const char *model = i < (int)g_strv_length(models) ? models[i] : "unknown";
        /* the "none" model confines nothing and has no label */
        if (strcmp(model, "none") == 0)
            continue;
        g_ptr_array_add(out, g_strdup_printf("%s:%s", model, labels[i].label));
    }
    free(labels);
    return out;
}

int vn_domain_seccomp_mode(const char *uuid)
{
    g_autofree char *pidfile = g_strdup_printf("/run/libvirt/qemu/instance-%s.pid", uuid);
    g_autofree char *pid = NULL;
    g_autofree char *status = NULL;
    g_autofree char *path = NULL;

    if (!g_file_get_contents(pidfile, &pid, NULL, NULL))
        return -1;
    g_strstrip(pid);
    for (const char *p = pid; *p; p++) {
        if (!g_ascii_isdigit(*p))
            return -1;
    }
    path = g_strdup_printf("/proc/%s/status", pid);
    if (!g_file_get_contents(path, &status, NULL, NULL))
        return -1;
    const char *line = strstr(status, "\nSeccomp:");
    return line ? atoi(line + 9) : -1;
}

gboolean vn_domain_attach(VnVirtConn *c, const char *uuid, const char *xml, gboolean live,
                          GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);
    unsigned flags = VIR_DOMAIN_AFFECT_CONFIG | (live ? VIR_DOMAIN_AFFECT_LIVE : 0);

    if (!dom)
        return FALSE;
    if (virDomainAttachDeviceFlags(dom, xml, flags) < 0)
        return vn_virt_error(error, "attaching a device to instance %s", uuid);
    return TRUE;
}

/* TRUE while the domain's (live) XML names @mac. */
static gboolean has_text(virDomainPtr dom, const char *needle, unsigned flags)
{
    char *xml = virDomainGetXMLDesc(dom, flags);
    gboolean found = xml && strstr(xml, needle);

    free(xml);
    return found;
}

/* Detaches @xml and, live, waits until the domain no longer shows @needle (the device is
 * gone when the guest released it). */
static gboolean detach_until_gone(VnVirtConn *c, const char *uuid, const char *xml,
                                  const char *needle, const char *what, gboolean live,
                                  gboolean config, int timeout_s, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);
    unsigned flags = (config ? VIR_DOMAIN_AFFECT_CONFIG : 0) | (live ? VIR_DOMAIN_AFFECT_LIVE : 0);
    gint64 end = g_get_monotonic_time() + (gint64)timeout_s * G_TIME_SPAN_SECOND;

    if (!dom)
        return FALSE;
    if (virDomainDetachDeviceFlags(dom, xml, flags) < 0)
        return vn_virt_error(error, "detaching %s from instance %s", what, uuid);
    while (live && has_text(dom, needle, 0)) {
        if (g_get_monotonic_time() > end) {
            g_set_error(error, VN_VIRT_ERROR, VN_VIRT_ERROR_TIMEOUT,
                        "instance %s did not release %s within %d s", uuid, what, timeout_s);
            return FALSE;
        }
        g_usleep(200 * 1000);
    }
    return TRUE;
}

gboolean vn_domain_detach(VnVirtConn *c, const char *uuid, const char *xml, const char *mac,
                          gboolean live, int timeout_s, GError **error)
{
    g_autofree char *needle = g_strdup_printf("address='%s'", mac);
    g_autofree char *what = g_strdup_printf("interface %s", mac);

    return detach_until_gone(c, uuid, xml, needle, what, live, TRUE, timeout_s, error);
}

gboolean vn_domain_detach_disk(VnVirtConn *c, const char *uuid, const char *xml, const char *target,
                               gboolean live, int timeout_s, GError **error)
{
    g_autofree char *needle = g_strdup_printf("<target dev='%s'", target);
    g_autofree char *what = g_strdup_printf("disk %s", target);

    return detach_until_gone(c, uuid, xml, needle, what, live, TRUE, timeout_s, error);
}

gboolean vn_domain_detach_disk_from(VnVirtConn *c, const char *uuid, const char *xml,
                                    const char *target, gboolean live, int timeout_s,
                                    GError **error)
{
    g_autofree char *needle = g_strdup_printf("<target dev='%s'", target);
    g_autofree char *what = g_strdup_printf("disk %s", target);

    return detach_until_gone(c, uuid, xml, needle, what, live, !live, timeout_s, error);
}

gboolean vn_domain_job_stats(VnVirtConn *c, const char *uuid, gboolean completed, VnJobStats *out,
                             GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);
    virTypedParameterPtr params = NULL;
    int n = 0, type = VIR_DOMAIN_JOB_NONE;

    memset(out, 0, sizeof(*out));
    if (!dom)
        return FALSE;
    if (virDomainGetJobStats(dom, &type, &params, &n,
                             completed ? VIR_DOMAIN_JOB_STATS_COMPLETED : 0) < 0)
        return vn_virt_error(error, "reading the job of instance %s", uuid);
    vn_job_stats_from_params(params, n, out);
    virTypedParamsFree(params, n);
    switch (type) {
    case VIR_DOMAIN_JOB_BOUNDED:
    case VIR_DOMAIN_JOB_UNBOUNDED:
        out->state = VN_JOB_RUNNING;
        break;
    case VIR_DOMAIN_JOB_COMPLETED:
        out->state = VN_JOB_COMPLETED;
        break;
    case VIR_DOMAIN_JOB_FAILED:
        out->state = VN_JOB_FAILED;
        break;
    case VIR_DOMAIN_JOB_CANCELLED:
        out->state = VN_JOB_CANCELLED;
        break;
    default:
        out->state = VN_JOB_NONE;
    }
    return TRUE;
}

gboolean vn_domain_backup_begin(VnVirtConn *c, const char *uuid, const char *target,
                                const char *path, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);
    g_autofree char *xml = vn_backup_xml(target, path);

    if (!dom)
        return FALSE;
    if (virDomainBackupBegin(dom, xml, NULL, 0) < 0)
        return vn_virt_error(error, "starting the copy of disk %s of instance %s", target, uuid);
    return TRUE;
}

gboolean vn_domain_abort_job(VnVirtConn *c, const char *uuid, GError **error)
{
    return domain_do(c, uuid, virDomainAbortJob, "aborting the job of", error);
}

gboolean vn_domain_fs_freeze(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virDomain) dom = domain_get(c, uuid, error);

    if (!dom)
        return FALSE;
    if (virDomainFSFreeze(dom, NULL, 0, 0) < 0)
        return vn_virt_error(error, "freezing the file systems of instance %s", uuid);
    return TRUE;
}

void vn_domain_fs_thaw(VnVirtConn *c, const char *uuid)
{
    g_autoptr(GError) err = NULL;
    g_autoptr(virDomain) dom = domain_get(c, uuid, &err);

    if (dom && virDomainFSThaw(dom, NULL, 0, 0) < 0)
        vn_virt_error(&err, "thawing the file systems of instance %s", uuid);
    if (err)
        g_warning("%s", err->message);
}
