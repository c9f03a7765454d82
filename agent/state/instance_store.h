/* agent/state/instance_store.h - the instances of this host and their state machine.
 *
 * Records live in memory and in the journal: every change is durable before it is
 * visible, but a new guest's build steps, kept in memory only.  Changes are
 * compare-and-set: an operation claims an instance by setting its task_state, and only when
 * no other task is running and the vm_state allows it (Nova's expected_task_state), so two
 * operations can never both proceed.  A change is decided and written to the journal's log
 * under the store's lock; the lock is not held while the log is flushed, so the changes of
 * different instances share flushes, and the next change of the same instance waits for
 * the flush of the one before.  Readers get copies. */
#pragma once

#include <glib.h>

#include "agent/state/journal.h"
#include "api/instance.h"

typedef struct _VnInstanceStore VnInstanceStore;

/* Called after every persisted change, outside the lock, with the new record. */
typedef void (*VnInstanceChangedFunc)(const VnInstanceRecord *rec, gpointer user_data);

VnInstanceStore *vn_instance_store_new(VnJournal *journal, const char *host, GError **error);
void vn_instance_store_free(VnInstanceStore *s);
G_DEFINE_AUTOPTR_CLEANUP_FUNC(VnInstanceStore, vn_instance_store_free)

void vn_instance_store_set_listener(VnInstanceStore *s, VnInstanceChangedFunc func,
                                    gpointer user_data);

/* A copy of the record, or NULL when unknown. */
VnInstanceRecord *vn_instance_store_get(VnInstanceStore *s, const char *uuid);

/* Whether @r is being built or under a task (which owns its state until it ends). */
gboolean vn_instance_record_in_task(const VnInstanceRecord *r);

/* vn_instance_record_in_task of the record of @uuid; FALSE when unknown.  Reads in place:
 * nothing is copied. */
gboolean vn_instance_store_in_task(VnInstanceStore *s, const char *uuid);

/* The uuid of another running instance one of whose security labels (';'-separated in
 * its record) is @label, or NULL; caller frees. */
char *vn_instance_store_label_owner(VnInstanceStore *s, const char *uuid, const char *label);

/* Copies of all records (deleted ones too when @with_deleted), sorted by uuid. */
GPtrArray *vn_instance_store_list(VnInstanceStore *s, gboolean with_deleted);

/* Calls @func on every record but the deleted ones, in no order, with the store's lock
 * held: @func must only read the record, be quick and not call the store.  For a pass over
 * all records that needs a few fields of each, without copying them. */
typedef void (*VnInstanceVisitFunc)(const VnInstanceRecord *rec, gpointer user_data);
void vn_instance_store_foreach(VnInstanceStore *s, VnInstanceVisitFunc func, gpointer user_data);

/* Records a new instance from a build spec: vm_state building, task_state scheduling.
 * A uuid already known (and not deleted) is VN_API_ERROR_EXISTS. */
gboolean vn_instance_store_create(VnInstanceStore *s, const VnInstanceRecord *spec,
                                  const char *request_id, GError **error);

/* Records an instance arriving by live migration from its source's record (validated by
 * the contract): task_state migrating, no local identity or label yet.  Like a build, it
 * never overwrites a live record of the same uuid (VN_API_ERROR_EXISTS). */
gboolean vn_instance_store_arrive(VnInstanceStore *s, const VnInstanceRecord *rec, GError **error);

/* The same for a guest arriving by @task (evacuation: rebuilding); with @over_error, a
 * record of this host in vm_state error (an earlier evacuation that failed) is replaced. */
gboolean vn_instance_store_take_over(VnInstanceStore *s, const VnInstanceRecord *rec,
                                     VnTaskState task, gboolean over_error, GError **error);

/* The flavor the guest runs with (a resize on this host, and its revert). */
gboolean vn_instance_store_set_flavor(VnInstanceStore *s, const char *uuid, const VnFlavor *flavor,
                                      GError **error);

/* The image the root disk is made from (rebuild).  Its credentials are not kept. */
gboolean vn_instance_store_set_image(VnInstanceStore *s, const char *uuid, const VnImageRef *image,
                                     GError **error);

/* Claims @uuid for @task: no task may be running and vm_state must be one of @allowed
 * (terminated by VN_VM_LAST).  VN_API_ERROR_NOT_FOUND / _INVALID_STATE otherwise. */
gboolean vn_instance_store_begin_task(VnInstanceStore *s, const char *uuid,
                                      const VnVmState *allowed, VnTaskState task,
                                      const char *request_id, GError **error);

/* Moves from task @from to task @to (a build's steps); fails if @from is not current. */
gboolean vn_instance_store_next_task(VnInstanceStore *s, const char *uuid, VnTaskState from,
                                     VnTaskState to, GError **error);

