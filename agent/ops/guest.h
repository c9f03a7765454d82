/* agent/ops/guest.h - one guest's files and domain, shared by the operations: where its disks
 * and console live, the domain description made from its record, the check of its
 * security labels, and its complete removal. */
#pragma once

#include <glib.h>

#include "agent/agent.h"
#include "agent/virt/domain_xml.h"
#include "api/instance.h"

#define VN_GUEST_ROOT_DISK      "disk"
#define VN_GUEST_EPHEMERAL_DISK "disk.eph0"
#define VN_GUEST_SWAP_DISK      "disk.swap"
#define VN_GUEST_CONSOLE        "console.log"
#define VN_GUEST_BACKING        "disk.backing" /* the root disk's base, as the agent made it */
#define VN_GUEST_CONFIG_DRIVE   "disk.config"  /* ISO 9660 "config-2" */
#define VN_GUEST_OWNER          "host"         /* the host whose guest the folder holds */

/* <instance dir>/<name>.  Caller frees. */
char *vn_guest_file(VnAgent *a, const char *uuid, const char *name);

/* "instance-<uuid>". Caller frees. */
char *vn_guest_domain_name(const char *uuid);

/* Creates, or brings back to what it must be, the folder of instance @uuid for a guest whose
 * QEMU runs with group @gid (its per-guest DAC identity; 0: none): 0750 root:@gid, so only
 * that guest's QEMU may enter it, or 0711 without an identity (QEMU's shared user may
 * traverse, nobody may list); and its console log (0600).  Called before every define,
 * whatever the flow (build, migration, reboot), so an identity change follows. */
gboolean vn_guest_prepare_dir(VnAgent *a, const char *uuid, int gid, GError **error);

/* Records, beside the disks, the base the agent gave the root disk (0600, written by the
 * agent only): what the image cache's in-use scan reads, never a qcow2 header. */
gboolean vn_guest_record_backing(VnAgent *a, const char *uuid, const char *base, GError **error);

/* The base recorded in @instance_dir, or NULL.  Caller frees. */
char *vn_guest_read_backing(const char *instance_dir);

/* Records this host as the owner of the folder of @uuid: written when the folder is made
 * for a guest here and when a guest arrives here (migration, evacuation).  On shared
 * storage it tells a host that finds an instance gone elsewhere whether the folder is
 * still its own to remove. */
gboolean vn_guest_record_owner(VnAgent *a, const char *uuid, GError **error);

/* TRUE when the folder of @uuid names this host as its owner. */
gboolean vn_guest_owned_here(VnAgent *a, const char *uuid);

/* The domain description of @rec: its disks as they exist in its folder (the root disk's
 * backing file read from the disk itself), console, CPU, security labels (@dac_uid > 0:
 * static DAC identity; the host's SELinux/AppArmor model when it has one). */
VnDomainSpec *vn_guest_domain_spec(VnAgent *a, const VnInstanceRecord *rec, int dac_uid,
                                   GError **error);

/* Reads the running guest's security labels back and checks them: the expected DAC
 * identity, a label of the host's MAC model, none shared with another guest, QEMU not
 * running as root.  Returns the labels as "model:label;..." or NULL (VN_VIRT_ERROR_LABEL). */
char *vn_guest_verify_confinement(VnAgent *a, const VnInstanceRecord *rec, int dac_uid,
                                  GError **error);

/* Defines the domain of @rec again from its record (its folder prepared first), starts it,
 * waits until it runs and checks its labels; *@labels gets them. */
gboolean vn_guest_define_and_start(VnAgent *a, const VnInstanceRecord *rec, GCancellable *cancel,
                                   char **labels, GError **error);

/* The power state libvirt reports for @uuid; VN_POWER_NOSTATE when it has no domain (or
 * cannot be asked). */
VnPowerState vn_guest_power(VnAgent *a, const char *uuid);

/* Powers off and removes the domain, then the instance folder.  Idempotent. */
gboolean vn_guest_remove(VnAgent *a, const char *uuid, GError **error);
