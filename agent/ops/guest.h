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

/* <instance dir>/<name>.  Caller frees. */
char *vn_guest_file(VnAgent *a, const char *uuid, const char *name);

/* "instance-<uuid>". Caller frees. */
char *vn_guest_domain_name(const char *uuid);

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

/* Powers off and removes the domain, then the instance folder.  Idempotent. */
gboolean vn_guest_remove(VnAgent *a, const char *uuid, GError **error);
