/* agent/ops/migration.h - live migration between agents.
 *
 * The source agent (A) runs the whole flow for a live_migration cast, calling the
 * destination agent (B) over RPC, as Nova's compute services do:
 *
 *   A: queued -> B.check_can_live_migrate_destination (capacity, CPU when kvm, a probe
 *      file in B's instances_path; B asks A.check_can_live_migrate_source whether A sees
 *      it: shared storage or block migration) -> preparing -> B.pre_live_migration (B
 *      claims resources, records the instance, picks the guest's uid, and without shared
 *      storage fetches the image and makes the disks) -> running: libvirt peer-to-peer
 *      migration, watched by the policy (migration_policy.h) every 0.5 s, with progress
 *      in the migrations table -> B.post_live_migration_at_destination (B owns the
 *      instance), A forgets it and frees its disks and claim -> completed.  Should B not
 *      confirm (asked three times), the migration ends in error, not success: the guest
 *      runs on B, whose agent adopts it at its next start.
 *   Each host journals its entry of the migration (A: the whole flow, B: "arriving" until
 *   the take-over or the rollback), so a restart closes the migrations row and
 *   get_migration still answers.
 *   Any failure: the guest keeps running on A (un-paused if the policy paused it),
 *   B.rollback_live_migration_at_destination removes B's domain, disks, record and
 *   claim, and the migration row says failed or cancelled, and why.
 *
 * While it runs, A checks every few seconds that B's agent answers; a destination agent
 * that stops answering gets the migration aborted. */
#pragma once

#include <json-c/json.h>

#include "agent/agent.h"
#include "agent/dispatcher.h"
#include "agent/virt/job.h"

VnMigrations *vn_migrations_new(VnAgent *a);
/* Loads the journaled entries (once, at start, before requests run). */
void vn_migrations_load(VnMigrations *m);
void vn_migrations_free(VnMigrations *m);

/* libvirt events for migrations of this host (from the event thread). */
void vn_migrations_lifecycle(VnMigrations *m, const char *uuid, int event, int detail);
void vn_migrations_job_completed(VnMigrations *m, const char *uuid, const VnJobStats *stats);

/* Requests from operators (casts to the source). */
gboolean vn_migrations_request_abort(VnMigrations *m, const char *uuid, GError **error);
gboolean vn_migrations_request_force(VnMigrations *m, const char *uuid, GError **error);

/* The current (or last) migration of @uuid as JSON, or NULL when none is known. */
/* The boolean (FALSE unless a JSON true) and the string (or NULL) @key of migrate_data. */
gboolean vn_md_bool(json_object *md, const char *key);
const char *vn_md_str(json_object *md, const char *key);

/* Calls @method on the agent of @host with the instance, this host as its source and
 * @md as migrate_data (NULL: {}); its result, an object, or NULL with @error. */
json_object *vn_peer_call(VnAgent *a, const char *host, const char *method, const char *uuid,
                          json_object *md, int timeout_s, GError **error);

json_object *vn_migrations_describe(VnMigrations *m, const char *uuid);

/* The RPC methods (vn_op_live_migration and the others in ops.h) are implemented in
 * migration.c. */
