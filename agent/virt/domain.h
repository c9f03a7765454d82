/* agent/virt/domain.h - what the agent does to domains, by instance uuid.
 *
 * Domains are persistent (defined, then started), as Nova's are.  Power states use Nova's
 * integers (api/instance.h). */
#pragma once

#include <gio/gio.h>

#include "agent/virt/conn.h"
#include "agent/virt/job.h"
#include "api/instance.h"

/* Defines @xml (persistent) and starts it; on a start failure the definition is removed
 * again so nothing half-made stays behind. */
gboolean vn_domain_create(VnVirtConn *c, const char *xml, GError **error);

/* Redefines a domain from @xml (e.g. before a hard reboot) without starting it. */
gboolean vn_domain_redefine(VnVirtConn *c, const char *xml, GError **error);

gboolean vn_domain_exists(VnVirtConn *c, const char *uuid, gboolean *exists, GError **error);

/* Nova's power state of the domain; VN_VIRT_ERROR_NOT_FOUND when there is none. */
gboolean vn_domain_power_state(VnVirtConn *c, const char *uuid, VnPowerState *out, GError **error);

gboolean vn_domain_start(VnVirtConn *c, const char *uuid, GError **error);

/* Presses the ACPI power button once. */
gboolean vn_domain_shutdown(VnVirtConn *c, const char *uuid, GError **error);

/* Stops the guest gracefully: presses the power button every @retry_s seconds until it is
 * off or @timeout_s passed (0: no graceful part); then, when @force, powers it off.
 * *graceful tells whether the guest powered itself off. */
gboolean vn_domain_stop(VnVirtConn *c, const char *uuid, int timeout_s, int retry_s, gboolean force,
                        GCancellable *cancel, gboolean *graceful, GError **error);

/* Powers the guest off at once; no error when it is not running. */
gboolean vn_domain_destroy(VnVirtConn *c, const char *uuid, GError **error);

/* Removes the definition (and any managed-save image); no error when there is none. */
gboolean vn_domain_undefine(VnVirtConn *c, const char *uuid, GError **error);

gboolean vn_domain_pause(VnVirtConn *c, const char *uuid, GError **error);
gboolean vn_domain_unpause(VnVirtConn *c, const char *uuid, GError **error);

/* TRUE when QEMU paused the guest itself on an I/O error (error_policy 'stop'). */
gboolean vn_domain_paused_by_io_error(VnVirtConn *c, const char *uuid);

/* Saves the guest's memory and stops it (Nova's suspend); vn_domain_start resumes it. */
gboolean vn_domain_managed_save(VnVirtConn *c, const char *uuid, GError **error);

/* The statistics of the job of @uuid running now, or with @completed, of the last one that
 * ended (state COMPLETED, FAILED or CANCELLED); state NONE when there is none. */
gboolean vn_domain_job_stats(VnVirtConn *c, const char *uuid, gboolean completed, VnJobStats *out,
                             GError **error);

/* Starts a point-in-time copy of disk @target (e.g. "vda") of the running guest @uuid, and
 * of no other disk, into the new qcow2 file @path (libvirt's push-mode backup).  The guest
 * runs on; the copy is its disk as it was at this call.  The job is followed with
 * vn_domain_job_stats. */
gboolean vn_domain_backup_begin(VnVirtConn *c, const char *uuid, const char *target,
                                const char *path, GError **error);

/* Aborts the job (a copy, a migration) running on @uuid. */
gboolean vn_domain_abort_job(VnVirtConn *c, const char *uuid, GError **error);

/* Freezes the guest's file systems through its guest agent (an error when it has none
 * that answers); vn_domain_fs_thaw thaws them again. */
gboolean vn_domain_fs_freeze(VnVirtConn *c, const char *uuid, GError **error);
void vn_domain_fs_thaw(VnVirtConn *c, const char *uuid);

/* Waits up to @timeout_s for the domain to be in power state @state. */
gboolean vn_domain_wait_state(VnVirtConn *c, const char *uuid, VnPowerState state, double timeout_s,
                              GCancellable *cancel, GError **error);

/* The domain's XML (@migratable: as sent to a destination).  Caller frees. */
char *vn_domain_get_xml(VnVirtConn *c, const char *uuid, gboolean migratable, GError **error);

/* The running definition of @uuid (or its persistent one with @inactive).  Caller frees. */
char *vn_domain_get_xml_flags(VnVirtConn *c, const char *uuid, gboolean inactive, GError **error);

/* uuids of every domain libvirt knows (defined or running).  NULL-terminated. */
char **vn_domain_list(VnVirtConn *c, GError **error);

/* The security labels of the running guest as "model:label" strings, in the order of
 * the host's security models. */
GPtrArray *vn_domain_security_labels(VnVirtConn *c, const char *uuid, GError **error);

/* The seccomp mode of the QEMU process of instance @uuid run by the local system libvirt
 * (its pid file in /run/libvirt/qemu): 2 when QEMU runs under its sandbox's filter
 * (libvirt's seccomp_sandbox, on by default), 0 without, -1 when it cannot be told. */
int vn_domain_seccomp_mode(const char *uuid);

/* Attaches the device @xml to instance @uuid: to its definition, and to the running guest
 * when @live. */
gboolean vn_domain_attach(VnVirtConn *c, const char *uuid, const char *xml, gboolean live,
                          GError **error);

/* Detaches the device @xml (an interface with MAC @mac) from the definition and, when
 * @live, from the running guest, waiting up to @timeout_s for the guest to release it
 * (VN_VIRT_ERROR_TIMEOUT). */
gboolean vn_domain_detach(VnVirtConn *c, const char *uuid, const char *xml, const char *mac,
                          gboolean live, int timeout_s, GError **error);

/* The same for the disk @xml whose target is @target. */
gboolean vn_domain_detach_disk(VnVirtConn *c, const char *uuid, const char *xml, const char *target,
                               gboolean live, int timeout_s, GError **error);

/* The same for one definition only: the running guest's (@live) or the persistent one. */
gboolean vn_domain_detach_disk_from(VnVirtConn *c, const char *uuid, const char *xml,
                                    const char *target, gboolean live, int timeout_s,
                                    GError **error);
