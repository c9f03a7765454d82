/* agent/reconcile.h - keeping the three views in agreement: libvirt (the truth about what
 * runs), the instance records (the agent's intent), and the journal (what was in flight).
 *
 * At start-up: domains of ours that no record knows are removed; interrupted builds are
 * rolled back (or left to their journal replay, which rolls them back and reports them);
 * other interrupted tasks are cleared for their replay; every record takes the power
 * state libvirt reports.  While running: lifecycle events and a periodic pass apply
 * Nova's power-state rules to instances no operation is working on. */
#pragma once

#include "agent/agent.h"

/* The start-up pass; FALSE when libvirt cannot be read (the caller retries later). */
gboolean vn_reconcile_startup(VnAgent *a, GPtrArray *unfinished, GError **error);

/* Applies the hypervisor's power state to the record of @uuid (skipped while an
 * operation owns the instance). */
void vn_reconcile_sync_one(VnAgent *a, const char *uuid);

/* Guests of this host that the central database says have settled on another host (an
 * evacuation while this host was down): their copies here are removed, never started; a
 * folder on shared storage that the other host owns is left to it.  Blocks on the
 * database: run it off the main loop. */
void vn_reconcile_moved(VnAgent *a);

/* Pure: the vm_state Nova's rules give an instance in @vm whose guest is in @power
 * (-1: leave the vm_state), and whether the guest must be forced off. */
int vn_reconcile_rule(VnVmState vm, VnPowerState power, gboolean *force_off);

/* The base images in use by any instance folder under @instances_path, as the agents
 * recorded them (paths, in a set). */
GHashTable *vn_reconcile_bases_in_use(const char *instances_path);
