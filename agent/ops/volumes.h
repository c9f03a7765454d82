/* agent/ops/volumes.h - a guest's volumes, shared by the flows (build, delete, attach and
 * detach, reboot, migration, start-up): device names chosen, volumes connected through
 * storage/'s connectors (with the CHAP secret put in libvirt's store for QEMU's
 * initiator), described for the domain, and disconnected. */
#pragma once

#include "agent/agent.h"
#include "agent/virt/domain_xml.h"
#include "api/instance.h"

/* Gives @v a device name when it has none (vda/sda for a boot volume, else the first free
 * after the local disks vda-vdd), or checks the one it asked for is free on @rec. */
gboolean vn_vols_assign(const VnInstanceRecord *rec, const GPtrArray *others, VnVolumeSpec *v,
                        GError **error);

/* Connects @v (idempotent) and describes its disk for the domain in *@out. */
gboolean vn_vols_connect(VnAgent *a, const VnVolumeSpec *v, VnVolDiskSpec **out, GError **error);

/* Connects @vols in order; *@connected counts those done, for vn_vols_disconnect_all. */
gboolean vn_vols_connect_all(VnAgent *a, const GPtrArray *vols, guint *connected, GError **error);

/* Disconnects @v from this host (what other volumes use stays) and removes its secret. */
gboolean vn_vols_disconnect(VnAgent *a, const VnVolumeSpec *v, GError **error);

/* Disconnects the first @count of @vols, last first; failures are logged (the sweep
 * retries what is left). */
void vn_vols_disconnect_all(VnAgent *a, const GPtrArray *vols, guint count);

/* At start-up (@startup) and periodically: disconnects what no live instance of this host
 * uses any more (a crash mid-attach, a failed migration); at start-up also removes their
 * secrets.  The periodic pass leaves uses younger than ten minutes (an attach under way). */
void vn_vols_reconcile(VnAgent *a, gboolean startup);

/* Storage failure containment.  Each pass probes, with a time limit, every export and
 * target that a guest of this host has a volume on.  When one fails, only the running
 * guests with a volume on it are paused (QEMU stops them itself on an I/O error too:
 * error_policy 'stop'), and the host's capacity row says "storage_state": "degraded" with
 * the failing storage; once it answers again those guests are resumed and the row says
 * healthy.  Nothing else is touched: no other guest, no fencing, no reboot. */
VnVolHealth *vn_vol_health_new(void);
void vn_vol_health_free(VnVolHealth *h);

/* One pass (run in a thread of its own: a probe may take its whole time limit). */
void vn_vol_health_pass(VnAgent *a);

/* The health key of @v's storage: "nfs:<export>" or "iscsi:<iqn>@<portal>".  Caller
 * frees. */
char *vn_vols_health_key(const VnVolumeSpec *v);
