/* agent/virt/migrate.h - libvirt's side of a live migration: the peer-to-peer migration
 * call and the controls a monitor applies while it runs. */
#pragma once

#include <glib.h>

#include "agent/virt/conn.h"
#include "agent/virt/job.h"

typedef struct {
    const char *dest_uri;           /* libvirt URI of the destination host */
    const char *dest_xml;           /* the domain as the destination must define it */
    const char *inbound_addr;       /* NULL: libvirt's choice of the migration address */
    guint64 bandwidth_mib;          /* 0: the hypervisor's default */
    int parallel;                   /* > 1: parallel connections */
    gboolean block;                 /* copy local disks (incrementally over pre-made overlays) */
    char **block_disks;             /* targets to copy ("vda", ...), NULL-terminated */
    gboolean storage_proven_shared; /* the agents' probe saw the same folder on both hosts:
                                     * VIR_MIGRATE_UNSAFE only if libvirt refuses for that */
    gboolean auto_converge;
    gboolean post_copy; /* allow a switch to post-copy */
    gboolean tls;       /* QEMU's native TLS on the migration (and NBD) stream */
} VnMigrateParams;

/* Migrates instance @uuid to the destination, blocking until libvirt is done.  Live,
 * peer-to-peer, persistent on the destination, undefined on the source. */
gboolean vn_migrate_run(VnVirtConn *c, const char *uuid, const VnMigrateParams *p, GError **error);

/* Live statistics of the running job; state NONE when no job runs. */
gboolean vn_migrate_job_stats(VnVirtConn *c, const char *uuid, VnJobStats *out, GError **error);

gboolean vn_migrate_set_max_downtime(VnVirtConn *c, const char *uuid, int ms, GError **error);
gboolean vn_migrate_start_postcopy(VnVirtConn *c, const char *uuid, GError **error);
gboolean vn_migrate_abort(VnVirtConn *c, const char *uuid, GError **error);

/* TRUE when the domain is paused because its migration is in post-copy. */
gboolean vn_migrate_in_postcopy(VnVirtConn *c, const char *uuid);

/* Whether this host's hypervisor (@virt_type) can provide the guest CPU @cpu_xml (the
 * guest's <cpu> element, virConnectCompareHypervisorCPU); kvm only. */
gboolean vn_migrate_compare_cpu(VnVirtConn *c, const char *virt_type, const char *cpu_xml,
                                gboolean *compatible, GError **error);