/* The same for the steps of a new guest's build (block_device_mapping, networking,
 * spawning), kept in memory only: seen at once (reads, listeners), not written to the
 * journal, whose record stays building/scheduling until the build's next durable change
 * writes the whole record.  A restart rolls an unfinished build back whatever step it had
 * reached, so the step has nothing to tell it.  What a step made (its volumes, ports,
 * label) is recorded durably by the calls that record it. */
gboolean vn_instance_store_build_step(VnInstanceStore *s, const char *uuid, VnTaskState from,
                                      VnTaskState to, GError **error);

/* Ends task @task: vm_state @vm, power @power (< 0 keeps it), task none; clears progress.
 * Fails when @task is not the running task (someone else changed the instance). */
gboolean vn_instance_store_end_task(VnInstanceStore *s, const char *uuid, VnTaskState task,
                                    VnVmState vm, int power, GError **error);

/* vm_state error with @fault (class and message), task none. */
gboolean vn_instance_store_set_error(VnInstanceStore *s, const char *uuid, const char *fault_class,
                                     const char *fault_message, GError **error);

/* The hypervisor's power state (and the vm_state it implies, when @vm >= 0). */
gboolean vn_instance_store_set_power(VnInstanceStore *s, const char *uuid, VnPowerState power,
                                     int vm, GError **error);

/* Sets task_state none without other changes (restart recovery). */
gboolean vn_instance_store_clear_task(VnInstanceStore *s, const char *uuid, GError **error);

/* A build (or rebuild) succeeded: its spawning @task ends, the instance is active and
 * running, launched now with @security_label, in one durable write. */
gboolean vn_instance_store_launched(VnInstanceStore *s, const char *uuid, VnTaskState task,
                                    const char *security_label, GError **error);

/* The security labels read back from the running guest. */
gboolean vn_instance_store_set_label(VnInstanceStore *s, const char *uuid, const char *label,
                                     GError **error);

/* Host after a migration. */
gboolean vn_instance_store_set_host(VnInstanceStore *s, const char *uuid, const char *host,
                                    GError **error);

/* vm_state deleted, terminated now; the record stays for reporting until purged. */
gboolean vn_instance_store_mark_deleted(VnInstanceStore *s, const char *uuid, GError **error);

/* Forgets a record entirely (journal too). */
gboolean vn_instance_store_forget(VnInstanceStore *s, const char *uuid, GError **error);

/* Progress of the running task, in memory only (not worth a disk write). */
void vn_instance_store_set_progress(VnInstanceStore *s, const char *uuid, int percent);

/* A DAC uid in [@min, @max] that no live instance uses, recorded in the instance's record;
 * the record's own uid when it has one.  0 when the range is exhausted. */
int vn_instance_store_allocate_uid(VnInstanceStore *s, const char *uuid, int min, int max,
                                   GError **error);

/* Exactly @uid for @uuid, when no other live instance of this host uses it (an instance
 * arriving on shared storage keeps its identity: its files are open under it on the
 * source until the switch-over); 0 otherwise. */
int vn_instance_store_take_uid(VnInstanceStore *s, const char *uuid, int uid, GError **error);

/* Forgets deleted records whose terminated_at is older than @before (unix seconds). */
guint vn_instance_store_purge_deleted(VnInstanceStore *s, gint64 before);

/* Compare-and-set for background syncs: like vn_instance_store_set_power, _set_error and
 * _begin_task, but only while the record's generation is still @seen (the one the sync
 * read) and no task holds it; VN_API_ERROR_INVALID_STATE otherwise, and nothing changes.
 * A start that slips in between the sync's read and its decision wins. */
gboolean vn_instance_store_sync_power(VnInstanceStore *s, const char *uuid, gint64 seen,
                                      VnPowerState power, int vm, GError **error);
gboolean vn_instance_store_sync_error(VnInstanceStore *s, const char *uuid, gint64 seen,
                                      const char *fault_class, const char *fault_message,
                                      GError **error);
gboolean vn_instance_store_sync_begin(VnInstanceStore *s, const char *uuid, gint64 seen,
                                      VnTaskState task, GError **error);

/* Replaces the ports of @uuid (copies of @ports, VnPortSpec*); compare-and-set: the
 * networking task (attach, detach, security update) must hold the record. */
/* Replaces the volumes of @uuid (under the block_device_mapping task); the CHAP password
 * is never kept. */
gboolean vn_instance_store_set_volumes(VnInstanceStore *s, const char *uuid, const GPtrArray *vols,
                                       GError **error);
gboolean vn_instance_store_set_ports(VnInstanceStore *s, const char *uuid, const GPtrArray *ports,
                                     GError **error);
