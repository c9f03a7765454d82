/* agent/virt/migrate.c - the migration call and its controls (see migrate.h). */
#include <string.h>

#include <libvirt/virterror.h>

#include "agent/virt/domain.h"
#include "agent/virt/migrate.h"
#include "agent/virt/virt.h"

static virDomainPtr domain(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    virDomainPtr d;

    if (!conn)
        return NULL;
    d = virDomainLookupByUUIDString(conn, uuid);
    if (!d)
        vn_virt_error(error, "looking up instance %s", uuid);
    return d;
}

/* The typed parameters of @p; FALSE (nothing allocated) when libvirt refuses one. */
static gboolean build_params(const VnMigrateParams *p, virTypedParameterPtr *params, int *n)
{
    int max = 0;
    gboolean ok = TRUE;

    *params = NULL;
    *n = 0;
    ok = virTypedParamsAddString(params, n, &max, VIR_MIGRATE_PARAM_DEST_XML, p->dest_xml) == 0;
    if (ok && p->inbound_addr && *p->inbound_addr) {
        g_autofree char *uri = g_strdup_printf("tcp://%s", p->inbound_addr);
        ok = virTypedParamsAddString(params, n, &max, VIR_MIGRATE_PARAM_URI, uri) == 0;
    }
    if (ok && p->bandwidth_mib > 0)
        ok = virTypedParamsAddULLong(params, n, &max, VIR_MIGRATE_PARAM_BANDWIDTH,
                                     p->bandwidth_mib) == 0;
    if (ok && p->parallel > 1)
        ok = virTypedParamsAddInt(params, n, &max, VIR_MIGRATE_PARAM_PARALLEL_CONNECTIONS,
                                  p->parallel) == 0;
    for (char **d = p->block_disks; ok && p->block && d && *d; d++)
        ok = virTypedParamsAddString(params, n, &max, VIR_MIGRATE_PARAM_MIGRATE_DISKS, *d) == 0;
    if (!ok) {
        virTypedParamsFree(*params, *n);
        *params = NULL;
        *n = 0;
    }
    return ok;
}

static unsigned long migrate_flags(const VnMigrateParams *p)
{
    unsigned long flags = VIR_MIGRATE_LIVE | VIR_MIGRATE_PEER2PEER | VIR_MIGRATE_PERSIST_DEST |
                          VIR_MIGRATE_UNDEFINE_SOURCE;

    if (p->block)
        flags |= VIR_MIGRATE_NON_SHARED_INC;
    if (p->auto_converge)
        flags |= VIR_MIGRATE_AUTO_CONVERGE;
    if (p->post_copy)
        flags |= VIR_MIGRATE_POSTCOPY;
    if (p->parallel > 1)
        flags |= VIR_MIGRATE_PARALLEL;
    if (p->tls)
        flags |= VIR_MIGRATE_TLS;
    return flags;
}

gboolean vn_migrate_run(VnVirtConn *c, const char *uuid, const VnMigrateParams *p, GError **error)
{
    g_autoptr(virDomain) dom = domain(c, uuid, error);
    virTypedParameterPtr params = NULL;
    int n = 0;
    int rc;

    if (!dom)
        return FALSE;
    if (!build_params(p, &params, &n))
        return vn_virt_error(error, "preparing the migration parameters of %s", uuid);
    rc = virDomainMigrateToURI3(dom, p->dest_uri, params, n, migrate_flags(p));
    /* libvirt refuses storage it cannot tell is shared (a plain folder both hosts see).
     * Only when the agents proved it shared (the probe file) is that overridden, and only
     * for that refusal: any other safety check stands. */
    if (rc < 0 && p->storage_proven_shared && virGetLastErrorCode() == VIR_ERR_MIGRATE_UNSAFE) {
        g_info("migrating %s: libvirt cannot tell that the storage is shared, which the "
               "probe proved (%s); migrating with VIR_MIGRATE_UNSAFE",
               uuid, virGetLastErrorMessage());
        virResetLastError();
        rc = virDomainMigrateToURI3(dom, p->dest_uri, params, n,
                                    migrate_flags(p) | VIR_MIGRATE_UNSAFE);
    }
    virTypedParamsFree(params, n);
    if (rc < 0)
        return vn_virt_error(error, "migrating instance %s to %s%s", uuid, p->dest_uri,
                             p->tls ? " over QEMU's native TLS" : "");
    return TRUE;
}

gboolean vn_migrate_job_stats(VnVirtConn *c, const char *uuid, VnJobStats *out, GError **error)
{
    return vn_domain_job_stats(c, uuid, FALSE, out, error);
}

gboolean vn_migrate_set_max_downtime(VnVirtConn *c, const char *uuid, int ms, GError **error)
{
    g_autoptr(virDomain) dom = domain(c, uuid, error);

    if (!dom)
        return FALSE;
    if (virDomainMigrateSetMaxDowntime(dom, (unsigned long long)ms, 0) < 0)
        return vn_virt_error(error, "setting the maximum downtime of %s", uuid);
    return TRUE;
}

gboolean vn_migrate_start_postcopy(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virDomain) dom = domain(c, uuid, error);

    if (!dom)
        return FALSE;
    if (virDomainMigrateStartPostCopy(dom, 0) < 0)
        return vn_virt_error(error, "switching the migration of %s to post-copy", uuid);
    return TRUE;
}

gboolean vn_migrate_abort(VnVirtConn *c, const char *uuid, GError **error)
{
    g_autoptr(virDomain) dom = domain(c, uuid, error);

    if (!dom)
        return FALSE;
    if (virDomainAbortJob(dom) < 0)
        return vn_virt_error(error, "aborting the migration of %s", uuid);
    return TRUE;
}

gboolean vn_migrate_in_postcopy(VnVirtConn *c, const char *uuid)
{
    g_autoptr(virDomain) dom = domain(c, uuid, NULL);
    int state = 0, reason = 0;

    if (!dom || virDomainGetState(dom, &state, &reason, 0) < 0) {
        virResetLastError();
        return FALSE;
    }
    return state == VIR_DOMAIN_PAUSED && reason == VIR_DOMAIN_PAUSED_POSTCOPY;
}

gboolean vn_migrate_compare_cpu(VnVirtConn *c, const char *virt_type, const char *cpu_xml,
                                gboolean *compatible, GError **error)
{
    g_autoptr(virConnect) conn = vn_virt_conn_get(c, error);
    int r;

    if (!conn)
        return FALSE;
    /* what this host's hypervisor can give a guest, not the host CPU itself: identical
     * hosts whose guests use a model the host CPU lacks a flag of are not refused */
    r = virConnectCompareHypervisorCPU(conn, NULL, NULL, NULL, virt_type, cpu_xml, 0);
    if (r == VIR_CPU_COMPARE_ERROR)
        return vn_virt_error(error, "comparing the guest CPU with what this host provides");
    *compatible = r == VIR_CPU_COMPARE_IDENTICAL || r == VIR_CPU_COMPARE_SUPERSET;
    return TRUE;
}
