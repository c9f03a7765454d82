/* agent/state/tracker.h - the resource tracker: what the host has (from libvirt and statvfs),
 * what its instances and in-flight builds use, and whether one more fits.
 *
 * The agent is the final arbiter of what runs here: a claim is checked and recorded under
 * one lock, counting builds in flight, so concurrent builds cannot oversubscribe the host.
 * Capacity follows placement's rule: (total - reserved) * allocation ratio. */
#pragma once

#include <glib.h>

#include "agent/base/config.h"
#include "agent/state/instance_store.h"
#include "agent/virt/conn.h"
#include "api/instance.h"
#include "scheduler-client/report/report.h"

typedef struct _VnTracker VnTracker;

/* What the host has; refreshed from libvirt. */
typedef struct {
    char *hypervisor_type;
    gint64 hypervisor_version;
    char *hypervisor_hostname;
    char *cpu_info;
    int vcpus;
    gint64 memory_mb;
} VnHostInventory;

VnTracker *vn_tracker_new(const char *host, const char *instances_path, VnInstanceStore *store);
void vn_tracker_free(VnTracker *t);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnTracker, vn_tracker_free)

/* Ratios and reservations (reloadable). */
void vn_tracker_set_config(VnTracker *t, const VnConfig *cfg);

/* Reads the host's facts from libvirt (at start and periodically). */
gboolean vn_tracker_refresh(VnTracker *t, VnVirtConn *virt, GError **error);

/* Sets the inventory directly (tests, and the benchmark's simulated hosts). */
void vn_tracker_set_inventory(VnTracker *t, const VnHostInventory *inv);

/* Records the allocations of every live instance of the store (at start). */
void vn_tracker_load(VnTracker *t);

/* Claims @flavor for instance @uuid if it fits; VN_API_ERROR_INSUFFICIENT_RESOURCES with
 * what is short otherwise.  A second claim for the same uuid replaces the first. */
gboolean vn_tracker_claim(VnTracker *t, const char *uuid, const VnFlavor *flavor, GError **error);

/* Whether @flavor would fit now, without claiming anything (a migration's pre-check). */
gboolean vn_tracker_check(VnTracker *t, const char *uuid, const VnFlavor *flavor, GError **error);

/* Frees the claim of @uuid (no-op when none). */
void vn_tracker_drop(VnTracker *t, const char *uuid);

/* Bytes the image cache occupies (reported in the stats). */
void vn_tracker_set_cache_bytes(VnTracker *t, guint64 bytes);

/* Operations running now (io_workload of the stats). */
void vn_tracker_set_workload(VnTracker *t, int running_ops, guint64 failed_builds);

/* The volume storage failing its health probe (health keys, NULL-terminated, copied; NULL
 * or empty: healthy): "storage_state" and "storage_degraded" of the stats. */
void vn_tracker_set_storage_degraded(VnTracker *t, char **keys);

/* The capacity row for the central database.  Caller frees. */
VnCapacity *vn_tracker_capacity(VnTracker *t);

/* Pure: does @req fit in @limit with @used already taken?  (exposed for tests) */
gboolean vn_tracker_fits(double total, double reserved, double ratio, double used, double req);
